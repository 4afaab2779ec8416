"""One target run on one case at one level, kept with everything a probe needs: the built-in, inputs, outputs.

Every kind of target goes through ``compare.prepare`` (the path ``parity check`` takes): handmade's own
components, a drop-in class, an adapter, or anything inferred (a class, a factory, an instance). The case
kept is the one the target is checked on (prepare adapts drawn cases to what the target fixes).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from reference.cases.case import Case
from reference.inference.prepare import fastpath, prepare
from reference.levels.registry import LEVELS, Level
from reference.targets.contract import NotSupportedError, Target, TargetError
from reference.verdict.engine import Candidate, outputs
from reference.verdict.tolerance import judge


@contextmanager
def one_thread() -> Iterator[None]:
    """Run on one CPU thread: these models are tiny, and threads only add overhead (and noise)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def as_case(case: Any) -> Case:
    """Any level's case seen as a whole-model ``Case`` (what the catalogue's ``shows_on`` reads)."""
    return case.as_case()


def config_of(case: Any) -> dict[str, object]:
    """The keyword arguments a catalogue deviation is planted with, for any level's case."""
    return case.plant_options()


def seed_of(case: Any) -> int:
    return int(case.seed)


def with_seed(case: Any, seed: int) -> Any:
    return case.replace(seed=seed)


@dataclass(kw_only=True)
class Observation:
    """The target and the built-in on one case: ``got`` is None when the target crashed (``error``)."""

    level: str
    case: Any
    builtin: nn.Module
    inputs: dict[str, Tensor]
    kwargs: dict[str, object]
    expected: dict[str, Tensor]
    got: dict[str, Tensor] | None
    error: str | None
    candidate: Candidate | None = field(default=None, repr=False)
    model: nn.Module | None = field(default=None, repr=False)

    @property
    def entry(self) -> Level:
        return LEVELS[self.level]

    @property
    def state(self) -> dict[str, Tensor]:
        return self.builtin.state_dict()

    def bound_of(self, name: str = "output") -> float:
        """The float64 tolerance for one output (tolerance.py's floor)."""
        return bound_for(self.expected[name])

    @property
    def bound(self) -> float:
        return self.bound_of("output")

    def ratio(self, other: Mapping[str, Tensor] | None) -> float:
        """max over outputs of |got - other| / bound; inf when shapes differ or NaN/inf appear on one side only."""
        if self.got is None or other is None:
            return math.inf
        worst = 0.0
        for name in self.expected:
            a, b = self.got.get(name), other.get(name)
            if a is None or b is None or a.shape != b.shape:
                return math.inf
            worst = max(worst, ratio_of(a, b) * self.bound / self.bound_of(name))
        return worst

    @property
    def max_abs(self) -> float:
        """max |got - expected| over outputs."""
        return self.ratio(self.expected) * self.bound


def max_err(a: Tensor, b: Tensor) -> float:
    """max |a - b|, as the engine's comparison measures it (tolerance.judge): both NaN counts as equal, NaN on
    one side as inf, other shapes as inf."""
    return judge("diagnosis", a, b).max_abs


def bound_for(expected: Tensor) -> float:
    """The tolerance the engine's comparison gives a float64 CPU output the built-in computed (tolerance.judge:
    the float64 floor, PyTorch's own error being 0 there)."""
    reference = expected.detach().to("cpu", torch.float64)
    return judge("diagnosis", reference, reference).bound


def ratio_of(a: Tensor, b: Tensor) -> float:
    """max |a - b| over the tolerance for ``b``."""
    return max_err(a, b) / bound_for(b)


def _cpu(out: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu", torch.float64) for k, v in out.items()}


def observe(target: Target, case: Any, device: torch.device | str = "cpu", level: str = "transformer") -> Observation:
    """Run the built-in and the target on ``case`` at ``level`` (NotSupportedError propagates; a crash is recorded)."""
    entry = LEVELS[level]
    cand: Candidate | None = None
    try:
        case, cand = prepare(target, level, case)
    except TargetError as exc:  # it cannot even be built or paired here: a crash of this case, not of diagnosis
        crash = str(exc)
    with fastpath(False), torch.no_grad():
        builtin = entry.seeded_builtin(case)
        hold = getattr(cand, "hold", None)  # built-in tensors the target has no counterpart for: fixed first
        if callable(hold):
            with contextlib.suppress(TargetError, NotSupportedError):  # loading it below says so again, recorded
                hold(builtin)
        inputs, kwargs = entry.inputs(case, torch.float64)
        expected = _cpu(outputs(entry.call(builtin, **inputs, **kwargs)))
        if cand is None:
            return Observation(level=level, case=case, builtin=builtin, inputs=inputs, kwargs=kwargs,
                               expected=expected, got=None, error=crash)
        got, model = None, None
        error: str | None = None
        try:
            model = cand.build(device, torch.float64)
            cand.load(model, builtin)
            model.eval()
            moved = {k: v.to(device) for k, v in inputs.items()}
            kw = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in kwargs.items()}
            got = _cpu(outputs(cand.call(model, entry.call, moved, kw)))
        except NotSupportedError:
            raise
        except TargetError as exc:
            error = str(exc)
        except Exception as exc:
            error = f"{cand.name} raised {type(exc).__name__}: {exc}"
    return Observation(level=level, case=case, builtin=builtin, inputs=inputs, kwargs=kwargs, expected=expected,
                       got=got, error=error, candidate=cand, model=model)
