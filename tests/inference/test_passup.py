"""Parts handed up through ``super().__init__`` are parts (reference/inference/uses.py), on
tests/targets/passup_targets.py."""

from __future__ import annotations

import pytest

import tests.targets.passup_targets as P
from reference import api
from reference.inference.uses import module_parameters


def test_parts_passed_up_are_read_from_the_parent() -> None:
    assert list(module_parameters(P.FineSublayers)) == list(module_parameters(P.Sublayers)) == ["attend", "mix"]


@pytest.mark.slow
def test_the_subclass_is_built_from_its_parts_and_passes() -> None:
    report = api.check("tests.targets.passup_targets:FineSublayers", level="encoder_layer", profile="ci",
                       device="cpu", pytest_args=("-k", "float64 or float32"))
    assert report.passed, report
    assert "layer_norm_eps=1e-06" in str(report), report


@pytest.mark.slow
def test_the_bug_twin_fails() -> None:
    report = api.check("tests.targets.passup_targets:FineSublayersBug", level="encoder_layer", profile="ci",
                       device="cpu", pytest_args=("-k", "float64"))
    assert not report.report.get("unresolved") and report.failures, report
