"""``parity diagnose`` on code nobody here wrote: any level, any kind of target, no adapter.

The targets are the examples (a learner's attention, a nanoGPT-style block stack, a blog-style seq2seq) and
tests/targets/diagnose_targets.py (HF-named, GPT-2 Conv1D, ModuleDict blocks, sequence-first inside): each bug is
localized to its submodule (by the inferred weight map) and named with its catalogue key or a measured
cause; a target that runs one configuration has every family judged from it; NaN is localized and
explained; a bug outside the catalogue is reported as unexplained, with its place, never as a made-up
cause; the text fits in 100 columns and the JSON carries the same facts.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from reference.diagnose.pipeline import diagnose, main
from reference.diagnose.report import to_json
from reference.diagnose.runs import one_thread
from reference.diagnose.text import WIDTH, render
from reference.targets.contract import load_target

TARGETS = "tests.targets.diagnose_targets"


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


def run(spec: str, level: str = "transformer", keep_masks: bool = False, families: tuple[str, ...] | None = None):
    target = dataclasses.replace(load_target(spec), keep_masks=keep_masks)
    return diagnose(target, out_dir=None, family_names=families, reproduce=False, level=level)


def isolated_first(d):
    table = next(t for t in d.localization if t.mode == "isolated")
    return table.first


BUGS = {  # spec: (level, keep-masks, families, first diverging submodule (built-in's name), catalogue key)
    "examples.learner_attention:MergeWithoutTranspose": ("attention", True, ("default",), "",
                                                         "head_merge_without_transpose"),
    "examples.nanogpt_blocks:ScaledByWidth": ("decoder_only", False, None, "layers.0.self_attn",  # every family
                                              "scale_by_d_model"),
    "examples.blog_seq2seq:UnbiasedNorm": ("transformer", False, ("default",), "encoder.layers.0.norm1",
                                           "layer_norm_unbiased_variance"),
    f"{TARGETS}:EpsSix": ("transformer", False, ("default",), "encoder.layers.0.norm1", "layer_norm_eps_1e-6"),
    f"{TARGETS}:WidthScaled": ("transformer", False, ("default",), "encoder.layers.0.self_attn", "scale_by_d_model"),
}


@pytest.mark.slow
@pytest.mark.parametrize("spec", sorted(BUGS))
def test_a_bug_in_code_written_elsewhere_is_localized_and_named(spec):
    level, keep, families, place, key = BUGS[spec]
    d = run(spec, level, keep, families)
    assert d.verdict == "divergent"
    first = isolated_first(d)
    assert first is not None and first.name == place, first
    assert first.target_module, "the target's own module standing for it is named"
    assert [c.key for c in d.causes] == [key], [(c.key, c.does) for c in d.causes]
    assert d.explained and not d.unexplained
    cause = d.causes[0]
    assert cause.place == place and cause.place_after <= 1e-9 < cause.place_before, cause


@pytest.mark.slow
@pytest.mark.parametrize("spec, level, keep, declined", [
    ("examples.learner_attention:MultiHeadAttention", "attention", True, set()),
    ("examples.nanogpt_blocks:Blocks", "decoder_only", False, set()),
    # the blog adds its mask to (N, H, L, S) scores: measured so, per-head masks are given to it as (N, H, L, S)
    pytest.param("examples.blog_seq2seq:Seq2SeqTransformer", "transformer", False, set(),
                 marks=pytest.mark.slow),  # every family, then check's own search: > 10 s on 2 cores
    pytest.param(f"{TARGETS}:Correct", "transformer", False, set(), marks=pytest.mark.slow),
])
def test_a_correct_implementation_written_elsewhere_is_equivalent_wherever_it_runs(spec, level, keep, declined):
    d = run(spec, level, keep)
    assert {f.verdict for f in d.families} <= {"equivalent", "not supported"}
    assert {f.name for f in d.families if "as check says" in f.detail} == declined
    assert all(f.verdict == "not supported" for f in d.families if f.name in declined)
    assert not d.crashes and not d.causes and d.verdict == "equivalent"


@pytest.mark.slow
def test_a_target_running_one_configuration_is_judged_from_it_and_its_masks_examined():
    """Pre-norm, batch-first and GELU only (it declines the rest), every mask read as bool."""
    d = run(f"{TARGETS}:PreNormOnly")
    assert d.base != "default" and "norm_first=True" in d.base and "batch_first=True" in d.base
    assert all(f.verdict != "not run" for f in d.families)
    masks = {f.name: f.verdict for f in d.families if f.group == "masks"}
    assert masks["bool attention masks"] == masks["bool key padding masks"] == "equivalent", masks
    assert masks["additive float attention masks"] == masks["finite float key padding masks"] == "divergent", masks
    assert [c.key for c in d.causes] == ["float_mask_as_bool"]
    assert d.explained


@pytest.mark.slow
def test_nan_in_some_families_is_localized_and_explained():
    """Inverted bool polarity: NaN on the rows left with no key; localized to the attention, cause measured."""
    d = run(f"{TARGETS}:InvertedPolarity")
    assert d.verdict == "crashes"
    assert d.localized_family and isolated_first(d).name == "encoder.layers.0.self_attn"
    assert "bool_mask_inverted" in [c.key for c in d.causes]
    assert d.crashes and all("NaN" in c.where and "self_attn" in c.where for c in d.crashes), d.crashes
    assert {c.family for c in d.crashes} >= {"bool attention masks", "bool key padding masks"}


def test_a_bug_outside_the_catalogue_is_unexplained_with_its_place_and_no_cause_is_made_up():
    d = run(f"{TARGETS}:HalfResidual", families=("default", "norm_first"))
    assert d.verdict == "divergent"
    assert d.causes == [], [(c.key, c.err_vs_builtin, c.err_without_it) for c in d.causes]
    assert d.unexplained.startswith("decoder.layers.0.norm3"), d.unexplained
    assert "decoder.layers.0.linear2" in d.unexplained  # the code between the two: the residual
    assert "Unexplained: decoder.layers.0.norm3" in render(d)


def test_every_printed_cause_has_evidence_and_the_text_fits_in_100_columns():
    for spec in (f"{TARGETS}:EpsSix", "examples.einsum_transformer:bugs.shared_attention"):
        d = run(spec, families=("default", "bool attention"))
        text = render(d)
        assert max(len(line) for line in text.splitlines()) <= WIDTH
        for c in d.causes:
            assert c.err_without_it > 2 * c.err_vs_explanation and c.shows_on, c
        data = json.loads(to_json(d))
        assert [c["key"] for c in data["causes"]] == [c.key for c in d.causes]
        assert data["base"] == d.base and data["level"] == "transformer"
        assert data["first_diverging"]["isolated"]["name"] == isolated_first(d).name
        assert "crashes" in data and "unexplained" in data


def test_the_command_takes_a_level(capsys):
    code = main(["examples.learner_attention:MergeWithoutTranspose", "--as", "attention", "--keep-masks",
                 "--json", "--no-reproducer", "--family", "default"])
    data = json.loads(capsys.readouterr().out)
    assert code == 1 and data["level"] == "attention" and data["builtin"] == "nn.MultiheadAttention"
    assert [c["key"] for c in data["causes"]] == ["head_merge_without_transpose"]
    assert not math.isnan(data["causes"][0]["place_before"])


def test_a_target_that_crashes_under_masks_is_reported_as_check_reports_it_next_to_the_numeric_diagnosis():
    """Cross-attention on the target stream: wrong values without masks, shape errors with memory masks
    (S != T). Its mask arguments carry torch's names, so check passes them and fails those cases (the crash
    is the bug showing); diagnose agrees (the masked families crash, never "equivalent" or "not supported")
    and still names the cause where it runs; the layout (sequence-first inside, shapes allow both) is measured."""
    d = run(f"{TARGETS}:CrossAttendsTarget", families=("default", "bool"))
    assert [c.key for c in d.causes] == ["cross_attention_reads_decoder"] and d.explained
    assert d.causes[0].place == "decoder.layers.0.multihead_attn"
    assert any(n.startswith("layout measured: sequence-first") for n in d.notes), d.notes
    masked = {f.name: f for f in d.families if f.group == "masks"}
    assert set(masked) == {"bool attention masks", "bool key padding masks"}
    assert all(f.verdict == "crashes" and "RuntimeError" in f.detail for f in masked.values()), \
        [(f.verdict, f.detail) for f in masked.values()]
    assert d.verdict != "equivalent"


def test_the_evidence_rule_keeps_only_findings_that_halve_an_error_above_the_tolerance():
    from reference.diagnose.place import kept

    assert kept(before=1.0, after=0.4, bound=1e-10)
    assert not kept(before=1.0, after=0.6, bound=1e-10)  # less than half removed
    assert not kept(before=1e-11, after=0.0, bound=1e-10)  # nothing above the tolerance to explain
    assert kept(before=math.inf, after=1e-15, bound=1e-10)  # NaN where the built-in is finite, then matched
    assert not kept(before=math.inf, after=math.inf, bound=1e-10)
