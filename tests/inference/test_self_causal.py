"""Layers that take no mask and apply a causal one of their own are checked against the built-in with that
mask (reference/inference/options.py CAUSAL_FIELDS), on tests/targets/self_causal_targets.py: a GPT block
checked as an encoder layer was "matches no configuration" (a false failure) before."""

from __future__ import annotations

import pytest

from reference import api
from reference.diagnose.pipeline import diagnose
from reference.diagnose.runs import one_thread
from reference.targets.contract import load_target

T = "tests.targets.self_causal_targets"


@pytest.mark.slow
@pytest.mark.parametrize(("spec", "level"), [("Lookback", "encoder_layer"), ("Autoregressive", "decoder_layer"),
                                             ("Tower", "encoder")])
def test_a_layer_causal_by_itself_passes(spec: str, level: str) -> None:
    report = api.check(f"{T}:{spec}", level=level, profile="ci", device="cpu", pytest_args=("-k", "float64 or float32"))
    assert report.passed, report
    assert "with a causal mask" in str(report) and "assumed always causal" in str(report), report


@pytest.mark.slow
def test_its_own_mask_off_by_one_fails_and_is_named() -> None:
    report = api.check(f"{T}:LookbackPeek", level="encoder_layer", profile="ci", device="cpu",
                       pytest_args=("-k", "float64"))
    assert not report.report.get("unresolved") and report.failures, report
    with one_thread():
        d = diagnose(load_target(f"{T}:LookbackPeek"), out_dir=None, family_names=("default",), reproduce=False,
                     level="encoder_layer")
    assert [c.key for c in d.causes] == ["causal_off_by_one"], [(c.key, c.does) for c in d.causes]
    assert d.causes[0].place == "self_attn" and not d.unexplained


def test_causality_is_measured_before_a_causal_mask_is_tried() -> None:
    """A layer that takes no mask is tried with a causal one only when moving its last position leaves its first
    output as it was: a non-causal buggy layer is not reported closest to a causal configuration."""
    from reference.inference.prepare import inferred

    lookback = inferred(load_target(f"{T}:LookbackPeek"), "encoder_layer")  # off by one: still causal enough
    assert "with a causal mask" not in lookback.discover().sentence  # it matches none: checked where closest
    assert lookback._causal is True and "src_is_causal=True" in lookback.discover().sentence
    reordered = inferred(load_target("tests.targets.reorder_targets:RawReordered"), "encoder_layer")
    sentence = reordered.discover().sentence
    assert reordered._causal is False and "causal" not in sentence, sentence
