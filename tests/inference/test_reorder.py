"""When pairing by order of first use leaves holes, a one-to-one pairing by shape and kind is searched
(reference/inference/choose.py): a bug that reorders the sublayers is then run and fails, not "cannot be
paired" (tests/targets/reorder_targets.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tests.targets.reorder_targets as R
from reference import api
from reference.inference.record import record_uses
from reference.inference.weightmap import pair

F64 = torch.float64


def _pair(model: nn.Module):
    builtin = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True).to(F64).eval()
    x = torch.randn(2, 5, 8, dtype=F64, generator=torch.Generator().manual_seed(0))
    model = model.to(F64)
    return pair(builtin, model, record_uses(builtin, lambda m: m(x)), record_uses(model, lambda m: m(x)))


def test_a_reordered_layer_pairs_one_to_one_by_shape_and_kind() -> None:
    wm = _pair(R.RawReordered(8, 2, 16))
    links = {link.target: link.text() for link in wm.links}
    assert links["W1"] == "linear1.weight" and links["Wq"] == "self_attn.in_proj_weight[rows 0:8]", links
    assert links["Wo"] == "self_attn.out_proj.weight" and links["W2"] == "linear2.weight", links
    assert "paired by shape and kind: the order of first use pairs no one-to-one map" in wm.notes


def test_the_order_of_use_still_pairs_a_layer_in_order() -> None:
    wm = _pair(R.Raw(8, 2, 16))
    assert {link.target: link.text() for link in wm.links}["W1"] == "linear1.weight"
    assert not any("paired by shape" in note for note in wm.notes), wm.notes


@pytest.mark.slow
def test_the_correct_layer_passes() -> None:
    report = api.check("tests.targets.reorder_targets:Raw", level="encoder_layer", profile="ci", device="cpu",
                       pytest_args=("-k", "float64 or float32"))
    assert report.passed, report


@pytest.mark.slow
def test_the_reordered_layer_is_run_and_fails() -> None:
    report = api.check("tests.targets.reorder_targets:RawReordered", level="encoder_layer", profile="ci",
                       device="cpu", pytest_args=("-k", "float64"))
    assert not report.report.get("unresolved") and report.failures, report
