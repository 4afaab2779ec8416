"""``parity diagnose``: it says equivalent for a correct target, and for a buggy one names the submodule and
the cause (each backed by a probe), explains the course example completely, and writes a reproducer that
runs with torch and the target alone."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import handmade
from reference.catalogue import BY_KEY, CATALOGUE
from reference.catalogue._base import become
from reference.catalogue.attention_math import Equation1
from reference.catalogue.norms import Formula
from reference.catalogue.zoo import ENTRIES, level_of, spec
from reference.diagnose.families import family_grid
from reference.diagnose.pipeline import diagnose, main
from reference.diagnose.probes import candidate, run_candidate, shows
from reference.diagnose.reproducer import minimal_failing_case, write
from reference.diagnose.runs import observe, one_thread
from reference.studies.zoo_hunt import PANELS, diagnosis_families, first_catch
from reference.targets.contract import load_target

ROOT = Path(__file__).resolve().parents[2]
EINSUM = "examples.einsum_transformer"


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one thread is several times faster than two on a shared CI machine."""
    with one_thread():
        yield


@pytest.fixture(scope="module")
def observations():
    """handmade (equal to nn.Transformer) observed on every family's cases: weights, inputs, outputs."""
    target = load_target()
    with one_thread():
        return [observe(target, case) for family in family_grid() for case in family.cases]


def _with_steps(model):
    """``model`` with every attention and LayerNorm turned into the catalogue's step-by-step copies of them."""
    for m in list(model.modules()):
        if isinstance(m, handmade.ScaledDotProductAttention):
            become(m, Equation1)
        elif isinstance(m, handmade.LayerNorm):
            become(m, Formula)
    return model


def test_the_candidate_without_deviations_is_nn_transformer(observations):
    for o in observations:
        with torch.no_grad():
            plain = run_candidate(o, candidate(o))
            stepwise = run_candidate(o, _with_steps(candidate(o)))
        assert o.ratio(plain) <= 1.0, o.case.describe()
        assert o.ratio(stepwise) <= 1.0, f"the catalogue's step-by-step attention or LayerNorm: {o.case.describe()}"


def test_every_deviation_changes_the_output_on_some_case_it_claims_to_show_on(observations):
    for dev in CATALOGUE:
        changed = False
        showing = [o for o in observations if shows(dev, o.case)]
        if not showing:  # it needs inputs these whole-model families never keep apart: hunted at its own level
            assert dev.level != "transformer", f"{dev.key} shows on none of the family cases"
            continue
        for o in showing:
            try:
                with torch.no_grad():
                    changed = o.ratio(run_candidate(o, candidate(o, [dev]))) > 1.0
            except (ValueError, RuntimeError):  # the deviation crashes on these shapes: that changes it too
                changed = True
            if changed:
                break
        assert changed, f"{dev.key} changes nothing on the family cases"


def test_a_correct_implementation_written_differently_is_equivalent():
    d = diagnose(f"{EINSUM}:EinsumTransformer", reproduce=False)
    assert d.verdict == "equivalent", [(f.name, f.verdict, f.detail) for f in d.families if f.verdict != "equivalent"]
    assert not d.causes


@pytest.mark.slow
def test_the_course_example_is_explained_completely():
    d = diagnose("examples.course_transformer:adapter", reproduce=False)
    assert d.verdict == "divergent"
    assert {c.key for c in d.causes} == {
        "pre_norm", "layer_norm_unbiased_variance", "layer_norm_eps_outside_sqrt", "cross_uses_self_attention",
        "float_mask_as_bool_fill_1e9", "memory_padding_ignored", "memory_mask_ignored"}
    assert d.explanation.explained, d.explanation.unexplained
    assert "norm_first=True" in d.best_match
    verdicts = {f.name: f for f in d.families}
    assert verdicts["activation=gelu"].verdict == "not supported"
    assert "one mask for every head" in verdicts["per-head (N*nhead, L, S) masks"].detail
    isolated = next(loc for loc in d.localization if loc.mode == "isolated")
    assert isolated.first.name == "encoder.layers.0.norm1"
    assert {"decoder.layers.0.multihead_attn", "encoder.layers.0"} <= {r.name for r in isolated.diverging}


# bug -> (families tried, causes expected, the submodule isolated mode names first, or one it finds uncalled)
BUGS = {
    "no_scale": (("default",), {"scale_missing"}, "encoder.layers.0.self_attn"),
    "softmax_queries": (("default",), {"softmax_over_queries"}, "encoder.layers.0.self_attn"),
    "unbiased_ln": (("default",), {"layer_norm_unbiased_variance"}, "encoder.layers.0.norm1"),
    "eps_outside": (("default",), {"layer_norm_eps_outside_sqrt"}, "encoder.layers.0.norm1"),
    "pre_norm": (("default",), {"pre_norm"}, "encoder.layers.0"),
    "no_final_norm": (("default",), {"no_final_norms"}, "encoder.norm"),
    "kqv_order": (("default",), {"qkv_as_kqv"}, "encoder.layers.0.self_attn"),
    "heads_interleaved": (("default",), {"heads_interleaved"}, "encoder.layers.0.self_attn"),
    "shared_layers": (("default",), {"layers_shared_last"}, "encoder.layers.0.self_attn"),
    "shared_attention": (("default",), {"self_uses_cross_attention"}, "decoder.layers.0.self_attn"),
    "gelu_tanh": (("activation",), {"gelu_tanh_approximation"}, "encoder.layers.0.linear2"),
    "dropout_in_eval": (("dropout",), {"attention_dropout_in_eval"}, "encoder.layers.0.self_attn"),  # in attention
    "mask_polarity": (("bool attention", "-inf float attention"), {"bool_mask_inverted"}, "encoder.layers.0.self_attn"),
    "float_as_bool": (("additive",), {"float_mask_as_bool"}, "encoder.layers.0.self_attn"),
    "padding_ignored": (("bool key padding",), {"padding_ignored"}, "encoder.layers.0.self_attn"),
    "hint_drops_mask": (("causal",), {"hint_drops_mask"}, "decoder.layers.0.self_attn"),
}


@pytest.mark.slow
@pytest.mark.parametrize("bug", sorted(BUGS))
def test_a_classic_bug_is_named_with_its_submodule_and_cause(bug):
    families, causes, submodule = BUGS[bug]
    d = diagnose(f"{EINSUM}:bugs.{bug}", family_names=families, reproduce=False)
    assert d.verdict == "divergent"
    assert {c.key for c in d.causes} == causes
    assert d.explanation.explained, d.explanation.unexplained
    isolated = next(loc for loc in d.localization if loc.mode == "isolated")
    named = isolated.first.name if isolated.first is not None else None
    assert named == submodule or submodule in isolated.not_called, (named, isolated.not_called)


def test_without_submodules_the_cause_is_found_and_the_report_says_why_it_is_not_localized():
    d = diagnose("tests.targets.plugin_targets:no_scale_no_map", family_names=("default",), reproduce=False)
    assert {c.key for c in d.causes} == {"scale_missing"}
    assert not d.localization and "submodules(model)" in d.not_localized


def test_a_crash_is_reported_as_the_target_s_failure():
    d = diagnose("tests.targets.plugin_targets:raises_in_run", family_names=("default",), reproduce=False)
    assert d.verdict == "crashes"
    assert "raised RuntimeError: shape mismatch in my attention" in d.families[0].detail


@pytest.mark.slow
def test_the_reproducer_runs_with_torch_and_the_target_alone(tmp_path):
    target = load_target(f"{EINSUM}:bugs.no_scale")
    with one_thread():
        case = minimal_failing_case(target, examples=10)
    assert case is not None
    repro = write(target, case, tmp_path)
    check = ("import runpy, sys\n"
             "try:\n    runpy.run_path('repro.py', run_name='__main__')\n"
             "except SystemExit as exit:\n    code = exit.code\n"
             "harness = {'reference', 'equivalence_tests', 'hypothesis'}\n"
             "extra = sorted({m.split('.')[0] for m in sys.modules} & harness)\n"
             "assert not extra, extra\nsys.exit(code)\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run([sys.executable, "-c", check], cwd=repro.folder, env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "max abs err" in run.stdout and "tolerance" in run.stdout


def test_the_command_prints_json_for_machines(capsys):
    code = main([f"{EINSUM}:bugs.no_scale", "--json", "--no-reproducer", "--family", "default"])
    data = json.loads(capsys.readouterr().out)
    assert code == 1 and data["verdict"] == "divergent"
    assert [c["key"] for c in data["causes"]] == ["scale_missing"]
    assert data["first_diverging"]["isolated"]["name"] == "encoder.layers.0.self_attn"
    assert set(data["first_diverging"]["isolated"]["worst"]) == {"batch", "position", "feature"}


def test_the_command_rejects_a_bad_target_spec(capsys):
    assert main(["no_colon_here"]) == 2
    assert "MODULE:OBJECT" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("key", list(ENTRIES))
def test_diagnosing_a_zoo_entry_names_its_own_catalogue_key(key):
    """The real path on the families the entry fails first (as ``parity zoo`` diagnoses it): its key is named."""
    target, level = load_target(spec(key)), level_of(key)
    catch = first_catch(target, PANELS[level], level=level)
    assert catch is not None
    d = diagnose(target, out_dir=None, family_names=diagnosis_families(target, catch.case, level=level),
                 reproduce=False, level=level)
    named = [c.key for c in d.causes]
    assert named == [key], f"diagnosis of zoo entry {key} named {named} ({[c.probe for c in d.causes]})"
    # and the first place is the entry's: the first diverging submodule, or where its crash starts
    isolated = next((t for t in d.localization if t.mode == "isolated"), None)
    first = None if isolated is None else isolated.first
    places = ([] if first is None else [first.name]) + ([] if isolated is None else isolated.not_called)
    places += [c.place for c in d.crashes if c.place]
    assert any(re.search(s, p) for s in BY_KEY[key].sites for p in places), (key, places, d.not_localized)
