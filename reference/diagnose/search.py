"""Check's own search inside diagnosis, so that ``parity diagnose`` never calls EQUIVALENT what ``parity check`` fails.

The families draw two cases each; a bug that shows only on some sizes (the target and source lengths equal, a
length of one) can miss them all. So when every family is equivalent, diagnosis searches the way check does:
the level's own strategy (``LEVELS[level].cases()``, what ``parity check`` draws from) through hypothesis,
derandomized, with check's ci budget (``CI_EXAMPLES`` times the level's weight), after the level's pinned edge
cases (check always runs them), every case judged by check's own judgement (``verdict.assertions.check``:
prepared as check prepares it, a declined configuration rejected, outputs and gradients against the
tolerance), in float64, where diagnosis looks. Not in the lower dtypes: hypothesis' draws here are not
check's own, and there a resolution that depends on which cases came first (the per-shape cache) could fail
a case check passed, a false failure, the worst outcome; a float64 failure is a difference to float64
rounding whatever came before. The first failing case becomes a family of its own, diagnosed like the others.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from hypothesis import HealthCheck, Phase, find, settings
from hypothesis.errors import NoSuchExample, Unsatisfiable, UnsatisfiedAssumption

from reference.diagnose.families import Family
from reference.inference.prepare import prepare
from reference.levels.registry import LEVELS
from reference.verdict.assertions import CI_EXAMPLES, check, recording


@dataclass(frozen=True)
class Found:
    """A case check's search fails, the dtype it fails in, and check's own sentence about it."""

    case: Any
    dtype: torch.dtype
    message: str


def _failure(level: str, target: Any, device: str) -> Callable[[Any, torch.dtype, bool], str | None]:
    entry = LEVELS[level]

    def fails(case: Any, dtype: torch.dtype, drawn: bool) -> str | None:
        """Check's sentence when check fails ``case`` in ``dtype``; None when it passes. A declined case is
        rejected as check rejects it when hypothesis drew it (``drawn``), else it passes."""
        try:
            with recording(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the target's own warnings, once per example
                check(entry, case, lambda c: prepare(target, level, c), device, dtype)
        except AssertionError as exc:
            return str(exc).splitlines()[0]
        except UnsatisfiedAssumption:
            if drawn:
                raise
        return None

    return fails


def search(target: Any, level: str, device: torch.device | str = "cpu", budget: int | None = None) -> Found | None:
    """The first case check fails in float64, where diagnosis looks: the level's pinned edge cases (check always
    runs them), then hypothesis' draws from the level's strategy."""
    entry = LEVELS[level]
    fails = _failure(level, target, str(device))
    for case in dict.fromkeys(case for case, _ in entry.pinned):
        message = fails(case, torch.float64, False)
        if message is not None:
            return Found(case, torch.float64, message)
    budget = budget if budget is not None else max(1, round(CI_EXAMPLES * entry.examples))
    config = settings(max_examples=budget, derandomize=True, database=None, deadline=None, phases=[Phase.generate],
                      suppress_health_check=list(HealthCheck))
    messages: list[str] = []

    def failing(case: Any) -> bool:
        message = fails(case, torch.float64, True)
        if message is not None:
            messages.append(message)
        return message is not None

    try:
        case = find(entry.cases(), failing, settings=config)
    except (NoSuchExample, Unsatisfiable):
        return None
    return Found(case, torch.float64, messages[-1] if messages else "")


def family_of(found: Found) -> Family:
    """The failing case check's search found, as a family of its own (one case: its sizes are the point)."""
    name = f"check's search: {short(found.case)}"
    return Family(name=name, group="found by check's strategy", cases=[found.case])


def short(case: Any) -> str:
    """A case in a few words: its sizes and what it sets (the full description is in the table's case line)."""
    text = str(case.describe())
    return text.split(") ", 1)[-1] if ") " in text else text
