"""A target the resolver cannot resolve is UNRESOLVED with the resolver's reason (exit 1), never CRASHES; a
head split/merge fix is written in the layout the target's data was measured in."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import reference.diagnose.fits as fits
from reference.diagnose.pipeline import diagnose, main
from reference.diagnose.runs import one_thread
from reference.diagnose.text import render
from reference.targets.contract import load_target


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


def test_an_unresolvable_target_is_unresolved_with_the_resolver_s_reason(capsys):
    d = diagnose(load_target("tests.targets.diag2_targets:GatedPerceptron"), out_dir=None, reproduce=False,
                 level="feed_forward")
    assert d.verdict == "unresolved" and "cannot be paired" in d.unresolved and "gate" in d.unresolved
    assert not d.crashes and not d.causes
    text = render(d)
    assert any(line.startswith("UNRESOLVED: ") for line in text.splitlines())
    assert "CRASHES" not in text and "Crashes" not in text
    assert main(["tests.targets.diag2_targets:GatedPerceptron", "--as", "feed_forward", "--no-reproducer"]) == 1


@pytest.mark.parametrize("part, layout, shown", [
    ("merge", "batch", "reshape(N, L, E)"), ("merge", "seq", "reshape(L, N, E)"),
    ("split", "batch", "view(N, L, H, D)"), ("split", "seq", "view(L, N, H, D)"),
])
def test_a_head_split_or_merge_fix_is_in_the_measured_layout(part, layout, shown):
    torch.manual_seed(5)
    m = nn.MultiheadAttention(12, 3).double().eval()
    x = torch.randn(4, 2, 12, dtype=torch.float64)  # (L, N, E), N != L
    with torch.no_grad():
        expected = m(x, x, x)[0]
        got = fits._mha(m, x, x, x, None, None, **{part: layout})
    found = fits.fit_component(m, (x, x, x), {}, expected, got)
    assert found and found[0].after <= 1e-12, found
    assert shown in found[0].fix and found[0].fix == fits.LAYOUT_FIX[part, layout]
