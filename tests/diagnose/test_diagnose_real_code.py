"""``parity diagnose`` on code written the ways real code is (issue 19): the place AND the cause printed.

The targets are tests/targets/diagnose_real_targets.py, each style unlike handmade's and unlike the others':

- hooks clone what they keep: in-place ReLU and in-place residual adds leave the place at the real bug;
- a built-in submodule standing for two target modules (an HF-like attention split into a ``self`` and an
  ``output`` part) and a target module standing for two built-in ones (both feed-forward matrices in one module);
- the family localized is one the map reaches (an adapter mapping batch-first models only), and when none
  is, the section says why;
- diagnose never contradicts check: a bug that shows only when two lengths are equal is found by check's own
  search; a target that crashes in one layout is localized in the other;
- fits for the kinds real code has: a causal mask built inside off by one, heads merged without the transpose
  in a packed-q/k/v attention, one projection shared across heads with the scores scaled by the width, a
  residual missing or added twice, dropout active in eval, a score scale rounded to float32.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import nn

import reference.diagnose.fits as fits
from reference.diagnose.pipeline import diagnose, main
from reference.diagnose.runs import one_thread
from reference.diagnose.text import render
from reference.targets.contract import load_target

TARGETS = "tests.targets.diagnose_real_targets"


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


def run(name: str, level: str, families: tuple[str, ...] | None = None):
    target = dataclasses.replace(load_target(f"{TARGETS}:{name}"))
    return diagnose(target, out_dir=None, family_names=families, reproduce=False, level=level)


def isolated(d):
    return next(t for t in d.localization if t.mode == "isolated")


def causes(d) -> list[tuple[str, str, str]]:
    return [(c.key, c.does, c.place) for c in d.causes]


@pytest.mark.parametrize("name, level", [
    ("InPlaceLayer", "encoder_layer"), ("SplitLayer", "encoder_layer"), ("FunctionalEncoder", "encoder"),
    ("ShapeSniffingDecoderLayer", "decoder_layer"),
])
def test_correct_real_code_is_equivalent_and_check_s_search_agrees(name, level):
    d = run(name, level)
    assert d.verdict == "equivalent", [(f.name, f.verdict, f.detail) for f in d.families]
    assert not d.causes and not d.crashes
    assert any(n.startswith("check's own search found no failing case") for n in d.notes), d.notes


def test_in_place_relu_and_residual_adds_leave_the_place_at_the_real_bug():
    """nn.ReLU(inplace=True) after linear1 and ``h += x`` on the attention's and linear2's outputs: what the hooks
    kept is what each module returned, so only norm2 (eps 1e-6) differs, and that is the place and the cause."""
    d = run("InPlaceNorm2Eps", "encoder_layer", ("default",))
    for table in d.localization:  # each model on its own activations, and each module fed the built-in's input
        assert table.first is not None and table.first.name == "norm2", (table.mode, table.first)
        assert [r.name for r in table.rows if not r.passed] == ["norm2"], [(r.name, r.max_abs) for r in table.rows]
    assert [(c.key, c.place) for c in d.causes] == [("layer_norm_eps_1e-6", "norm2")], causes(d)
    assert d.causes[0].place_after <= 1e-9 < d.causes[0].place_before and not d.unexplained


def test_an_attention_split_into_self_and_output_modules_is_one_place():
    """HF-like: query/key/value in ``attention.self``, the output projection in ``attention.output.dense`` next to
    the residual norm: the built-in's self_attn stands for both, so the scale bug is placed there, not at norm1."""
    d = run("SplitWidthScaled", "encoder_layer", ("default",))
    first = isolated(d).first
    assert first is not None and first.name == "self_attn", first
    assert first.target_module == "attention.self + attention.output.dense"
    assert [(c.key, c.place) for c in d.causes] == [("scale_by_d_model", "self_attn")], causes(d)
    assert d.explained and not d.unexplained


def test_a_module_holding_both_feed_forward_matrices_stands_for_linear1_and_linear2():
    d = run("FunctionalDoubleResidual", "encoder", ("base",))
    rows = {r.name: r.target_module for r in isolated(d).rows}
    assert rows["layers.0.linear1+linear2"] == "layers.0.mlp", rows


@pytest.mark.slow
def test_a_residual_added_twice_is_named_at_the_norm_it_feeds():
    d = run("FunctionalDoubleResidual", "encoder")
    first = isolated(d).first
    assert first is not None and first.name == "layers.0.norm2" and not first.fed_passed, first
    assert [(c.cause, c.place) for c in d.causes] == [("residual connection", "layers.0.norm2")], causes(d)
    assert "the residual around ff is added twice: 2·x + ff(x)" in d.causes[0].does
    assert d.causes[0].place_after <= 1e-9 < d.causes[0].place_before and not d.unexplained
    assert "residual connection: the residual around ff is added twice" in render(d)


@pytest.mark.slow
def test_a_missing_residual_is_named_at_the_norm_it_feeds():
    d = run("FunctionalNoResidual", "encoder")
    assert isolated(d).first.name == "layers.0.norm1"
    assert [(c.cause, c.place) for c in d.causes] == [("residual connection", "layers.0.norm1")], causes(d)
    assert "the residual around self_attn is missing" in d.causes[0].does and not d.unexplained


def test_dropout_written_into_the_code_is_named_as_active_in_eval():
    """``F.dropout(h, 0.1)`` with training left True: every family is random, whatever dropout is configured."""
    d = run("FunctionalEvalDropout", "encoder", ("base",))
    assert [c.key for c in d.causes] == ["dropout_in_eval"], causes(d)
    assert "linear1+linear2 is the first submodule whose output varies" in d.causes[0].does
    assert not d.unexplained


def test_a_causal_mask_built_inside_off_by_one_is_named():
    d = run("PackedCausalOffByOne", "decoder_only", ("base",))
    assert isolated(d).first.name == "layers.0.self_attn"
    assert [(c.key, c.place) for c in d.causes] == [("causal_off_by_one", "layers.0.self_attn")], causes(d)
    assert d.explained and not d.unexplained


def test_heads_merged_without_the_transpose_in_a_packed_attention_are_named_in_the_measured_layout():
    """Batch-first by code, the shapes allow both layouts and the bug hides which: the layout is the one where
    one batch element's output never depends on another's input, and there the merge fit names the bug."""
    d = run("PackedMergeNoTranspose", "decoder_only", ("base",))
    assert any(n.startswith("layout measured: batch-first") for n in d.notes), d.notes
    assert [(c.key, c.place) for c in d.causes] == [("head_merge_without_transpose", "layers.0.self_attn")], \
        causes(d)
    assert "reshape(N, L, E) of (N, H, L, head_dim) data" in d.causes[0].does and not d.unexplained


def test_one_projection_shared_across_heads_is_a_named_cause_and_the_width_scale_is_measured_after_it():
    d = run("HeadSharedAttention", "attention")
    assert d.verdict == "divergent" and "cannot be paired" in d.not_localized
    shared, scale = d.causes
    assert shared.cause == "q/k/v projection" and "one projection shared across heads" in shared.does
    assert "one 4x4 matrix" not in shared.does and "8x8 matrix" in shared.does  # head_dim 8 of width 16
    assert shared.place_after < shared.place_before / 2
    assert scale.key == "scale_by_d_model" and scale.place_after <= 1e-9 < scale.place_before
    assert d.explained and "uses one projection shared across heads" in render(d)


def test_the_family_localized_is_one_the_map_reaches():
    """The adapter maps batch-first models only: the base (sequence-first) family is tried, then batch_first."""
    d = run("batch_first_map_adapter", "transformer", ("default", "batch_first"))
    assert d.localized_family == "batch_first=True"
    assert any(n.startswith("localized on batch_first=True, where the map reaches; not on default") for n in d.notes)
    assert isolated(d).first.name == "encoder.layers.0.norm1"
    assert [(c.key, c.place) for c in d.causes] == [("layer_norm_eps_1e-6", "encoder.layers.0.norm1")], causes(d)


def test_when_nothing_can_be_localized_the_section_says_why(monkeypatch):
    adapter = load_target(f"{TARGETS}:batch_first_map_adapter").obj
    monkeypatch.setattr(type(adapter), "submodules", lambda self, model: {})
    d = run("batch_first_map_adapter", "transformer", ("default", "batch_first"))
    assert not d.localization and d.not_localized.startswith("no family tried could be localized: default")
    assert "batch_first=True: submodules(model) maps no module here" in d.not_localized
    assert "Not localized: no family tried could be localized" in render(d)


def test_a_bug_that_shows_only_when_two_lengths_are_equal_is_found_by_check_s_search():
    """Cross-attention takes the self-attention path when key and query shapes agree (T == S): every family's
    cases have T != S, check's strategy draws T == S; the case found is diagnosed: place and cause."""
    d = run("ShapeSniffingBug", "decoder_layer", ("default",))
    assert d.verdict == "divergent"
    found = d.families[-1]
    assert found.group == "found by check's strategy" and found.verdict == "divergent", found
    case = found.cases[0]
    assert case.src_len == case.tgt_len
    assert d.localized_family == found.name and isolated(d).first.name == "multihead_attn"
    assert [(c.key, c.place) for c in d.causes] == [("cross_attention_reads_decoder", "multihead_attn")], causes(d)


def test_a_target_that_crashes_in_one_layout_is_localized_and_named_in_the_other():
    d = run("BatchFirstOnlyTransformer", "transformer", ("base", "batch_first"))
    assert d.base == "batch_first=True"
    assert {f.name: f.verdict for f in d.families} == {"base (batch_first=True)": "divergent",
                                                       "batch_first=False": "crashes"}
    assert d.localized_family == "base (batch_first=True)"
    assert isolated(d).first.name == "encoder.layers.0.norm1"
    [cause] = d.causes
    assert cause.cause == "layer-norm formula" and cause.does.startswith("eps = 0.001")
    assert cause.place == "encoder.layers.0.norm1" and cause.place_after <= 1e-9 < cause.place_before
    assert d.crashes and d.crashes[0].family == "batch_first=False" and "RuntimeError" in d.crashes[0].message


@pytest.mark.parametrize("computed", [8 ** -0.5, 24 ** -0.5])
def test_a_score_scale_rounded_to_float32_is_named(computed):
    """1/sqrt(head_dim) computed in float32 (a cause with no catalogue key), 1/sqrt(embed_dim) so too."""
    torch.manual_seed(0)
    m = nn.MultiheadAttention(24, 3, dtype=torch.float64).eval()
    x = torch.randn(5, 3, 24, dtype=torch.float64)
    expected = m(x, x, x, need_weights=False)[0]
    rounded = float(torch.tensor(computed, dtype=torch.float32))
    got = fits._mha(m, x, x, x, None, None, scale=rounded)
    best = fits.fit_component(m, (x, x, x), {"need_weights": False}, expected, got)[0]
    assert f"rounded to float32 ({rounded!r})" in best.what and best.after <= 1e-12 < best.before
    assert best.key == (None if computed == 8 ** -0.5 else "scale_by_d_model")


def test_the_command_prints_the_place_and_the_cause(capsys):
    code = main([f"{TARGETS}:SplitWidthScaled", "--as", "encoder_layer", "--no-reproducer", "--json",
                 "--family", "default"])
    data = json.loads(capsys.readouterr().out)
    assert code == 1 and data["first_diverging"]["isolated"]["name"] == "self_attn"
    assert [(c["key"], c["place"]) for c in data["causes"]] == [("scale_by_d_model", "self_attn")]
