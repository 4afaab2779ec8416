"""The tolerance policy, in one place.

The oracle is the built-in model in float64 on the CPU with its fast path off. A candidate at dtype d on
device v passes when

    max |candidate - oracle|  <=  K * max |torch_d,v - oracle|  +  FLOOR_ULPS[d] * eps(d) * max(1, max |oracle|)

where torch_d,v is the built-in's own output at the same dtype and device (the flash-attention rule: be no
worse than PyTorch itself by more than a small factor). PyTorch's own error is measured twice, on the
weights as rounded to d and on a jittered rounding of them (``jittered``: each parameter moved up, down or
not by about one ulp), and the larger counts. For a float64 candidate on the CPU, PyTorch's own error is its
error on the jittered float64 weights, and ``FLOAT64_FLOOR`` is the floor.

Why two roundings, the calibration record and the runs that chose ``K``, ``FLOOR_ULPS`` and
``FLOAT64_FLOOR``: docs/tolerance.md.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

K = 16.0
# The floor in units of eps(dtype) * max(1, max|oracle|), per dtype (any other dtype: the largest).
FLOOR_ULPS: dict[torch.dtype, float] = {torch.float32: 256.0, torch.bfloat16: 16.0, torch.float16: 16.0}
FLOAT64_FLOOR = 1e-10  # relative to max(1, max|oracle|); see the calibration record in docs/tolerance.md


def floor_ulps(dtype: torch.dtype) -> float:
    """The floor of ``dtype`` in ulps (eps(dtype) times max(1, max|oracle|))."""
    return FLOOR_ULPS.get(dtype, max(FLOOR_ULPS.values()))


def floor(dtype: torch.dtype, scale: float) -> float:
    """The absolute error allowed whatever PyTorch's own error is."""
    if dtype == torch.float64:
        return FLOAT64_FLOOR * max(1.0, scale)
    return floor_ulps(dtype) * torch.finfo(dtype).eps * max(1.0, scale)


@dataclass(frozen=True, kw_only=True)
class Verdict:
    """The numbers behind one comparison against the oracle."""

    what: str
    dtype: str
    passed: bool
    max_abs: float
    max_rel: float
    torch_err: float
    ratio: float
    bound: float
    worst_index: tuple[int, ...]
    candidate_value: float
    oracle_value: float
    note: str = ""

    def __str__(self) -> str:
        status = "ok" if self.passed else "FAIL"
        return (
            f"[{status}] {self.what} ({self.dtype}): max abs err {self.max_abs:.3g} (bound {self.bound:.3g}), "
            f"max rel err {self.max_rel:.3g}, PyTorch's own err {self.torch_err:.3g}, ratio {self.ratio:.3g}, "
            f"worst element {self.worst_index}: candidate {self.candidate_value:.6g} vs oracle "
            f"{self.oracle_value:.6g}{' | ' + self.note if self.note else ''}"
        )


def jittered(module: nn.Module, seed: int) -> nn.Module:
    """A copy of ``module`` with each floating parameter moved by about one ulp of its dtype: up, down or not.

    The built-in run on it is a second, equally valid rounding of the same float64 weights; the larger of its
    error and the built-in's error on the weights as rounded is PyTorch's own error (see the module doc).
    """
    twin = copy.deepcopy(module)
    twin.zero_grad(set_to_none=True)  # the copy must not carry the original's gradients
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in twin.parameters():
            if p.is_floating_point():
                step = torch.randint(-1, 2, p.shape, generator=gen).to(torch.float64) * torch.finfo(p.dtype).eps
                p.copy_((p.double().cpu() * (1.0 + step)).to(p.device, p.dtype))
    return twin


def with_jittered(own: dict[str, Tensor], jit: dict[str, Tensor]) -> dict[str, tuple[Tensor, Tensor]]:
    """Pair each of the built-in's results with its result on the ``jittered`` weights, for ``judge``."""
    return {name: (tensor, jit[name]) for name, tensor in own.items()}


def _own_error(torch_own: Tensor | Sequence[Tensor] | None, ref: Tensor) -> float:
    owns = [] if torch_own is None else [torch_own] if isinstance(torch_own, Tensor) else list(torch_own)
    if not ref.numel():
        return 0.0
    return max([float((o.detach().to("cpu", torch.float64) - ref).abs().nan_to_num(nan=0.0).max()) for o in owns]
               or [0.0])


def judge(what: str, candidate: Tensor, oracle: Tensor, torch_own: Tensor | Sequence[Tensor] | None = None) -> Verdict:
    """Compare ``candidate`` with the float64 ``oracle``; ``torch_own`` is the built-in at the candidate's dtype.

    ``torch_own`` None means the candidate is float64 on the CPU, where PyTorch's own error is zero by
    definition. Several tensors (the built-in on the weights as rounded and on ``jittered`` ones): the largest
    error counts. Non-finite candidate values where the oracle is finite fail with an infinite error.
    """
    dtype, name = candidate.dtype, str(candidate.dtype).replace("torch.", "")
    if candidate.shape != oracle.shape:
        return Verdict(what=what, dtype=name, passed=False, max_abs=float("inf"), max_rel=float("inf"), torch_err=0.0,
                       ratio=float("inf"), bound=0.0, worst_index=(), candidate_value=0.0, oracle_value=0.0,
                       note=f"shape {tuple(candidate.shape)} but should be {tuple(oracle.shape)}")
    ref = oracle.detach().to("cpu", torch.float64)
    cand = candidate.detach().to("cpu", torch.float64)
    scale = float(ref.abs().max()) if ref.numel() else 0.0
    torch_err = _own_error(torch_own, ref)
    bound = K * torch_err + floor(dtype, scale)
    if ref.numel() == 0:
        return Verdict(what=what, dtype=name, passed=True, max_abs=0.0, max_rel=0.0, torch_err=torch_err, ratio=0.0,
                       bound=bound, worst_index=(), candidate_value=0.0, oracle_value=0.0)
    diff = (cand - ref).abs()
    both_nan = cand.isnan() & ref.isnan()
    diff = torch.where(both_nan, torch.zeros_like(diff), diff)
    diff = torch.where(diff.isnan(), torch.full_like(diff, float("inf")), diff)  # NaN on one side only
    flat = int(diff.argmax())
    worst = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), diff.shape))
    max_abs = float(diff.max())
    rel = diff / ref.abs().clamp_min(1e-2 * max(scale, 1e-30))  # relative error, ignoring near-zero entries
    ratio = max_abs / torch_err if torch_err > 0 else (0.0 if max_abs == 0 else max_abs / bound)
    note = "" if torch.isfinite(cand[~both_nan]).all() else "candidate has NaN/inf where the oracle is finite"
    return Verdict(
        what=what, dtype=name, passed=max_abs <= bound, max_abs=max_abs, max_rel=float(rel.max()), torch_err=torch_err,
        ratio=ratio, bound=bound,
        worst_index=worst, candidate_value=float(cand.reshape(-1)[flat]), oracle_value=float(ref.reshape(-1)[flat]),
        note=note,
    )
