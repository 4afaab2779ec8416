"""Patterns from public GPT code, written here (tests/targets/gpt_style_targets.py), checked the way a user would:
each is correct and must pass with no adapter (and a planted bug must fail); a config field no level sets is
a clear error naming it, not a traceback."""

from __future__ import annotations

import pytest

from reference import api
from reference.check import main as check_main

T = "tests.targets.gpt_style_targets"


@pytest.mark.slow
@pytest.mark.parametrize("spec, level, passes", [
    (f"{T}:CausalHeadAttention", "attention", True),  # one input, no mask argument, always causal
    (f"{T}:WidthScaledHeadAttention", "attention", False),
    (f"{T}:LambdaBlock", "decoder_only", True),  # a lambda MLP over its own modules; one block is one layer
    (f"{T}:Norm", "layer_norm", True),  # its width is called ndim
])
def test_a_gpt_style_piece_passes_when_correct_and_fails_when_not(spec, level, passes):
    report = api.check(spec, level=level, profile="ci", device="cpu")
    assert report.passed is passes, str(report)


def test_names_decide_between_same_shaped_projections_used_in_another_order(capsys):
    assert check_main([f"{T}:CausalHeadAttention", "--as", "attention", "--show-map"]) == 0
    out = capsys.readouterr().out
    assert "as self-attention (one input) with a causal mask" in out
    lines = {line.split("<-")[0].strip(): line for line in out.splitlines() if "<-" in line}
    assert "name says k" in lines["tokeys.weight"] and "name says q" in lines["toqueries.weight"], lines


def test_a_config_field_no_level_sets_is_a_clear_error(capsys):
    code = check_main([f"{T}:NeedsVocab", "--as", "decoder_only", "--show-map"])
    err = capsys.readouterr()
    assert code != 0
    text = err.out + err.err
    assert "vocab_size" in text and "Traceback" not in text
