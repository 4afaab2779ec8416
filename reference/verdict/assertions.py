"""The one assertion helper, ``assert_parity``, and the checks the suite makes through it.

``assert_parity(verdicts, context)`` records every verdict for the parity report (``parity check``'s table)
and fails with one sentence naming the component, dtype, device and case, and the numbers of the worst
tensor, followed by one line per failing tensor. ``check`` runs one level's comparison for one case through
the engine and asserts on it; a configuration the target declines is recorded and rejected, never failed.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, reject, settings
from hypothesis.errors import Unsatisfiable

from reference.levels.registry import Level
from reference.targets.contract import NotSupportedError, TargetError
from reference.verdict.engine import Candidate, compare_modules, compare_pair
from reference.verdict.tolerance import Verdict

__all__ = ["Context", "assert_parity", "check", "compare_pair", "examples", "recording"]

CI_EXAMPLES = 20  # the ci profile's max_examples (reference/pytest_plugin.py): check's budget, diagnosis' search too
# declined draws after which a property stops drawing in a dtype other than float64, when fewer than one in
# DECLINE_RATIO of its draws was judged and none failed (hypothesis' own limit is ~500 rejections: a target that
# raises in bfloat16 on every case, say a float32 scale tensor its bfloat16 scores are promoted by, or overflows
# in float16 on every masked case, spent most of its check declining them one by one); float64 draws on, so a
# target whose supported cases are rare is never failed as supporting none
DECLINE_STREAK = 50
DECLINE_RATIO = 10


@dataclass
class Declines:
    """One property run's declined and judged draws (``skip_when_nothing_supported`` starts it)."""

    count: int = 0
    judged: int = 0
    failed: bool = False  # once a case failed, the run goes on: hypothesis shrinks it, and a stop would hide it

    def declined(self, dtype: torch.dtype, reason: str) -> None:
        if self.failed or dtype == torch.float64:  # float64 draws on: a run with nothing judged there fails
            return
        self.count += 1
        if self.count >= max(DECLINE_STREAK, DECLINE_RATIO * self.judged):
            kind = str(dtype).replace("torch.", "")
            if not self.judged:
                pytest.skip(f"the target supported none of the first {self.count} configurations drawn in {kind}, "
                            f"so no more were drawn; the last: {reason}")
            pytest.skip(f"{self.count} configurations drawn in {kind} were declined for {self.judged} judged, so "
                        f"no more were drawn (the judged ones passed); the last declined: {reason}")


_RUNS: dict[tuple[str, object, object], Declines] = {}  # (target, device, dtype) -> the property run's declines


def declines_of(target: object, device: object, dtype: object) -> Declines | None:
    """The declines of the property run in progress for ``target`` on ``device`` in ``dtype``, if one is."""
    return _RUNS.get((repr(target), device, dtype))

# The records of the running test (set per test by the plugin's autouse fixture; None outside a test).
_RECORDS: ContextVar[list[dict] | None] = ContextVar("parity_records", default=None)


@contextmanager
def recording() -> Iterator[list[dict]]:
    """Collect the verdict and not-supported records of one test into a fresh list."""
    records: list[dict] = []
    token = _RECORDS.set(records)
    try:
        yield records
    finally:
        _RECORDS.reset(token)


@dataclass(frozen=True)
class Context:
    """What is being compared, for the failure message and the report."""

    component: str
    dtype: torch.dtype
    device: str
    description: str = ""

    def __str__(self) -> str:
        dtype = str(self.dtype).replace("torch.", "")
        return f"{self.component} [{dtype}, {self.device}] {self.description}".rstrip()


def _finite(x: float) -> float | str:
    return x if math.isfinite(x) else str(x)


def _record(context: Context, verdicts: list[Verdict]) -> None:
    records = _RECORDS.get()
    if records is None or not verdicts:
        return
    worst = max(verdicts, key=lambda v: (not v.passed, v.ratio))
    records.append({
        "kind": "verdict", "component": context.component, "dtype": str(context.dtype).replace("torch.", ""),
        "device": context.device, "max_abs": _finite(max(v.max_abs for v in verdicts)),
        "ratio": _finite(max(v.ratio for v in verdicts)), "passed": all(v.passed for v in verdicts),
        "compared": len(verdicts), "worst": worst.what,
    })


def _record_crash(context: Context, reason: str) -> None:
    """A failed example with no verdicts (the target raised, or returned nothing readable): counted as failed."""
    records = _RECORDS.get()
    if records is not None:
        records.append({"kind": "verdict", "component": context.component,
                        "dtype": str(context.dtype).replace("torch.", ""), "device": context.device,
                        "max_abs": 0.0, "ratio": 0.0, "passed": False, "compared": 0,
                        "worst": f"crashed: {reason}"})


def record_not_supported(context: Context, reason: str) -> None:
    """Note that the target declined this configuration: reported, never dropped silently."""
    records = _RECORDS.get()
    if records is not None:
        records.append({
            "kind": "not_supported", "component": context.component,
            "dtype": str(context.dtype).replace("torch.", ""), "device": context.device,
            "config": context.description, "reason": reason,
        })


def record_note(text: str) -> None:
    """Note what the harness assumed or found about the target (its configuration, its calling convention)."""
    records = _RECORDS.get()
    if records is not None:
        records.append({"kind": "note", "text": text})


def assert_parity(verdicts: list[Verdict], context: Context) -> None:
    """Record ``verdicts`` and fail, in one sentence with the numbers, unless every one passed."""
    __tracebackhide__ = True
    _record(context, verdicts)
    if not verdicts:
        raise AssertionError(f"{context}: nothing was compared")
    failed = [v for v in verdicts if not v.passed]
    if failed:
        w = max(failed, key=lambda v: v.ratio)
        sentence = (
            f"{context.component} [{str(context.dtype).replace('torch.', '')}, {context.device}]: {len(failed)} of "
            f"{len(verdicts)} tensors differ from the float64 oracle beyond the tolerance; worst {w.what}: max abs "
            f"err {w.max_abs:.3g} > bound {w.bound:.3g} (PyTorch's own err {w.torch_err:.3g}, ratio {w.ratio:.3g}), "
            f"candidate {w.candidate_value:.6g} vs oracle {w.oracle_value:.6g} at {w.worst_index}"
            f"{' (' + w.note + ')' if w.note else ''}; case: {context.description}"
        )
        raise AssertionError("\n".join([sentence, *(f"  {v}" for v in failed)]))


def low_precision_grads_comparable(dtype: torch.dtype, smooth: bool) -> bool:
    """Whether gradients are judged at ``dtype``: always in float64/float32; in bf16/fp16 only if smooth.

    relu's derivative jumps at 0: at 8 to 11 significant bits a pre-activation near 0 lands on different
    sides in the candidate and the built-in, and the parameter gradients then differ by O(1) (measured:
    ratios up to ~540 to the built-in's own error with relu, <= ~5.4 with gelu; see reference/verdict/tolerance.py).
    """
    return dtype in (torch.float64, torch.float32) or smooth


def check(level: Level, case: Any, prepare: Callable[[Any], tuple[Any, Candidate]], device: str, dtype: torch.dtype,
          context: Context | None = None, declines: Declines | None = None) -> list[Verdict]:
    """Judge a candidate against ``level``'s built-in on ``case``; a declined configuration is rejected.

    ``prepare(case)`` returns the case as the target is checked on it (adapted to what it takes) and the
    engine's candidate; it raises NotSupportedError to decline the configuration. ``declines``: the property
    run's, which stops the run (a skip, with the reason) after ``DECLINE_STREAK`` declines and no support.
    """
    __tracebackhide__ = True
    try:
        case, made = prepare(case)
        context = context or Context(level.name, dtype, device, case.describe())
        grads = low_precision_grads_comparable(dtype, level.smooth(case))
        inputs, kwargs = level.inputs(case, dtype)
        verdicts = compare_modules(level.seeded_builtin(case), made, level.call, inputs, kwargs, dtype=dtype,
                                   device=device, grads=grads, seed=case.seed)
    except NotSupportedError as exc:
        record_not_supported(context or Context(level.name, dtype, device, case.describe()), str(exc))
        if declines is not None:
            declines.declined(dtype, str(exc))
        reject()
    except TargetError as exc:
        where = context or Context(level.name, dtype, device, case.describe())
        _record_crash(where, str(exc))
        raise AssertionError(f"{where}: the target failed: {exc}") from exc
    try:
        assert_parity(verdicts, context)
    except AssertionError:
        if declines is not None:
            declines.failed = True
        raise
    if declines is not None:
        declines.judged += 1
    return verdicts


def examples(weight: float, *, suppress: tuple[HealthCheck, ...] = ()) -> settings:
    """Hypothesis settings running ``weight`` times the loaded profile's max_examples (at least 1)."""
    loaded = settings()  # the profile in force
    return settings(
        max_examples=max(1, round(weight * loaded.max_examples)),
        suppress_health_check=[*loaded.suppress_health_check, *suppress],
    )


def skip_unless_dtype_runs(dtype: torch.dtype, device: str) -> None:
    """Skip, with the reason, where ``dtype`` has no kernels on ``device`` (bfloat16 on an older GPU)."""
    if device == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        pytest.skip(f"bfloat16 is not supported on {torch.cuda.get_device_name()}")


def skip_when_nothing_supported(test: Callable) -> Callable:
    """Wrap a @given test: if the target declines every drawn configuration, skip it (the run fails overall).
    The run's ``Declines`` (``declines_of`` its target, device and dtype) stop it after ``DECLINE_STREAK``."""

    @functools.wraps(test)
    def wrapper(*args: object, **kwargs: object) -> None:
        key = (repr(kwargs.get("target")), kwargs.get("device"), kwargs.get("dtype"))
        _RUNS[key] = Declines()
        try:
            test(*args, **kwargs)
        except Unsatisfiable as exc:
            pytest.skip(f"the target supports none of the drawn configurations: {exc}")
        finally:
            _RUNS.pop(key, None)

    return wrapper
