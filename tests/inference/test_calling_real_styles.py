"""Calling from the signature and masks by measurement (issue 18), on targets written in the styles real code
uses (tests/targets/calling_targets.py): each correct one passes ``parity check`` with no adapter, its one-bug twin
fails with the divergence shown; the binding and the mask forms found are checked directly, and so is that
what a target's API cannot express is "not supported", in check and diagnose alike.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import pytest
import torch
from torch import nn

import reference.inference as infer
import tests.targets.calling_targets as T
from reference import api
from reference.builtin.config import Config, randomize_
from reference.cases.case import Case
from reference.cases.kinds import AttentionCase, StackCase
from reference.check import main as check_main
from reference.inference.auto import infer_target
from reference.inference.binding import arguments, forward_params
from reference.inference.construct import build
from reference.inference.target import InferredTarget
from reference.inference.weightmap import MapMismatchError
from reference.levels.registry import level
from reference.targets.contract import NotSupportedError, load_target
from reference.verdict.engine import fastpath

M = "tests.targets.calling_targets"
F64 = torch.float64
ATTENTION = AttentionCase(embed_dim=8, num_heads=2, batch=2, query_len=3, key_len=5, batch_first=True, seed=3)
LAYER = Case(Config(d_model=8, nhead=2, dim_feedforward=12, batch_first=True), batch=2, src_len=5, tgt_len=4, seed=3)
STACK = StackCase(Case(Config(d_model=8, nhead=2, dim_feedforward=12, num_encoder_layers=2, batch_first=True),
                       batch=2, src_len=5, seed=3))
GPT = StackCase(Case(Config(d_model=8, nhead=2, dim_feedforward=32, num_encoder_layers=2, norm_first=True,
                            activation="gelu", batch_first=True), batch=2, src_len=5, seed=3))

CORRECT = [
    ("MaskArgAttention", "attention"), ("KeywordOnlyEncoderLayer", "encoder_layer"),
    ("NamedInputsDecoderLayer", "decoder_layer"), ("ExtendedMaskEncoderLayer", "encoder_layer"),
    ("LSNMaskAttention", "attention"), ("IntMaskEncoder", "encoder"), ("ArgOrderAttention", "attention"),
    ("BatchMaskGPT", "decoder_only"),
]


def infer_on(name: str, case: Any, obj: Any, **kw: Any) -> tuple[infer.Inference, nn.Module]:
    lv = level(name)
    model = build(obj, case.options(), name).model.to(F64)
    inputs, kwargs = lv.inputs(case, F64)
    return infer_target(lv.seeded_builtin(case), model, name, lv.call, inputs, kwargs, batch_first=case.batch_first,
                        **kw), model


def agrees(name: str, case: Any, inference: infer.Inference, model: nn.Module, seed: int = 11) -> float:
    """The largest output difference from the built-in, with fresh built-in weights loaded through the map."""
    lv = level(name)
    builtin = randomize_(lv.build("torch", case), torch.Generator().manual_seed(seed))
    inference.weight_map.load(model, builtin)
    inputs, kwargs = lv.inputs(case, F64)
    with torch.no_grad(), fastpath(False):  # torch's fast path leaves padded positions out of its output
        want = lv.call(builtin, **inputs, **kwargs)
        got = inference.convention(model, inputs, kwargs, batch_first=case.batch_first)
    want = want["output"] if isinstance(want, dict) else want
    return float((got["output"] - want).abs().max())


# -- the call, read from the signature ----------------------------------------------------------------------------

def test_arguments_follow_the_signature_keyword_only_by_name_and_a_required_mask_gets_none() -> None:
    params, _ = forward_params(T.KeywordOnlyEncoderLayer(8, 2, 12))
    args, kwargs = arguments(params, {"tokens": "x"})
    assert args == [] and kwargs == {"tokens": "x"}  # keyword-only: never positional
    params, _ = forward_params(T.MaskArgAttention(8, 2))
    assert arguments(params, {"q": 1, "k": 2, "v": 3}) == ([], {"q": 1, "k": 2, "v": 3, "mask": None})
    params, _ = forward_params(T.NamedInputsDecoderLayer(8, 2, 12))
    assert arguments(params, {"x": 1, "memory": 2}) == ([], {"x": 1, "memory": 2})  # memory after a mask: by name


@pytest.mark.parametrize(("name", "case", "obj", "called"), [
    ("attention", ATTENTION, T.MaskArgAttention, "forward(q=<query>, k=<key>, v=<value>, mask=<attn_mask + "
                                                  "key_padding_mask>)"),
    ("encoder_layer", LAYER, T.KeywordOnlyEncoderLayer, "forward(tokens=<src>, padding_mask=<src_key_padding_mask>, "
                                                        "attn_mask=<src_mask>)"),
    ("decoder_layer", LAYER, T.NamedInputsDecoderLayer, "forward(x=<tgt>, mask=<tgt_mask + tgt_key_padding_mask>, "
                                                        "memory, memory_mask=<memory_key_padding_mask>)"),
    ("attention", ATTENTION, T.ArgOrderAttention, "forward(seq_q=<query>, seq_v=<value>, seq_k=<key>)"),
], ids=["required mask", "keyword-only", "input by name only", "order decided by the values"])
def test_the_call_is_bound_from_the_signature_and_gives_the_builtins_outputs(name: str, case: Any, obj: type,
                                                                             called: str) -> None:
    inference, model = infer_on(name, case, obj)
    assert inference.weight_map.verified
    assert f"called as {called}" in inference.convention.describe(), inference.convention.describe()
    assert agrees(name, case, inference, model) < 1e-10


# -- mask conventions, measured -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "case", "obj", "forms", "masked"), [
    ("attention", ATTENTION, T.MaskArgAttention, {"mask": ("N1LS", "block_bool", "NHLS", False)},
     {"attn_mask": "random_bool", "key_padding_mask": "bool"}),
    ("encoder_layer", LAYER, T.KeywordOnlyEncoderLayer,
     {"padding_mask": ("NS", "keep_bool", None, False), "attn_mask": ("N1LS", "additive", "NHLS", True)},
     {"src_mask": "additive", "src_key_padding_mask": "float_inf"}),
    ("decoder_layer", LAYER, T.NamedInputsDecoderLayer,
     {"mask": ("N1LS", "keep_bool", "NHLS", False), "memory_mask": ("NS", "block_bool", None, False)},
     {"tgt_mask": "causal_float", "tgt_key_padding_mask": "bool", "memory_key_padding_mask": "bool"}),
    ("encoder_layer", LAYER.replace(config=dataclasses.replace(LAYER.config, activation="gelu", layer_norm_eps=1e-12)),
     T.ExtendedMaskEncoderLayer, {"attention_mask": ("N11S", "additive", None, True)},
     {"src_key_padding_mask": "float_finite"}),
    ("attention", ATTENTION.replace(batch_first=False), T.LSNMaskAttention,
     {"mask": ("LSN", "block_bool", None, False)}, {"attn_mask": "random_inf", "key_padding_mask": "bool"}),
    ("encoder", STACK, T.IntMaskEncoder, {"src_mask": ("NS", "keep_int", None, False)},
     {"src_key_padding_mask": "bool"}),
    ("decoder_only", GPT, T.BatchMaskGPT, {"attention_mask": ("NLS", "keep_bool", None, False)}, {}),
], ids=["bool block (N,1,L,S)", "keep (N,S) + additive", "decoder streams", "additive (N,1,1,S)", "(L,S,N)",
        "0/1 integer", "(N,L,S) causal"])
def test_mask_conventions_are_found_by_measurement_and_give_the_builtins_outputs(
        name: str, case: Any, obj: type, forms: dict[str, tuple[str, str, str | None, bool]],
        masked: dict[str, str]) -> None:
    inference, model = infer_on(name, case, obj)
    found = {p: (f.layout, f.kind, f.head_layout, f.finite) for p, (_, f) in inference.convention.forms.items()}
    assert found == forms, inference.convention.describe()
    assert all(f.exact for _, f in inference.convention.forms.values())
    with_masks = StackCase(case.case.replace(**masked), case.final_norm) if isinstance(case, StackCase) \
        else case.replace(**masked)
    assert agrees(name, with_masks, inference, model) < 1e-10  # the masks the level draws, written in its form


def test_the_keep_masks_declaration_skips_the_search() -> None:
    inference, model = infer_on("attention", ATTENTION, T.MaskArgAttention, keep_mask=True)
    assert not inference.convention.forms and "as declared" in inference.convention.describe()
    case = ATTENTION.replace(attn_mask="random_bool")
    assert not agrees("attention", case, inference, model) < 1e-6  # declared, not searched: its masks inverted


def test_what_a_targets_mask_cannot_express_is_not_supported_in_check_and_diagnose() -> None:
    inference, model = infer_on("attention", ATTENTION.replace(batch_first=False), T.LSNMaskAttention)
    lv = level("attention")
    inputs, kwargs = lv.inputs(ATTENTION.replace(batch_first=False, attn_mask="per_head_bool"), F64)
    with pytest.raises(NotSupportedError, match="per-head masks cannot be expressed"):
        inference.convention(model, inputs, kwargs, batch_first=False)
    inputs, kwargs = lv.inputs(ATTENTION.replace(batch_first=False, attn_mask="additive"), F64)
    with pytest.raises(NotSupportedError, match="finite additive mask values cannot be expressed"):
        inference.convention(model, inputs, kwargs, batch_first=False)
    found = api.diagnose(f"{M}:LSNMaskAttention", level="attention", families=("per-head (N",)).diagnosis
    per_head = [f for f in found.families if f.name.startswith("per-head (N")]
    assert per_head and all(f.verdict == "not supported" for f in per_head), found.families


def test_a_masking_bug_is_run_in_the_closest_form_and_shows() -> None:
    """Its mask reaches the first layer only: no form blocks exactly, the closest (0/1 integer) is used, said so,
    and with masks the outputs differ: the masking, not the convention, is what differs."""
    inference, model = infer_on("encoder", STACK, T.IntMaskEncoderBug)
    (_, form), = inference.convention.forms.values()
    assert (form.layout, form.kind, form.exact) == ("NS", "keep_int", False)
    assert "the closest" in inference.convention.describe()
    assert agrees("encoder", STACK, inference, model) < 1e-10  # unmasked, it is the built-in
    masked = StackCase(STACK.case.replace(src_key_padding_mask="bool"))
    with pytest.raises(MapMismatchError, match="with the masks src_key_padding_mask the outputs differ"):
        infer_on("encoder", masked, T.IntMaskEncoderBug)


def test_calling_and_masks_are_inferred_once_not_per_example(monkeypatch: pytest.MonkeyPatch) -> None:
    import reference.inference.calling as calling

    calls = {"calling": 0, "probes": 0}
    real_calling, real_measure = calling.infer_calling, calling.measure_forms

    def counted_calling(*a: Any, **k: Any) -> Any:
        calls["calling"] += 1
        return real_calling(*a, **k)

    def counted_measure(*a: Any, **k: Any) -> Any:
        calls["probes"] += 1
        return real_measure(*a, **k)

    monkeypatch.setattr(infer.auto, "infer_calling", counted_calling)
    monkeypatch.setattr(calling, "measure_forms", counted_measure)
    # a fresh one: ``inferred`` keeps one per target for the process, which another test may have discovered
    target = InferredTarget(target=load_target(f"{M}:KeywordOnlyEncoderLayer"), level="encoder_layer")
    target.discover()
    after_discovery = dict(calls)
    for seed, d_model in enumerate((8, 12, 16, 8)):
        case = LAYER.replace(config=dataclasses.replace(LAYER.config, d_model=d_model), seed=seed,
                             src_key_padding_mask="bool", src_mask="additive")
        adapted, candidate = target.prepare(case)
        candidate.load(candidate.build("cpu", F64), level("encoder_layer").seeded_builtin(adapted))
    assert calls["probes"] == 1, calls  # masks measured once, in discovery
    assert calls["calling"] == after_discovery["calling"], calls  # no calling search per example


def test_a_call_the_harness_cannot_make_is_said_at_once_with_the_call_tried(capsys: pytest.CaptureFixture[str]) -> None:
    """Calling does not depend on the configuration: discovery stops at the first, naming the call it made."""
    assert check_main([f"{M}:NeedsPositions", "--as", "encoder_layer", "--show-map"]) == 1
    err = capsys.readouterr().err
    assert "cannot be called at this level: forward(x=<src>, positions=None)" in err, err
    assert "in any configuration tried" not in err and "Traceback" not in err, err


# -- through the command line, as a user runs it --------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize(("obj", "lvl"), CORRECT + [(f"{o}Bug", lv) for o, lv in CORRECT],
                         ids=[o for o, _ in CORRECT] + [f"{o}Bug" for o, _ in CORRECT])
def test_parity_check_passes_the_correct_one_and_shows_the_bug(obj: str, lvl: str,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    start = time.monotonic()
    profile = "kill" if obj.endswith("Bug") else "ci"  # kill: ci without shrinking (a bug only has to be shown)
    code = check_main([f"{M}:{obj}", "--as", lvl, "--profile", profile, "--device", "cpu"])
    wall = time.monotonic() - start
    out = capsys.readouterr().out
    buggy = obj.endswith("Bug")
    print(f"parity check {M}:{obj} --as {lvl}: exit {code} in {wall:.1f} s")
    assert code == (1 if buggy else 0), out[-3000:]
    if buggy:
        assert "FAILED" in out and ("max abs err" in out or "differ" in out), out[-3000:]
    else:
        assert "what the harness inferred" in out and "FAILED" not in out, out[-3000:]


def _count_searches(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """A counter of the weight-map searches (``infer_weight_map``) made from now on."""
    import reference.inference.auto as auto

    searched = {"maps": 0}
    real = auto.infer_weight_map

    def counted(*a: Any, **k: Any) -> Any:
        searched["maps"] += 1
        return real(*a, **k)

    monkeypatch.setattr(auto, "infer_weight_map", counted)
    return searched


def _worst_over_sizes(target: InferredTarget, sizes: list[dict[str, int]]) -> float:
    """Each encoder-layer configuration of ``sizes`` prepared and loaded through its map, which must be verified;
    the largest output difference from the built-in over them."""
    worst = 0.0
    for seed, size in enumerate(sizes):
        case = LAYER.replace(config=dataclasses.replace(LAYER.config, **size), seed=seed)
        adapted, candidate = target.prepare(case)
        model = candidate.build("cpu", F64)
        candidate.load(model, level("encoder_layer").seeded_builtin(adapted))
        assert candidate.inference is not None and candidate.inference.weight_map.verified
        worst = max(worst, agrees("encoder_layer", adapted, candidate.inference, model))
    return worst


def test_a_map_found_at_one_size_is_rescaled_and_verified_at_another_not_searched_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Cases that differ only in sizes reuse the map verified on the first (its rows rescaled, checked by one
    run of each model); a case whose map it cannot be (another number of heads for a per-head layout would
    not verify) is inferred afresh."""
    searched = _count_searches(monkeypatch)
    target = InferredTarget(target=load_target(f"{M}:KeywordOnlyEncoderLayer"), level="encoder_layer")
    target.discover()
    before = searched["maps"]
    worst = _worst_over_sizes(target, [{"d_model": d, "dim_feedforward": ff}
                                       for d, ff in ((8, 12), (12, 24), (16, 8), (24, 48))])
    assert searched["maps"] - before <= 1, searched  # at most the first size not met in discovery
    assert worst <= 1e-12, worst  # and every rescaled map gives the built-in's outputs


def test_every_template_is_tried_before_a_fresh_search(monkeypatch: pytest.MonkeyPatch) -> None:
    """A per-head packed layout regroups its rows with the head count: at 4 heads a template found at 2 does
    not verify, and the 4-head one found next is tried before searching again, at every width."""
    searched = _count_searches(monkeypatch)
    target = InferredTarget(target=load_target("tests.targets.construct_targets:HeadPacked"), level="encoder_layer")
    target.discover()
    worst, per_count = 0.0, []
    for heads in (2, 4):
        before = searched["maps"]
        worst = max(worst, _worst_over_sizes(target, [{"d_model": d, "nhead": heads, "dim_feedforward": ff}
                                                      for d, ff in ((8, 12), (16, 8), (24, 48), (32, 16))]))
        per_count.append(searched["maps"] - before)
    assert per_count and all(n <= 1 for n in per_count), per_count  # one search per head count at most
    assert worst <= 1e-12, worst


def test_a_map_that_holds_rows_at_zero_is_rescaled_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """A target with no q/k/v bias holds the built-in's in_proj_bias at zero; its map, rescaled to other sizes
    with the held rows, verifies there without a new search (each drawn size searched again made a bias-free
    decoder layer's check take 86 s instead of 13)."""
    searched = _count_searches(monkeypatch)
    target = InferredTarget(target=load_target("tests.targets.handnorm_targets:Stretch"), level="encoder_layer")
    target.discover()
    before = searched["maps"]
    worst = _worst_over_sizes(target, [{"d_model": d, "dim_feedforward": ff}
                                       for d, ff in ((8, 12), (12, 24), (16, 8), (24, 48))])
    assert searched["maps"] - before <= 1, searched
    assert worst <= 1e-12, worst
