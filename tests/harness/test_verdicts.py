"""The comparison code reports what it measured: verdict fields, and PyTorch's own error for every tensor.

Written to kill mutants of reference/verdict/tolerance.py and reference/inference/prepare.py that the equivalence
properties cannot see (handmade is correct, so a verdict with a wrong label or a lost ``torch_own`` still passes there).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from reference.builtin.config import Config
from reference.cases.case import Case
from reference.inference.prepare import whole_model
from reference.targets.contract import load_target
from reference.verdict.tolerance import FLOAT64_FLOOR, FLOOR_ULPS, K, floor, jittered, judge


def test_judge_reports_a_shape_mismatch_as_a_failure_naming_the_tensor():
    v = judge("output", torch.zeros(2, 3), torch.zeros(3, 2, dtype=torch.float64))
    assert (v.what, v.passed, v.max_abs, v.ratio, v.worst_index) == ("output", False, math.inf, math.inf, ())
    assert "shape (2, 3) but should be (3, 2)" in v.note and v.bound == 0.0 and v.torch_err == 0.0


def test_judge_passes_empty_tensors_with_the_floor_as_bound():
    v = judge("grad x", torch.zeros(0), torch.zeros(0, dtype=torch.float64), torch.zeros(0))
    assert (v.passed, v.max_abs, v.max_rel, v.ratio, v.torch_err, v.worst_index) == (True, 0.0, 0.0, 0.0, 0.0, ())
    assert v.bound == floor(torch.float32, 0.0)


def test_judge_reports_the_worst_element_its_values_and_the_relative_error():
    oracle = torch.tensor([[1.0, -4.0], [2.0, 0.5]], dtype=torch.float64)
    candidate = (oracle + torch.tensor([[0.0, 0.0], [0.0, 0.25]], dtype=torch.float64)).float()
    v = judge("output", candidate, oracle, oracle.float())
    assert (v.what, v.dtype, v.passed, v.worst_index) == ("output", "float32", False, (1, 1))
    assert (v.candidate_value, v.oracle_value, v.max_abs, v.max_rel) == (0.75, 0.5, 0.25, 0.5)
    assert v.torch_err == 0.0 and v.ratio == 0.25 / v.bound


def test_whole_model_measures_pytorchs_own_error_for_every_tensor_in_float32():
    case = Case(Config(d_model=8, nhead=2, activation="gelu"), batch=2, src_len=4, tgt_len=3, src_mask="additive",
                memory_key_padding_mask="float_inf", seed=11)
    verdicts = whole_model(load_target("reference.targets.contract:handmade"), case, "cpu", torch.float32, grads=True)
    names = [v.what for v in verdicts]
    assert names[:3] == ["output", "grad src", "grad tgt"] and len(names) > 3 + 10
    assert all(v.dtype == "float32" for v in verdicts)
    no_own = [v.what for v in verdicts if not v.torch_err > 0]
    assert not no_own, f"PyTorch's own float32 error was not measured for {no_own}"


def test_jittered_moves_each_parameter_by_at_most_one_ulp_and_leaves_the_original_alone():
    model = torch.nn.Linear(16, 16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.weight.grad = torch.ones_like(model.weight)
    twin = jittered(model, seed=3)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert twin.weight.grad is None
    for name, p in twin.named_parameters():
        orig = before[name]
        steps = (p.detach() - orig).abs() / (orig.abs() * torch.finfo(torch.float32).eps)
        assert float(steps.max()) <= 2.0 + 1e-6, name  # one ulp is eps to 2 eps relative to the value
        assert 0 < int((p != orig).sum()) < p.numel(), name  # some moved, some did not


def test_judge_takes_the_largest_of_several_own_errors():
    oracle = torch.linspace(-1, 1, 50, dtype=torch.float64)
    small, large = oracle.float() + 1e-7, oracle.float() + 1e-5
    v = judge("output", oracle.float() + 1e-4, oracle, (small, large))
    assert math.isclose(v.torch_err, float((large.double() - oracle).abs().max()))
    assert math.isclose(v.bound, K * v.torch_err + floor(torch.float32, 1.0))


def test_the_floor_is_ulps_of_the_dtype_times_the_oracles_scale_but_at_least_one():
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        unit = FLOOR_ULPS[dtype] * torch.finfo(dtype).eps
        assert floor(dtype, 0.5) == unit and floor(dtype, 1.0) == unit and floor(dtype, 3.0) == 3.0 * unit
    assert floor(torch.float64, 0.25) == FLOAT64_FLOOR and floor(torch.float64, 4.0) == 4.0 * FLOAT64_FLOOR


def test_whole_model_compares_with_the_slow_path_even_without_gradients():
    """Outputs only (no autograd): the built-in's fast path could run, and would zero the padded rows."""
    case = Case(Config(d_model=8, nhead=2, batch_first=True), batch=2, src_len=5, tgt_len=3,
                src_key_padding_mask="bool", seed=12)
    verdicts = whole_model(load_target("reference.targets.contract:handmade"), case, "cpu", torch.float64, grads=False)
    assert [v.what for v in verdicts] == ["output"] and verdicts[0].passed, verdicts[0]


def test_a_parameter_without_gradient_is_judged_as_missing_not_skipped():
    """A drop-in using one attention for self- and cross-attention leaves multihead_attn without gradient."""
    case = Case(Config(d_model=8, nhead=2, num_encoder_layers=1, num_decoder_layers=1), batch=2, src_len=4,
                tgt_len=3, seed=13)
    target = load_target("examples.einsum_transformer:bugs.shared_attention")
    verdicts = {v.what: v for v in whole_model(target, case, "cpu", torch.float64, grads=True)}
    missing = verdicts["grad decoder.layers.0.multihead_attn.in_proj_weight"]
    assert not missing.passed and missing.max_abs == math.inf and "NaN" in missing.note


def test_the_ratio_is_to_pytorchs_own_error_or_else_to_the_bound():
    oracle = torch.tensor([0.0, 3.0], dtype=torch.float64)
    own = torch.tensor([0.5, 3.0], dtype=torch.float64).float()  # PyTorch's own error: 0.5
    v = judge("output", torch.tensor([1.0, 3.0]), oracle, own)
    assert (v.max_abs, v.torch_err, v.ratio) == (1.0, 0.5, 2.0)
    exact = judge("output", oracle.clone(), oracle)
    assert (exact.max_abs, exact.ratio) == (0.0, 0.0)
    off_by_one = judge("output", oracle + 1.0, oracle)  # float64: no own error, so the ratio is to the bound
    assert off_by_one.max_abs == 1.0 and off_by_one.ratio == 1.0 / off_by_one.bound


def test_a_shape_mismatch_verdict_prints_the_two_shapes():
    text = str(judge("output", torch.zeros(2, 3), torch.zeros(3, 2, dtype=torch.float64)))
    assert text.startswith("[FAIL] output (float32): ") and "max abs err inf" in text, text
    assert text.endswith("candidate 0 vs oracle 0 | shape (2, 3) but should be (3, 2)"), text


def test_an_output_the_builtin_does_not_return_is_judged_a_failure():
    """A candidate returning more than the built-in (here attention weights nobody asked for) fails on it."""
    from reference.verdict.engine import HandmadeTwin, compare_modules

    class ExtraOutput(HandmadeTwin):
        def call(self, model, call, inputs, kwargs):
            return {"output": call(model, **inputs, **kwargs), "weights": inputs["input"].sum(-1)}

    builtin = torch.nn.Linear(3, 2).double()
    inputs = {"input": torch.randn(4, 3, dtype=torch.float64)}
    verdicts = compare_modules(builtin, ExtraOutput(copy.deepcopy(builtin)), lambda m, input: m(input), inputs,
                               dtype=torch.float64, device="cpu", grads=False, seed=0)
    by_name = {v.what: v for v in verdicts}
    assert sorted(by_name) == ["output", "weights (the built-in returns none)"], sorted(by_name)
    assert by_name["output"].passed and not by_name["weights (the built-in returns none)"].passed


def test_a_candidates_crash_is_a_target_error_naming_the_candidate_and_the_exception():
    from reference.targets.contract import TargetError
    from reference.verdict.engine import HandmadeTwin, compare_modules

    class Crashing(HandmadeTwin):
        def call(self, model, call, inputs, kwargs):
            raise RuntimeError("boom")

    builtin = torch.nn.Linear(3, 2).double()
    inputs = {"input": torch.randn(4, 3, dtype=torch.float64)}
    with pytest.raises(TargetError, match=r"^crashy raised RuntimeError: boom$"):
        compare_modules(builtin, Crashing(copy.deepcopy(builtin), name="crashy"), lambda m, input: m(input), inputs,
                        dtype=torch.float64, device="cpu", grads=False, seed=0)


def test_an_empty_tensors_verdict_prints():
    text = str(judge("grad x", torch.zeros(0), torch.zeros(0, dtype=torch.float64), torch.zeros(0)))
    assert text.startswith("[ok] grad x (") and text.endswith("worst element (): candidate 0 vs oracle 0"), text


def test_a_nan_where_the_oracle_is_finite_fails_with_its_note():
    v = judge("output", torch.tensor([float("nan"), 1.0]), torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert (v.passed, v.max_abs, v.worst_index) == (False, math.inf, (0,))
    assert v.note == "candidate has NaN/inf where the oracle is finite"
