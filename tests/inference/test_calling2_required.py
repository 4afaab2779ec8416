"""A required mask the code reads unconditionally gets a neutral mask where the case has none, found by running
and measured as a mask; a pairing that binds an input to a parameter the target ignores is not kept
(tests/targets/calling2_targets.py)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import reference.inference as infer
import tests.targets.calling2_targets as T
from reference.builtin.config import Config, randomize_
from reference.cases.case import Case
from reference.cases.kinds import AttentionCase, StackCase
from reference.check import main as check_main
from reference.inference.auto import infer_target
from reference.inference.construct import build
from reference.levels.registry import level
from reference.targets.contract import NotSupportedError
from reference.verdict.engine import fastpath

M = "tests.targets.calling2_targets"
F64 = torch.float64
SELF = AttentionCase(embed_dim=8, num_heads=2, batch=2, query_len=5, key_len=5, batch_first=True,
                     self_attention=True, seed=3)
CROSS = AttentionCase(embed_dim=8, num_heads=2, batch=2, query_len=3, key_len=5, batch_first=True, bias=False,
                      key_is_value=True, seed=3)
GPT = StackCase(Case(Config(d_model=8, nhead=2, dim_feedforward=16, num_encoder_layers=2, norm_first=True,
                            activation="gelu", batch_first=True), batch=2, src_len=5, seed=3))
LAYER = Case(Config(d_model=8, nhead=2, dim_feedforward=12, batch_first=True), batch=2, src_len=5, tgt_len=4, seed=3)


def infer_on(name: str, case: Any, obj: Any) -> tuple[infer.Inference, nn.Module]:
    lv = level(name)
    model = build(obj, case.options(), name).model.to(F64)
    inputs, kwargs = lv.inputs(case, F64)
    return infer_target(lv.seeded_builtin(case), model, name, lv.call, inputs, kwargs,
                        batch_first=case.batch_first), model


def error(name: str, case: Any, inference: infer.Inference, model: nn.Module, seed: int = 11) -> float:
    """The largest output difference from the built-in, fresh built-in weights loaded through the map."""
    lv = level(name)
    builtin = randomize_(lv.build("torch", case), torch.Generator().manual_seed(seed))
    inference.weight_map.load(model, builtin)
    inputs, kwargs = lv.inputs(case, F64)
    with torch.no_grad(), fastpath(False):
        want = lv.call(builtin, **inputs, **kwargs)
        got = inference.convention(model, inputs, kwargs, batch_first=case.batch_first)
    want = want["output"] if isinstance(want, dict) else want
    return float((got["output"] - want).abs().max())


@pytest.mark.parametrize(("name", "case", "obj", "param", "form", "masked"), [
    ("attention", SELF, T.LogKeepAttention, "keep", ("N1LS", "keep_bool"), {"attn_mask": "causal_bool"}),
    ("encoder_layer", LAYER, T.AllowedEncoderLayer, "allowed", ("NS", "keep_bool"),
     {"src_key_padding_mask": "bool"}),
], ids=["log keep (N,1,L,S)", "keep (N,S) in a layer"])
def test_a_required_mask_gets_a_neutral_one_measured_and_the_masked_cases_are_written_in_its_form(
        name: str, case: Any, obj: type, param: str, form: tuple[str, str], masked: dict[str, str]) -> None:
    inference, model = infer_on(name, case, obj)
    conv = inference.convention
    assert param in conv.neutral, conv.describe()
    _, _, neutral = conv.neutral[param]
    assert (neutral.layout, neutral.kind) == form and neutral.exact, conv.describe()
    assert f"{param} is required: unmasked cases pass it blocking nothing" in conv.describe()
    assert error(name, case, inference, model) < 1e-10
    assert error(name, case.replace(**masked), inference, model) < 1e-10


def test_a_pairing_that_binds_an_input_the_target_ignores_is_not_the_call() -> None:
    inference, model = infer_on("attention", CROSS, T.PositionalCrossAttention)
    conv = inference.convention
    assert [t for _, t in conv.inputs] == ["queries", "memory"] and conv.key_is_value, conv.describe()
    assert "ignores value" in conv.describe(), conv.describe()
    assert error("attention", CROSS, inference, model) < 1e-10
    with pytest.raises(NotSupportedError, match="one input for keys and values"):
        conv(model, *level("attention").inputs(CROSS.replace(key_is_value=False), F64), batch_first=True)


def test_a_gpt_causal_when_given_no_mask_has_its_mask_measured_against_that() -> None:
    """Its mask replaces its own causal masking: blocking nothing differs from no mask, blocking the future does
    not, and the probes measure the form from there."""
    inference, model = infer_on("decoder_only", GPT, T.CausalUnlessToldGPT)
    conv = inference.convention
    ((_, form),) = conv.forms.values()
    assert conv.masks["mask"] == "mask" and (form.layout, form.kind, form.exact) == ("NLS", "additive", True), \
        conv.describe()
    assert not conv.always_causal
    assert error("decoder_only", GPT, inference, model) < 1e-10


def test_an_attention_causal_when_given_no_mask_is_given_one_blocking_nothing_when_the_case_has_none() -> None:
    inference, model = infer_on("attention", CROSS.replace(bias=True), T.TrilUnlessMaskedAttention)
    conv = inference.convention
    assert conv.causal_default and "scores_mask" in conv.neutral, conv.describe()
    assert "it attends causally when given no mask (measured)" in conv.describe()
    for case in (CROSS.replace(bias=True), CROSS.replace(bias=True, attn_mask="random_inf", key_padding_mask="bool")):
        assert error("attention", case, inference, model) < 1e-10


@pytest.mark.slow
@pytest.mark.parametrize(("obj", "lvl", "code"), [
    ("CausalUnlessToldGPT", "decoder_only", 0), ("CausalUnlessToldGPTBug", "decoder_only", 1),
    ("LogKeepAttention", "attention", 0), ("LogKeepAttentionBug", "attention", 1),
    ("AllowedEncoderLayer", "encoder_layer", 0), ("AllowedEncoderLayerBug", "encoder_layer", 1),
    ("PositionalCrossAttention", "attention", 0),
])
def test_parity_check_runs_them_and_shows_the_bug(obj: str, lvl: str, code: int,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    profile = "kill" if code else "ci"  # kill: ci without shrinking (a bug only has to be shown)
    assert check_main([f"{M}:{obj}", "--as", lvl, "--profile", profile, "--device", "cpu"]) == code
    out = capsys.readouterr().out
    if code:
        assert "max abs err" in out and "cannot be called" not in out, out[-3000:]
    else:
        assert "what the harness inferred" in out and "FAILED" not in out, out[-3000:]
