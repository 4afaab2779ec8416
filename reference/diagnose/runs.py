"""One target run on one case, kept with everything a probe needs: weights, inputs, both outputs."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from reference.build import build_torch, randomize_
from reference.cases import Case
from reference.compare import fastpath, forward_kwargs
from reference.targets import Target, TargetError
from reference.tolerance import floor


@contextmanager
def one_thread() -> Iterator[None]:
    """Run on one CPU thread: these models are tiny, and threads only add overhead (and noise)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def reference_model(case: Case) -> nn.Module:
    """nn.Transformer for ``case`` with the weights compare.whole_model draws (float64, CPU, eval)."""
    model = build_torch("transformer", case.config, "cpu", torch.float64)
    return randomize_(model, torch.Generator().manual_seed(case.seed), case.weight_scale)


def build_loaded(target: Target, case: Case, reference: nn.Module, device: torch.device | str) -> nn.Module:
    """The target's model for ``case``, loaded with ``reference``'s weights, in eval mode, float64.

    NotSupportedError when the target declines the configuration; TargetError when it fails to load.
    """
    model = target.build(case.config.kwargs(), device, torch.float64)
    try:
        target.load_reference(model, reference)
    except Exception as exc:
        raise TargetError(f"{target.spec} failed to load the weights: {type(exc).__name__}: {exc}") from exc
    return model.eval()


def run_target(target: Target, model: nn.Module, src: Tensor, tgt: Tensor, kwargs: dict[str, object],
               device: torch.device | str) -> Tensor:
    """The target's output on the CPU; TargetError (with the exception's message) when it raises."""
    kw = forward_kwargs(kwargs, device)
    try:
        with torch.no_grad():
            return target.run(model, src.to(device), tgt.to(device), **kw).detach().to("cpu", torch.float64)
    except TargetError:
        raise
    except Exception as exc:
        raise TargetError(f"{target.spec} raised {type(exc).__name__}: {exc}") from exc


@dataclass
class Observation:
    """The target and nn.Transformer on one case: ``got`` is None when the target crashed (``error``)."""

    case: Case
    state: dict[str, Tensor]
    src: Tensor
    tgt: Tensor
    kwargs: dict[str, object]
    expected: Tensor
    got: Tensor | None
    error: str | None

    @property
    def bound(self) -> float:
        """The float64 tolerance for this output (tolerance.py's floor)."""
        return floor(torch.float64, float(self.expected.abs().max()) if self.expected.numel() else 0.0)

    def ratio(self, other: Tensor) -> float:
        """max |got - other| / bound; inf when shapes differ or NaN/inf appear where ``other`` is finite."""
        if self.got is None or self.got.shape != other.shape:
            return math.inf
        diff = (self.got - other).abs()
        diff = torch.where(self.got.isnan() & other.isnan(), torch.zeros_like(diff), diff)
        worst = float(diff.nan_to_num(nan=math.inf).max()) if diff.numel() else 0.0
        return worst / self.bound

    @property
    def max_abs(self) -> float:
        """max |got - expected|."""
        return self.ratio(self.expected) * self.bound


def observe(target: Target, case: Case, device: torch.device | str = "cpu") -> Observation:
    """Run nn.Transformer and the target on ``case`` (NotSupportedError propagates; a crash is recorded)."""
    with fastpath(False):
        reference = reference_model(case)
        src, tgt, kwargs = case.tensors(torch.float64)
        kwargs = forward_kwargs(kwargs, "cpu")
        with torch.no_grad():
            expected = reference(src, tgt, **kwargs)
        got, error = None, None
        try:
            got = run_target(target, build_loaded(target, case, reference, device), src, tgt, kwargs, device)
        except TargetError as exc:
            error = str(exc)
    return Observation(case, reference.state_dict(), src, tgt, kwargs, expected, got, error)
