"""The plug-in contract: drop-in classes and adapters load, run and are judged; misfits fail clearly.

Targets that break one rule each live in plugin_targets.py. These tests call the contract directly
(reference.targets.contract, reference.inference.prepare); one runs the suite itself with ``--impl`` in a subprocess.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from reference.builtin.config import Config
from reference.cases.case import Case
from reference.diagnose.runs import one_thread
from reference.inference.prepare import whole_model
from reference.targets.contract import NotSupportedError, TargetError, load_target

ROOT = Path(__file__).resolve().parents[2]
CASE = Case(Config(num_encoder_layers=2, num_decoder_layers=2), src_mask="causal_bool",
            memory_key_padding_mask="bool", seed=3)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one thread is several times faster than two on a shared CI machine."""
    with one_thread():
        yield


@pytest.mark.parametrize("spec", [
    "examples.einsum_transformer:EinsumTransformer",  # a drop-in class
    "examples.fixed_transformer:adapter",  # an adapter object
    "reference.targets.contract:handmade",  # the default target
])
def test_correct_targets_of_either_kind_match_torch(spec):
    target = load_target(spec)
    verdicts = whole_model(target, CASE, grads=True)
    assert all(v.passed for v in verdicts), [str(v) for v in verdicts if not v.passed]


def test_a_drop_in_class_is_judged_on_its_parameter_gradients_too():
    verdicts = whole_model(load_target("examples.einsum_transformer:EinsumTransformer"), CASE, grads=True)
    assert any(v.what.startswith("grad encoder.layers.1.self_attn.in_proj_weight") for v in verdicts)


@pytest.mark.parametrize(("spec", "config"), [
    ("tests.targets.plugin_targets:declines_everything", {}),  # supports() is False
    ("tests.targets.plugin_targets:only_pre_norm", {}),  # build() raises NotImplementedError
    ("examples.course_transformer:adapter", {"activation": "gelu"}),
])
def test_declined_configurations_are_not_supported_not_failures(spec, config):
    case = CASE.replace(config=Config(**{**CASE.config.kwargs(), **config}))
    with pytest.raises(NotSupportedError, match="does not support"):
        whole_model(load_target(spec), case)


def test_a_target_that_declines_only_some_configurations_is_judged_on_the_rest():
    case = CASE.replace(config=Config(**{**CASE.config.kwargs(), "norm_first": True}))
    assert whole_model(load_target("tests.targets.plugin_targets:only_pre_norm"), case)[0].passed


@pytest.mark.parametrize(("spec", "message"), [
    ("tests.targets.plugin_targets:raises_in_run", "raised RuntimeError: shape mismatch in my attention"),
    ("tests.targets.plugin_targets:raises_in_build", "failed to build .*KeyError"),
    ("tests.targets.plugin_targets:returns_tuple", "returned a tuple, but should return a Tensor"),
])
def test_a_crashing_target_is_a_target_error_naming_it(spec, message):
    with pytest.raises(TargetError, match=message) as info:
        whole_model(load_target(spec), CASE)
    assert spec in str(info.value)


def test_nan_where_torch_is_finite_fails_with_a_clear_note():
    verdict = whole_model(load_target("tests.targets.plugin_targets:returns_nan"), CASE)[0]
    assert not verdict.passed and math.isinf(verdict.max_abs)
    assert "NaN/inf where the oracle is finite" in verdict.note


@pytest.mark.parametrize(("spec", "message"), [
    ("examples.einsum_transformer", "MODULE:OBJECT"),
    ("no_such_module_xyz:Thing", "cannot import target"),
    ("examples.einsum_transformer:NoSuchClass", "cannot import target"),
    ("tests.targets.plugin_targets:not_an_adapter", "lacks load_reference, run"),
])
def test_a_bad_target_spec_is_a_clear_error(spec, message):
    with pytest.raises(ValueError, match=message):
        load_target(spec)


def _pytest(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "pytest", *args, "-p", "no:cacheprovider", "-q"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_a_suite_run_where_the_target_supports_nothing_fails():
    run = _pytest("equivalence_tests/test_components.py", "-k", "transformer_matches_torch and float64",
                  "--impl", "tests.targets.plugin_targets:declines_everything", "--hypothesis-profile=ci")
    assert run.returncode != 0, run.stdout[-2000:]
    assert "supported none" in run.stdout or "not supported" in run.stdout, run.stdout[-2000:]


def test_a_float64_case_on_the_cpu_is_what_the_contract_promises():
    model = load_target("examples.fixed_transformer:adapter").build(CASE.config.kwargs(), "cpu", torch.float64)
    assert all(p.dtype == torch.float64 for p in model.parameters())
