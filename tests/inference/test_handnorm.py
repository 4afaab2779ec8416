"""A written-out norm's offset pairs with its own norm's bias when its scale comes first in the formula
(reference/inference/record.py follows a product through a division), on tests/targets/handnorm_targets.py."""

from __future__ import annotations

import pytest
import torch

import tests.targets.handnorm_targets as H
from reference import api
from reference.inference.record import record_uses


def test_an_offset_added_after_a_scaled_division_is_the_scales_partner() -> None:
    model = H.Stretch(8, 2, 16).double()
    uses = record_uses(model, lambda m: m(torch.randn(2, 3, 8, dtype=torch.float64))).uses
    assert uses["first.offset"].partner == "first.gain" and uses["second.offset"].partner == "second.gain"


@pytest.mark.slow
def test_the_written_out_norms_pair_and_pass() -> None:
    report = api.check("tests.targets.handnorm_targets:Stretch", level="encoder_layer", profile="ci", device="cpu",
                       pytest_args=("-k", "float64"))
    assert report.passed, report
    assert "in_proj_bias has no counterpart: checked with it fixed at 0" in str(report), report


@pytest.mark.slow
def test_the_subtracted_offset_fails() -> None:
    report = api.check("tests.targets.handnorm_targets:StretchBug", level="encoder_layer", profile="kill",
                       device="cpu", pytest_args=("-k", "float64"))
    assert not report.passed and report.failures, report
