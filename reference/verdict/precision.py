"""What precision a candidate's arithmetic really has, for the engine's decision to decline a precision.

Code can compute below the dtype it is run in: a ``torch.FloatTensor`` constant held as a plain attribute,
which ``.to(float64)`` does not move, or an ``x.float()`` inside. Its float64 results then carry float32's
rounding, and float64 cannot judge it; judged as float32's, against PyTorch's own float32 error, they can.
Code can also overflow at a low precision where PyTorch's kernels, computing in float32 inside, do not (a
hand-written norm's eps of 1e-12, which float16 cannot hold). The engine (reference/verdict/engine.py) asks
these questions only of a comparison that failed, and reports each declined precision with its numbers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager
from typing import Any, Protocol

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from reference.targets.contract import NotSupportedError
from reference.verdict.tolerance import Verdict


class Rerun(Protocol):
    """The candidate run again in float64 on the case; its call inside ``watch`` when given."""

    def __call__(self, watch: AbstractContextManager[object] | None = None) -> Mapping[str, Tensor]: ...


class _LowerPrecision(TorchFunctionMode):
    """Records the first torch operation that reads or returns a floating tensor less precise than float64."""

    def __init__(self) -> None:
        super().__init__()
        self.first: tuple[torch.dtype, str] | None = None

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if self.first is None and getattr(func, "__name__", "") != "__get__":  # not an attribute read
            for t in tree_flatten((args, kwargs, out))[0]:
                if isinstance(t, Tensor) and t.is_floating_point() and t.dtype != torch.float64:
                    name = getattr(func, "__name__", str(func))
                    self.first = (t.dtype, f"{name} on a {_name(t.dtype)} tensor of shape {tuple(t.shape)}")
                    break
        return out


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def lower_precision_in(run: Rerun) -> tuple[torch.dtype, str] | None:
    """(dtype, the first operation) when ``run`` (the candidate in float64) computes with a floating tensor less
    precise than float64; None when it does not, or when it raises (the comparison that ran judges it)."""
    seen = _LowerPrecision()
    try:
        run(seen)
    except Exception:
        return None
    return seen.first


ROUNDING_SIZED = 1e-2  # relative: a float64 difference above this is no lower precision's rounding


def rounding_sized(verdicts: list[Verdict]) -> bool:
    """Whether every failed verdict is small enough to be a lower precision's rounding (float32's is ~1e-7
    relative, ~1e-4 in ill-conditioned cases): a larger difference fails float64 whatever precision the code
    computes in, and is not re-run to find out (most failures are O(1): a real bug)."""
    return all(v.max_rel <= ROUNDING_SIZED for v in verdicts if not v.passed)


def not_finite(parts: Iterable[Mapping[str, Tensor]]) -> set[str]:
    """The names of the floating tensors with a NaN or an inf among ``parts``."""
    return {k for part in parts for k, t in part.items()
            if t is not None and t.is_floating_point() and not bool(torch.isfinite(t).all())}


def declines_overflow(dtype: torch.dtype, broken: set[str], run: Rerun) -> None:
    """Raise NotSupportedError when the candidate has NaN or inf at ``dtype`` in ``broken`` (where the oracle is
    finite) and is finite run in float64 (``run``): its arithmetic overflows or underflows at that precision; it
    declines the precision, as code that raises only there does. Not finite in float64 either: judged as is."""
    if not broken:
        return
    try:
        out = run()
    except Exception:
        return
    if not_finite([out]):
        return
    raise NotSupportedError(f"the target's arithmetic overflows in {_name(dtype)}: NaN or inf in "
                            f"{', '.join(sorted(broken))} where the oracle, and the target run in float64, are finite")


def float64_declined(low: torch.dtype, where: str, verdicts: list[Verdict], as_low: list[Verdict]) -> str:
    """Why float64 declines a candidate that computes at ``low``: the first such operation, its float64 error
    and the same results judged as ``low``'s against PyTorch's own error there."""
    worst = max((v for v in verdicts if not v.passed), key=lambda v: v.ratio)
    ratio = max(v.ratio for v in as_low)
    return (f"float64 cannot judge the target: run in float64 it computes in {_name(low)} ({where}); its results "
            f"differ by {worst.max_abs:.3g} ({worst.what}, max rel err {worst.max_rel:.3g}), within {_name(low)}'s "
            f"tolerance (worst ratio {ratio:.3g} to PyTorch's own {_name(low)} error); its {_name(low)} rows judge it")
