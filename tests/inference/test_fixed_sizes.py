"""Targets whose sizes are fixed by the object (instances, zero-argument factories;
tests/targets/fixed_size_targets.py): every drawn case is adapted to the sizes the model really has (read from
its parameters, the number of heads found by measurement) and said in a note; the correct ones pass, the planted
bugs fail with the numbers, at those sizes. And the map inferred once per configuration shape is reused only
while it verifies.
"""

from __future__ import annotations

import pytest
import torch

import reference.inference.sizes as fixed_sizes
import tests.targets.fixed_size_targets as fx
from reference import api
from reference.cases.kinds import AttentionCase
from reference.inference.prepare import inferred
from reference.levels.registry import LEVELS
from reference.targets.contract import load_target

F64 = ("-k", "float64")
CORRECT = [
    ("tests.targets.fixed_size_targets:gpt", "decoder_only",
     "sizes fixed by the object: d_model=48, nhead=3, dim_feedforward=192, num_encoder_layers=2"),
    ("tests.targets.fixed_size_targets:make_norm", "layer_norm", "sizes fixed by the object: normalized_shape=10"),
    ("tests.targets.fixed_size_targets:attention", "attention", "sizes fixed by the object: d_model=20, nhead=4"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("spec", "level", "note"), CORRECT, ids=["gpt instance", "norm factory", "attention instance"])
def test_an_object_is_checked_at_the_sizes_it_has_and_passes(spec: str, level: str, note: str) -> None:
    report = api.check(spec, level=level, profile="ci", device="cpu", pytest_args=F64)
    assert report.passed, report
    assert any(note in n for n in report.report["notes"]), report.report["notes"]
    assert not any("size" in r["reason"] or "shape" in r["reason"] for r in report.report["not_supported"])


@pytest.mark.slow
@pytest.mark.parametrize(("spec", "level", "sizes"), [
    ("tests.targets.fixed_size_targets:gpt_scaled_by_width", "decoder_only", "d_model=48, nhead=3"),
    ("tests.targets.fixed_size_targets:make_unbiased_norm", "layer_norm", "normalized_shape=(10,)"),
    ("tests.targets.fixed_size_targets:attention_scaled_by_width", "attention", "embed_dim=20 num_heads=4"),
], ids=["scores scaled by 1/sqrt(n_embd)", "unbiased variance", "attention scaled by 1/sqrt(d_model)"])
def test_a_planted_bug_in_an_object_fails_at_its_sizes(spec: str, level: str, sizes: str) -> None:
    report = api.check(spec, level=level, profile="kill", device="cpu", exitfirst=True,
                       pytest_args=("-k", f"{level}_matches_torch and float64"))
    assert not report.passed
    message = report.failures[0]["message"]
    assert f"{level} [" in message and "max abs err" in message and sizes in message, message


def test_the_number_of_heads_is_measured_and_the_drawn_one_preferred() -> None:
    found = inferred(load_target("tests.targets.fixed_size_targets:attention"), "attention").discover()
    assert found.sizes == {"d_model": 20, "nhead": 4}, found
    note = next(n for n in found.notes if n.startswith("nhead="))
    assert note.startswith("nhead=4 found by measurement: of the divisors of 20 (tried 2, "), note
    assert fixed_sizes.head_counts(20, 4)[0] == 4 and fixed_sizes.head_counts(20, 3) == [4, 2, 5, 1, 10, 20]


def test_layer_counts_are_the_outermost_stacks_not_a_list_of_heads() -> None:
    wanted = fixed_sizes.LEVEL_SIZES["decoder_only"]
    assert fixed_sizes.read_sizes(fx.gpt, "decoder_only", wanted)["num_encoder_layers"] == 2  # not the 3 heads
    assert fixed_sizes.read_sizes(fx.make_norm(), "layer_norm", ("normalized_shape",)) == {"normalized_shape": (10,)}


def test_the_map_is_inferred_once_per_shape_and_not_searched_again_per_example(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Inferred once per configuration shape, then used as is on every case of that shape (the engine's
    comparison judges it; no second comparison per example): a new shape is inferred once more."""
    view = inferred(load_target("tests.targets.fixed_size_targets:attention"), "attention")
    view.discover()  # once per run, before any case
    view._maps.clear()  # the view is shared with earlier checks of the same spec: start from no map at all
    view._templates.clear()
    calls: list[object] = []
    original = view._infer
    monkeypatch.setattr(view, "_infer", lambda case, model: calls.append(case) or original(case, model))
    entry = LEVELS["attention"]
    for seed, length in ((1, 3), (2, 5), (3, 2)):  # one shape: only the seed and the lengths differ
        case, candidate = view.prepare(AttentionCase(seed=seed, query_len=length, key_len=length + 1,
                                                     attn_mask="random_bool" if seed == 2 else "none"))
        candidate.load(candidate.build("cpu", torch.float64), entry.seeded_builtin(case))
    assert len(calls) == 1, calls  # masks are not part of the shape: their forms are measured once
    case, candidate = view.prepare(AttentionCase(seed=4, self_attention=True))  # one input: another shape
    candidate.load(candidate.build("cpu", torch.float64), entry.seeded_builtin(case))
    assert len(calls) == 2 and len(view._maps) == 2, calls


