"""The suite's one assertion helper, and the comparison it asserts on.

``assert_matches`` (tensors) and ``assert_verdicts`` (verdicts from ``reference.compare``) judge a candidate
against the float64 oracle with ``reference.tolerance.judge``, record every verdict for the parity report,
and fail through ``torch.testing.assert_close(..., atol=verdict.bound, rtol=0)`` with a message that starts
with a context line (component, dtype, device, shapes, masks: ``Case.describe()``) and carries the numbers.

``compare_pair`` runs a built-in module, its float64 oracle and the handmade twin on the same rounded
weights and inputs and returns what to judge: outputs and, with ``grads``, the gradients of every input
and every parameter (handmade's q/k/v gradients re-packed under torch's names).
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import pytest
import torch
from hypothesis import HealthCheck, reject, settings
from hypothesis.errors import Unsatisfiable
from torch import Tensor, nn

from reference.cases import Case
from reference.compare import fastpath, whole_model
from reference.targets import NotSupportedError, Target, TargetError
from reference.tolerance import Verdict, jittered, judge, with_jittered
from reference.weights import copy_torch_to_handmade, plan

# The records of the running test (set per test by conftest's autouse fixture; None outside a test).
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
    """What is being compared, for the failure message's first line and the report."""

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
        "kind": "verdict",
        "component": context.component,
        "dtype": str(context.dtype).replace("torch.", ""),
        "device": context.device,
        "max_abs": _finite(max(v.max_abs for v in verdicts)),
        "ratio": _finite(max(v.ratio for v in verdicts)),
        "passed": all(v.passed for v in verdicts),
        "compared": len(verdicts),
        "worst": worst.what,
    })


def record_not_supported(context: Context, reason: str) -> None:
    """Note that the target declined this configuration: reported, never dropped silently."""
    records = _RECORDS.get()
    if records is not None:
        records.append({
            "kind": "not_supported", "component": context.component,
            "dtype": str(context.dtype).replace("torch.", ""), "device": context.device,
            "config": context.description, "reason": reason,
        })


def _message(verdicts: list[Verdict], context: Context) -> str:
    failed = [v for v in verdicts if not v.passed]
    lines = [f"{len(failed)} of {len(verdicts)} tensors differ from the oracle beyond the tolerance: {context}"]
    lines += [f"  {v}" for v in failed]
    return "\n".join(lines)


def assert_verdicts(verdicts: list[Verdict], context: Context) -> None:
    """Record ``verdicts`` and fail, naming the context and the numbers, unless every one passed."""
    _record(context, verdicts)
    if not verdicts:
        raise AssertionError(f"nothing was compared: {context}")
    if not all(v.passed for v in verdicts):
        raise AssertionError(_message(verdicts, context))


@dataclass(frozen=True)
class Triple:
    """A candidate tensor, the float64 oracle, and the built-in's own result at the candidate's dtype."""

    what: str
    candidate: Tensor
    oracle: Tensor
    torch_own: Tensor | tuple[Tensor, ...] | None  # several: the largest error counts (see tolerance.jittered)


def assert_matches(triples: list[Triple], context: Context) -> list[Verdict]:
    """Judge each candidate against its oracle, record the verdicts, fail through assert_close if one fails."""
    verdicts = [judge(t.what, t.candidate, t.oracle, t.torch_own) for t in triples]
    _record(context, verdicts)
    if not verdicts:
        raise AssertionError(f"nothing was compared: {context}")
    failed = [(t, v) for t, v in zip(triples, verdicts, strict=True) if not v.passed]
    if failed:
        message = _message(verdicts, context)
        t, v = max(failed, key=lambda tv: tv[1].ratio)
        if t.candidate.shape == t.oracle.shape:
            torch.testing.assert_close(
                t.candidate.detach().to("cpu", torch.float64), t.oracle.detach().to("cpu", torch.float64),
                atol=v.bound, rtol=0, equal_nan=True, msg=lambda m: f"{message}\n{v.what}: {m}",
            )
        raise AssertionError(message)
    return verdicts


Call = Callable[..., "Tensor | dict[str, Tensor | None]"]


def _as_dict(out: Tensor | dict[str, Tensor | None] | tuple) -> dict[str, Tensor]:
    if isinstance(out, Tensor):
        return {"output": out}
    if isinstance(out, tuple):
        out = {"output": out[0], "weights": out[1]}
    return {k: v for k, v in out.items() if v is not None}


def _to(value: object, device: torch.device | str, dtype: torch.dtype | None) -> object:
    """Move a tensor to ``device``; floating tensors also to ``dtype`` when given."""
    if not isinstance(value, Tensor):
        return value
    if dtype is not None and value.is_floating_point():
        return value.to(device, dtype)
    return value.to(device)


def _run(
    module: nn.Module, call: Call, inputs: dict[str, Tensor], kwargs: dict[str, object],
    device: torch.device | str, dtype: torch.dtype | None, cotangent_seed: int | None,
) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
    """Outputs, input gradients and parameter gradients of ``call(module, **inputs, **kwargs)``."""
    grads = cotangent_seed is not None
    xs = {k: _to(v, device, dtype).detach().requires_grad_(grads) for k, v in inputs.items()}
    kw = {k: _to(v, device, dtype) for k, v in kwargs.items()}
    module.zero_grad(set_to_none=True)
    with torch.set_grad_enabled(grads):
        outs = _as_dict(call(module, **xs, **kw))
    if grads:
        g = torch.Generator().manual_seed(cotangent_seed)
        loss = sum(
            (o * torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.device, o.dtype)).sum()
            for o in outs.values()
        )
        loss.backward()
    in_grads = {f"grad {k}": x.grad for k, x in xs.items() if x.grad is not None}
    p_grads = {f"grad {k}": p.grad for k, p in module.named_parameters() if p.grad is not None}
    return {k: o.detach() for k, o in outs.items()}, in_grads, p_grads


def _repacked(grads: dict[str, Tensor], torch_module: nn.Module, handmade_module: nn.Module) -> dict[str, Tensor]:
    """Handmade parameter gradients under torch's names; q/k/v pieces concatenated like in_proj_*."""
    pieces: dict[str, list[tuple[int, Tensor]]] = {}
    for link in plan(torch_module, handmade_module):
        grad = grads.get(f"grad {link.handmade_key}")
        if grad is not None:
            pieces.setdefault(f"grad {link.torch_key}", []).append((link.chunk or 0, grad))
    return {k: torch.cat([g for _, g in sorted(v, key=lambda p: p[0])]) for k, v in pieces.items()}


def compare_pair(
    torch_module: nn.Module,
    handmade_module: nn.Module,
    call: Call,
    inputs: dict[str, Tensor],
    kwargs: dict[str, object] | None = None,
    *,
    dtype: torch.dtype,
    device: str,
    grads: bool = True,
    seed: int = 0,
) -> list[Triple]:
    """Run the built-in (its own result), the oracle and the handmade twin; return what to judge.

    ``torch_module`` and ``handmade_module`` hold the same weights in float64 on the CPU (eval mode).
    ``inputs`` are differentiable tensors and ``kwargs`` other arguments (masks, flags), already at
    ``dtype`` on the CPU: the oracle gets them upcast, so it sees the same rounded values.
    """
    kwargs = kwargs or {}
    cot = seed + 1 if grads else None
    own_needed = dtype != torch.float64 or torch.device(device).type != "cpu"
    with fastpath(False):
        own = copy.deepcopy(torch_module).to(device, dtype)
        oracle = copy.deepcopy(own).to("cpu", torch.float64)
        candidate = copy.deepcopy(handmade_module).to(device, dtype)
        copy_torch_to_handmade(own, candidate)
        o_out, o_in, o_par = _run(oracle, call, inputs, kwargs, "cpu", torch.float64, cot)
        t_out, t_in, t_par = _run(own, call, inputs, kwargs, device, None, cot) if own_needed else ({}, {}, {})
        if own_needed:  # PyTorch's own error, measured on the weights as rounded and on a jittered rounding
            j_out, j_in, j_par = _run(jittered(own, seed + 2), call, inputs, kwargs, device, None, cot)
            t_out, t_in, t_par = with_jittered(t_out, j_out), with_jittered(t_in, j_in), with_jittered(t_par, j_par)
        c_out, c_in, c_par = _run(candidate, call, inputs, kwargs, device, None, cot)
    c_par = _repacked(c_par, own, candidate)
    triples = []
    for oracle_part, own_part, cand_part in ((o_out, t_out, c_out), (o_in, t_in, c_in), (o_par, t_par, c_par)):
        for name, o in oracle_part.items():
            c = cand_part.get(name)
            if c is None:  # the candidate produced no such output or gradient: judged as missing
                c = torch.full_like(o, float("nan"))
            triples.append(Triple(name, c, o, own_part.get(name)))
    missing = set(c_out) - set(o_out)
    triples += [Triple(f"{name} (torch returns none)", c_out[name], torch.empty(0), None) for name in missing]
    return triples


def low_precision_grads_comparable(dtype: torch.dtype, smooth: bool) -> bool:
    """Whether gradients are judged at ``dtype``: always in float64/float32; in bf16/fp16 only if smooth.

    relu's derivative jumps at 0: at 8 to 11 significant bits a pre-activation near 0 lands on different
    sides in the candidate and the built-in, and the parameter gradients then differ by O(1) (measured:
    ratios up to ~540 to the built-in's own error with relu, <= ~5.4 with gelu; see reference/tolerance.py).
    """
    return dtype in (torch.float64, torch.float32) or smooth


def examples(weight: float, *, suppress: tuple[HealthCheck, ...] = ()) -> settings:
    """Hypothesis settings running ``weight`` times the loaded profile's max_examples (at least 1)."""
    return settings(
        max_examples=max(1, round(weight * settings.default.max_examples)),
        suppress_health_check=[*settings.default.suppress_health_check, *suppress],
    )


def skip_unless_dtype_runs(dtype: torch.dtype, device: str) -> None:
    """Skip, with the reason, where ``dtype`` has no kernels on ``device`` (bfloat16 on an older GPU)."""
    if device == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        pytest.skip(f"bfloat16 is not supported on {torch.cuda.get_device_name()}")


def check_whole_model(target: Target, case: Case, device: str, dtype: torch.dtype, grads: bool = True) -> None:
    """Judge ``target`` against the oracle on ``case``; a declined configuration is recorded and rejected."""
    context = Context("transformer", dtype, device, case.describe())
    try:
        target.build(case.config.kwargs(), device, dtype)  # cheap: declines before the oracle runs
        verdicts = whole_model(target, case, device, dtype, grads)
    except NotSupportedError as exc:
        record_not_supported(context, str(exc))
        reject()
    except TargetError as exc:
        raise AssertionError(f"the target crashed: {exc}\n  context: {context}") from exc
    assert_verdicts(verdicts, context)


def skip_when_nothing_supported(test: Callable) -> Callable:
    """Wrap a @given test: if the target declines every drawn configuration, skip it (the run fails overall)."""

    @functools.wraps(test)
    def wrapper(*args: object, **kwargs: object) -> None:
        try:
            test(*args, **kwargs)
        except Unsatisfiable as exc:
            pytest.skip(f"the target supports none of the drawn configurations: {exc}")

    return wrapper
