"""Diagnose on code with no module per layer (the residual adds in the caller's loop) and heads merged in
another order: the place and cause are the real bug's, and no residual cause is made up from the last part's
output (tests/targets/diag2_targets.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from reference.diagnose.fits_heads import merge_order
from reference.diagnose.pipeline import diagnose
from reference.diagnose.runs import one_thread
from reference.targets.contract import load_target

TARGETS = "tests.targets.diag2_targets"


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


def run(name: str, families: tuple[str, ...] | None = None):
    return diagnose(load_target(f"{TARGETS}:{name}"), out_dir=None, family_names=families, reproduce=False,
                    level="encoder")


def test_the_correct_loop_is_equivalent():
    d = run("LoopResiduals")
    assert d.verdict == "equivalent", [(f.name, f.verdict, f.detail) for f in d.families]
    assert not d.causes


@pytest.mark.parametrize("name, place, words", [
    ("LoopResidualsEpsBug", "layers.0.norm2", "eps"),
    ("LoopResidualsMergeBug", "layers.0.self_attn", "(head_dim, heads) order"),
])
def test_a_bug_elsewhere_is_named_and_no_residual_cause_is_made_up(name, place, words):
    d = run(name, ("base",))
    assert d.verdict == "divergent"
    assert [c.place for c in d.causes] == [place], [(c.cause, c.does, c.place) for c in d.causes]
    assert words in d.causes[0].does and d.causes[0].place_after <= 1e-9 < d.causes[0].place_before
    assert not any(c.cause == "residual connection" for c in d.causes)
    isolated = next(t for t in d.localization if t.mode == "isolated")
    assert set(isolated.set_aside) == {"layers.0", "layers.1"}, isolated.set_aside
    assert "returns layers.0.linear2's output" in isolated.set_aside["layers.0"]


@pytest.mark.parametrize("heads, head_dim, order, words", [
    (4, 3, lambda o: o.permute(0, 1, 3, 2), "(head_dim, heads) order"),
    (3, 4, lambda o: o.flip(2), "in the order [2, 1, 0]"),
    (2, 6, lambda o: o.flip(3), "another order"),
])
def test_the_merge_order_fit_names_the_permutation_exactly(heads, head_dim, order, words):
    torch.manual_seed(3)
    m = nn.Linear(heads * head_dim, heads * head_dim).double()
    mha = nn.MultiheadAttention(heads * head_dim, heads).double()
    mha.out_proj = m  # type: ignore[assignment]
    per_head = torch.randn(5, 2, heads, head_dim, dtype=torch.float64)  # (L, N, H, D)
    concat = per_head.reshape(5, 2, -1)
    with torch.no_grad():
        got = m(order(per_head).reshape(5, 2, -1))
        found = merge_order(mha, concat, got)
        assert found is not None and words in found[0] and found[2] <= 1e-12
        assert merge_order(mha, concat, m(concat)) is None  # the built-in's own order: nothing to say
        assert merge_order(mha, concat, m(concat) * 1.01) is None  # not a permutation: never a guess
