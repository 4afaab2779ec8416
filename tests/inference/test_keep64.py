"""Code that casts down inside its forward runs in float64 with its casts kept float64
(reference/inference/keep64.py): it is called, resolved and judged in float64 instead of crashing there or
being declined, and a bug in it still fails float64."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from reference import api
from reference.inference.copying import copy_model
from reference.inference.keep64 import KeepFloat64, kept


def test_a_cast_of_a_float64_tensor_is_kept_and_others_are_not() -> None:
    x = torch.randn(3, dtype=torch.float64)
    with KeepFloat64() as mode:
        assert x.float() is x and x.to(torch.float16).dtype == torch.float64
        assert x.type(torch.float32).dtype == torch.float64 and x.type_as(x.float()).dtype == torch.float64
        assert x.float().float().dtype == torch.float64
        assert torch.randn(2).half().dtype == torch.float16  # not float64: the cast stands
        assert x.to(torch.int64).dtype == torch.int64  # not floating: the cast stands
    assert mode.first == "Tensor.float to torch.float32 on a float64 tensor of shape (3,)"


class _Casts(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


def test_a_copy_runs_in_float64_and_says_what_it_kept() -> None:
    model = copy_model(_Casts(4, 2)).double()
    out = model(torch.randn(3, 4, dtype=torch.float64))
    assert out.dtype == torch.float64
    assert kept(model) == "Tensor.float to torch.float32 on a float64 tensor of shape (3, 4)"
    assert copy_model(_Casts(4, 2)).float()(torch.randn(3, 4)).dtype == torch.float32


@pytest.mark.slow
@pytest.mark.parametrize(("spec", "level"), [("Upcast", "encoder_layer"), ("Softmax32", "attention"),
                                             ("TypedFeedForward", "feed_forward")])
def test_the_correct_target_is_judged_in_float64(spec: str, level: str) -> None:
    report = api.check(f"tests.targets.cast_targets:{spec}", level=level, profile="ci", device="cpu",
                       pytest_args=("-k", "float64 or float32"))
    assert report.passed, report
    assert "casts down when run in float64" in str(report), report
    judged = [v for v in report.report["verdicts"] if v["dtype"] == "float64"]
    assert judged and all(v["passed"] for v in judged), report


@pytest.mark.slow
def test_the_bug_still_fails_float64() -> None:
    report = api.check("tests.targets.cast_targets:UpcastBug", level="encoder_layer", profile="ci", device="cpu",
                       pytest_args=("-k", "float64"))
    assert not report.passed and report.failures, report
