"""A precision the candidate's arithmetic does not have is declined with its numbers, never failed or passed
silently (reference/verdict/precision.py through the engine): code that computes in float32 when run in float64
is judged as float32; code that overflows in float16 only declines float16; a real difference still fails."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from torch import Tensor, nn

import tests.targets.precision_targets as P
from reference import api
from reference.builtin.config import Config
from reference.cases.strategies import configs
from reference.targets.contract import NotSupportedError
from reference.verdict.engine import HandmadeTwin, compare_modules


class _Loaded(HandmadeTwin):
    """A candidate loaded by state dict (its names are the built-in's)."""

    def load(self, model: nn.Module, builtin: nn.Module) -> None:
        model.load_state_dict(builtin.state_dict())


class RoundTrip(nn.Linear):
    """A linear layer that reads its input through ``through``'s dtype, as code calling ``x.float()`` does."""

    def __init__(self, through: torch.dtype, extra: float = 0.0) -> None:
        super().__init__(5, 4)
        self.through, self.extra = through, extra

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.to(self.through).to(x.dtype)) + self.extra


class EpsNorm(nn.Module):
    """A hand-written layer norm with eps 1e-12, which float16 cannot hold: a constant row is 0 / 0."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.ones(width)), nn.Parameter(torch.zeros(width))

    def forward(self, x: Tensor) -> Tensor:
        centred = x - x.mean(-1, keepdim=True)
        return centred / (centred.pow(2).mean(-1, keepdim=True) + 1e-12).sqrt() * self.weight + self.bias


def _compare(builtin: nn.Module, model: nn.Module, x: Tensor, dtype: torch.dtype) -> list:
    return compare_modules(builtin, _Loaded(model, name="t"), lambda m, input: m(input), {"input": x.to(dtype)},
                           dtype=dtype, device="cpu", grads=True, seed=0)


def _linear() -> nn.Linear:
    return nn.Linear(5, 4).double()


def test_code_computing_in_float32_declines_float64_and_is_judged_in_float32() -> None:
    builtin, x = _linear(), torch.randn(3, 5, dtype=torch.float64)
    model = RoundTrip(torch.float32)
    with pytest.raises(NotSupportedError, match=r"run in float64 it computes in float32 \(to on a float32 tensor.*"
                                                r"within float32's tolerance .* its float32 rows judge it"):
        _compare(builtin, model, x, torch.float64)
    assert all(v.passed for v in _compare(builtin, model, x, torch.float32))


def test_a_real_difference_in_code_that_computes_in_float32_still_fails_float64() -> None:
    builtin, x = _linear(), torch.randn(3, 5, dtype=torch.float64)
    verdicts = _compare(builtin, RoundTrip(torch.float32, extra=1e-3), x, torch.float64)
    assert not all(v.passed for v in verdicts)


def test_code_that_stays_in_float64_is_judged_there_even_with_a_tiny_difference() -> None:
    builtin, x = _linear(), torch.randn(3, 5, dtype=torch.float64)
    verdicts = _compare(builtin, RoundTrip(torch.float64, extra=1e-8), x, torch.float64)
    assert not all(v.passed for v in verdicts)


def test_an_overflow_only_in_float16_declines_float16() -> None:
    builtin, x = nn.LayerNorm(1).double(), torch.randn(3, 1, dtype=torch.float64)
    with pytest.raises(NotSupportedError, match=r"overflows in float16: NaN or inf in .*output.* run in float64"):
        _compare(builtin, EpsNorm(1), x, torch.float16)
    assert all(v.passed for v in _compare(builtin, EpsNorm(1), x, torch.float64))


def test_a_nan_in_float64_too_is_judged_as_a_failure() -> None:
    class Broken(EpsNorm):
        def forward(self, x: Tensor) -> Tensor:
            return super().forward(x) * (x - x) / (x - x)

    builtin, x = nn.LayerNorm(1).double(), torch.randn(3, 1, dtype=torch.float64)
    assert not all(v.passed for v in _compare(builtin, Broken(1), x, torch.float16))


def test_a_two_width_constructor_gets_the_model_width_for_both() -> None:
    from reference.inference.construct import build
    from reference.levels.registry import LEVELS

    options = {**LEVELS["attention"].from_config(Config()).options(), "embed_dim": 12, "num_heads": 3}
    built = build(P.Lens, options, "attention")
    assert (built.plan.trials["d_in"], built.plan.trials["d_out"]) == (12, 12), built.plan.describe()
    assert built.model.wo.weight.shape == (12, 12)


@given(config=configs())
@settings(max_examples=50)
def test_configurations_never_normalize_over_one_feature(config: Config) -> None:
    assert config.d_model >= 2 and config.d_model % config.nhead == 0


@pytest.mark.slow
@pytest.mark.parametrize(("spec", "level"), [("Tempered", "attention"), ("Chatty", "encoder_layer"),
                                             ("Lens", "attention"), ("Relay", "decoder_layer")])
def test_the_correct_target_passes(spec: str, level: str) -> None:
    report = api.check(f"tests.targets.precision_targets:{spec}", level=level, profile="ci", device="cpu",
                       pytest_args=("-k", "float64 or float32"))
    assert report.passed, report


@pytest.mark.slow
def test_a_layers_extra_returned_tensor_is_reported_not_judged() -> None:
    report = api.check("tests.targets.precision_targets:Chatty", level="encoder_layer", profile="ci", device="cpu",
                       pytest_args=("-k", "float64"))
    assert report.passed, report
    assert "returns a second tensor (attention weights?), which the built-in does not: not judged" in str(report)


@pytest.mark.slow
def test_the_float32_temperature_declines_float64_with_its_reason() -> None:
    report = api.check("tests.targets.precision_targets:Tempered", level="attention", profile="ci", device="cpu",
                       pytest_args=("-k", "float64"))
    assert "computes in float32" in str(report), report


@pytest.mark.slow
def test_the_temperature_bug_fails_in_float32() -> None:
    report = api.check("tests.targets.precision_targets:TemperedBug", level="attention", profile="kill", device="cpu",
                       pytest_args=("-k", "float32"))
    assert not report.passed and report.failures, report


@pytest.mark.slow
def test_the_configuration_of_code_computing_in_float32_is_found() -> None:
    report = api.check("tests.targets.precision_targets:Widen", level="feed_forward", profile="ci", device="cpu",
                       pytest_args=("-k", "float32"))
    assert report.passed, report
    assert "equals nn.TransformerEncoderLayer._ff_block(activation='tanh_gelu')" in str(report), report


@pytest.mark.slow
def test_heads_are_measured_at_each_width_on_sequences_that_tell_them_apart() -> None:
    """Lens's head count is a parameter no name says (``hops``), so it is measured at each width the suite
    draws. A width first met on a case with one key (where every count gives the same output) kept the drawn
    count, and later cases at that width failed in whichever dtype met it second."""
    report = api.check("tests.targets.precision_targets:Lens", level="attention", profile="ci", device="cpu")
    assert report.passed, report


@pytest.mark.slow
def test_a_precision_the_target_never_runs_in_stops_drawing_after_a_streak() -> None:
    """TemperedVector's float32 temperature promotes bfloat16 scores to float32, and the next product raises:
    every bfloat16 case is declined, and the property stops after DECLINE_STREAK of them instead of ~460."""
    from reference.verdict.assertions import DECLINE_STREAK

    report = api.check("tests.targets.precision_targets:TemperedVector", level="attention", profile="ci",
                       device="cpu", pytest_args=("-k", "bfloat16"))
    declined = [r for r in report.report["not_supported"] if r["dtype"] == "bfloat16"]
    assert len(declined) == DECLINE_STREAK and all("raises in bfloat16" in r["reason"] for r in declined), report
    assert not report.report["verdicts"] and not report.failures, report
