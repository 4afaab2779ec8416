"""A forward that takes one tensor several times (``block(h, h, h, mask)``) is called with the level's input in
each place (reference/inference/binding.py); tests/targets/repeat_targets.py."""

from __future__ import annotations

import pytest

from reference import api
from reference.inference.binding import Param, pairings


def _params(*names: str, mask: str | None = None) -> tuple[Param, ...]:
    data = tuple(Param(name=n, positional_only=False, keyword_only=False, required=True, data=True) for n in names)
    extra = (Param(name=mask, positional_only=False, keyword_only=False, required=True, data=False),) if mask else ()
    return data + extra


def test_unpaired_required_inputs_take_the_nearest_bound_input_before_them() -> None:
    assert (("src", "v"), ("src", "k"), ("src", "q")) in pairings(["src"], _params("v", "k", "q", mask="m"), False)
    found = pairings(["tgt", "memory"], _params("y", "enc_v", "enc_k"), False)
    assert (("tgt", "y"), ("memory", "enc_v"), ("memory", "enc_k")) in found
    assert found.index((("tgt", "y"), ("memory", "enc_v"), ("memory", "enc_k"))) > 0  # tried after the others


@pytest.mark.slow
@pytest.mark.parametrize(("spec", "level"), [("TripleBlock", "encoder_layer"), ("CrossBlock", "decoder_layer")])
def test_the_correct_block_passes(spec: str, level: str) -> None:
    report = api.check(f"tests.targets.repeat_targets:{spec}", level=level, profile="ci", device="cpu",
                       pytest_args=("-k", "float64 or float32"))
    assert report.passed, report


@pytest.mark.slow
def test_the_bug_fails() -> None:
    report = api.check("tests.targets.repeat_targets:TripleBlockBug", level="encoder_layer", profile="ci",
                       device="cpu", pytest_args=("-k", "float64"))
    assert not report.passed and report.failures and not report.report.get("unresolved"), report
