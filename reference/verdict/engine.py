"""The comparison engine: one module, one candidate, one set of inputs -> a verdict per output and gradient.

Every comparison the harness makes, at every level and for every kind of target, runs through
``compare_modules``:

1. the **oracle**: the built-in in float64 on the CPU, eval mode, fast path off;
2. the **built-in's own result** at the candidate's dtype and device, on the weights as rounded and on a
   jittered rounding of them (``tolerance.jittered``): PyTorch's own error, which sets the bound (in float64
   on the CPU the first is the oracle itself, and the jittered one measures how ill-conditioned the case is);
3. the **candidate**, built at that dtype and device and loaded with the same rounded weights.

The oracle uses those rounded weights and the rounded inputs upcast to float64, so only the arithmetic
differs. With ``grads``, a seeded random cotangent is pulled back through every output, and the gradients
of every differentiable input and every parameter are judged too.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

import reference.verdict.precision as precision
from reference.builtin.weights import copy_plan, copy_torch_to_handmade
from reference.targets.contract import NotSupportedError, TargetError
from reference.verdict.tolerance import Verdict, jittered, judge, with_jittered

Call = Callable[..., Any]  # (module, **inputs, **kwargs) -> Tensor, (output, weights) or {name: Tensor}


@contextmanager
def fastpath(enabled: bool) -> Iterator[None]:
    """Pin the built-in's fast path on or off (torch.backends.mha) for the block, then restore it."""
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(enabled)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


class Candidate(Protocol):
    """What the engine needs of the implementation under test (a handmade twin, a plug-in target, ...)."""

    @property
    def name(self) -> str: ...

    def build(self, device: torch.device | str, dtype: torch.dtype) -> nn.Module: ...

    def load(self, model: nn.Module, builtin: nn.Module) -> None: ...

    def call(self, model: nn.Module, call: Call, inputs: dict[str, Tensor], kwargs: dict[str, object]) -> Any: ...

    def param_grads(self, model: nn.Module, builtin: nn.Module) -> dict[str, Tensor] | None: ...

    # optional: ``hold(builtin)`` fixes built-in tensors the candidate has no counterpart for (a q/k/v bias it
    # does not have) before anything runs, so the oracle is the candidate's own module


def param_grads(model: nn.Module) -> dict[str, Tensor]:
    """Every parameter gradient of ``model`` by its parameter name."""
    return {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


def repacked_grads(model: nn.Module, builtin: nn.Module) -> dict[str, Tensor]:
    """A handmade model's parameter gradients under the built-in's names, q/k/v pieces concatenated."""
    grads = param_grads(model)
    pieces: dict[str, list[tuple[int, Tensor]]] = {}
    for link in copy_plan(builtin, model):
        if link.handmade_key in grads:
            pieces.setdefault(link.torch_key, []).append((link.chunk or 0, grads[link.handmade_key]))
    return {k: torch.cat([g for _, g in sorted(v, key=lambda p: p[0])]) for k, v in pieces.items()}


@dataclass
class HandmadeTwin:
    """A candidate that is a handmade module: a copy of ``module`` loaded through the weight map."""

    module: nn.Module
    name: str = "handmade"

    def build(self, device: torch.device | str, dtype: torch.dtype) -> nn.Module:
        return copy.deepcopy(self.module).to(device, dtype)

    def load(self, model: nn.Module, builtin: nn.Module) -> None:
        copy_torch_to_handmade(builtin, model)

    def call(self, model: nn.Module, call: Call, inputs: dict[str, Tensor], kwargs: dict[str, object]) -> Any:
        return call(model, **inputs, **kwargs)

    def param_grads(self, model: nn.Module, builtin: nn.Module) -> dict[str, Tensor] | None:
        return repacked_grads(model, builtin)


def outputs(out: object) -> dict[str, Tensor]:
    """A call's result by name: a tensor is the "output"; a pair is (output, attention weights)."""
    if isinstance(out, Tensor):
        return {"output": out}
    if isinstance(out, tuple):
        out = {"output": out[0], "weights": out[1]}
    if not isinstance(out, Mapping):
        raise TypeError(f"returned a {type(out).__name__}, but should return a Tensor, a pair or a dict")
    return {k: v for k, v in out.items() if v is not None}


def _moved(value: object, device: torch.device | str, dtype: torch.dtype | None) -> object:
    """A tensor moved to ``device``; a floating one also to ``dtype`` when given. Anything else as is."""
    if not isinstance(value, Tensor):
        return value
    return value.to(device, dtype) if dtype is not None and value.is_floating_point() else value.to(device)


@dataclass
class _Run:
    outputs: dict[str, Tensor]
    input_grads: dict[str, Tensor]
    param_grads: dict[str, Tensor]

    def parts(self) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
        return self.outputs, self.input_grads, self.param_grads


def _run(run: Callable[[dict[str, Tensor], dict[str, object]], object], model: nn.Module,
         inputs: dict[str, Tensor], kwargs: dict[str, object], device: torch.device | str,
         dtype: torch.dtype | None, cotangent_seed: int | None) -> _Run:
    """Outputs and, with a cotangent seed, the gradients of d(sum(out * cotangent)) wrt inputs and parameters."""
    grads = cotangent_seed is not None
    xs = {k: v.to(device, dtype or v.dtype).detach().requires_grad_(grads) for k, v in inputs.items()}
    kw = {k: _moved(v, device, dtype) for k, v in kwargs.items()}
    model.zero_grad(set_to_none=True)
    with torch.set_grad_enabled(grads):
        outs = outputs(run(xs, kw))
    if cotangent_seed is not None:
        g = torch.Generator().manual_seed(cotangent_seed)
        loss = sum((o * torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.device, o.dtype)).sum()
                   for o in outs.values() if o.is_floating_point())
        if isinstance(loss, Tensor) and loss.requires_grad:
            loss.backward()
    return _Run({k: o.detach() for k, o in outs.items()},
                {f"grad {k}": x.grad for k, x in xs.items() if x.grad is not None},
                {f"grad {k}": g for k, g in param_grads(model).items()})


def compare_modules(
    builtin: nn.Module,
    candidate: Candidate,
    call: Call,
    inputs: dict[str, Tensor],
    kwargs: dict[str, object] | None = None,
    *,
    dtype: torch.dtype,
    device: torch.device | str,
    grads: bool,
    seed: int,
) -> list[Verdict]:
    """Judge ``candidate`` against ``builtin`` (float64, CPU, eval, weights set) on one set of inputs.

    ``inputs`` are the differentiable tensors and ``kwargs`` everything else (masks, flags), at ``dtype`` on
    the CPU. Raises TargetError when the candidate crashes or returns something unreadable.
    """
    kwargs = kwargs or {}
    cot = seed + 1 if grads else None
    own_needed = dtype != torch.float64 or torch.device(device).type != "cpu"
    hold = getattr(candidate, "hold", None)  # built-in tensors the candidate has no counterpart for: fixed first
    if callable(hold):
        try:
            hold(builtin)
        except (NotSupportedError, TargetError):
            raise
        except Exception as exc:
            raise TargetError(f"{candidate.name} raised {type(exc).__name__}: {exc}") from exc
    with fastpath(False):
        with _candidates_failure(candidate, builtin, call, inputs, kwargs, dtype):
            model = candidate.build(device, dtype)  # first: a declined configuration costs no copy or run
        own = copy.deepcopy(builtin).to(device, dtype) if own_needed else builtin
        oracle = copy.deepcopy(own).to("cpu", torch.float64) if own_needed else builtin
        ref = _run(lambda xs, kw: call(oracle, **xs, **kw), oracle, inputs, kwargs, "cpu", torch.float64, cot)
        own_parts = _own_error(own, call, inputs, kwargs, device, None, cot, seed, None if own_needed else ref)
        with _candidates_failure(candidate, own, call, inputs, kwargs, dtype):
            candidate.load(model, own)
            model.eval()
            cand = _run(lambda xs, kw: candidate.call(model, call, xs, kw), model, inputs, kwargs, device, None, cot)
            named = candidate.param_grads(model, own) if grads else {}
    cand.param_grads = {} if named is None else {f"grad {k}": g for k, g in named.items()}
    verdicts = _verdicts(ref, own_parts, cand, named is not None)
    if all(v.passed for v in verdicts):
        return verdicts
    # a precision the code cannot be judged in is declined, with numbers
    rerun = _float64_rerun(candidate, own, call, inputs, kwargs, device)
    if dtype != torch.float64:
        broken = precision.not_finite(cand.parts()) - precision.not_finite(ref.parts())
        precision.declines_overflow(dtype, broken, rerun)
    elif precision.rounding_sized(verdicts):
        lower = precision.lower_precision_in(rerun)
        if lower is not None:
            case = _Case(call=call, inputs=inputs, kwargs=kwargs, device=device, cot=cot, seed=seed)
            _judged_at(lower, verdicts, own, case, ref, cand, named)
    return verdicts


def _own_error(own: nn.Module, call: Call, inputs: dict[str, Tensor], kwargs: dict[str, object],
               device: torch.device | str, dtype: torch.dtype | None, cot: int | None, seed: int,
               mine: _Run | None = None) -> tuple[dict[str, tuple[Tensor, Tensor]], ...]:
    """PyTorch's own error: the built-in ``own`` (at the candidate's dtype) on the weights as rounded (``mine``
    when already run: in float64 on the CPU, the oracle itself) and on a jittered rounding of them, which in
    float64 measures how ill-conditioned the case is; each result paired for ``judge``."""
    def run(model: nn.Module) -> _Run:
        return _run(lambda xs, kw: call(model, **xs, **kw), model, inputs, kwargs, device, dtype, cot)

    mine = run(own) if mine is None else mine
    jit = run(jittered(own, seed + 2))
    return tuple(with_jittered(m, j) for m, j in zip(mine.parts(), jit.parts(), strict=True))


def _verdicts(ref: _Run, own_parts: tuple[Mapping[str, Any], ...], cand: _Run, with_params: bool,
              low: torch.dtype | None = None) -> list[Verdict]:
    """Every oracle tensor judged against the candidate's (rounded to ``low`` first when given)."""
    verdicts = []
    parts = zip((ref.outputs, ref.input_grads, ref.param_grads if with_params else {}), own_parts,
                (cand.outputs, cand.input_grads, cand.param_grads), strict=True)
    for oracle_part, own_part, cand_part in parts:
        for name, o in oracle_part.items():
            c = cand_part.get(name)
            if c is None:  # the candidate produced no such output or gradient: judged as missing
                c = torch.full_like(o, float("nan"))
            verdicts.append(judge(name, c if low is None else c.to(low), o, own_part.get(name)))
    return verdicts + [judge(f"{name} (the built-in returns none)", cand.outputs[name], torch.empty(0))
                       for name in set(cand.outputs) - set(ref.outputs)]


def _float64_rerun(candidate: Candidate, builtin: nn.Module, call: Call, inputs: dict[str, Tensor],
                   kwargs: dict[str, object], device: torch.device | str) -> precision.Rerun:
    """The candidate built afresh in float64 on ``device``, loaded and called on the case, without gradients;
    the call (only) runs inside the context ``watch`` gives, when given."""
    def rerun(watch: AbstractContextManager[object] | None = None) -> dict[str, Tensor]:
        with torch.no_grad():
            model = candidate.build(device, torch.float64)
            candidate.load(model, copy.deepcopy(builtin).to(device, torch.float64))
            model.eval()
            xs = {k: v.to(device, torch.float64) for k, v in inputs.items()}
            kw = {k: _moved(v, device, torch.float64) for k, v in kwargs.items()}
            with watch or nullcontext():
                return outputs(candidate.call(model, call, xs, kw))
    return rerun


@dataclass(frozen=True, kw_only=True)
class _Case:
    """One comparison's call, inputs and seeds, for the runs a failed comparison asks for afterwards."""

    call: Call
    inputs: dict[str, Tensor]
    kwargs: dict[str, object]
    device: torch.device | str
    cot: int | None
    seed: int


def _judged_at(lower: tuple[torch.dtype, str], verdicts: list[Verdict], builtin: nn.Module, case: _Case,
               ref: _Run, cand: _Run, named: object) -> None:
    """The candidate computes at a lower precision when run in float64 (``lower``: that dtype and the first
    operation seen): its float64 results are judged as that precision's, against PyTorch's own error at it.
    Within that tolerance, float64 cannot judge the code and declines (NotSupportedError, with the numbers);
    beyond it, the float64 failure stands."""
    low, where = lower
    own = copy.deepcopy(builtin).to(case.device, low)
    own_parts = _own_error(own, case.call, case.inputs, case.kwargs, case.device, low, case.cot, case.seed)
    as_low = _verdicts(ref, own_parts, cand, named is not None, low)
    if all(v.passed for v in as_low):
        raise NotSupportedError(precision.float64_declined(low, where, verdicts, as_low))


@contextmanager
def _candidates_failure(candidate: Candidate, builtin: nn.Module, call: Call, inputs: dict[str, Tensor],
                        kwargs: dict[str, object], dtype: torch.dtype) -> Iterator[None]:
    """The candidate's crash is the candidate's failure, reported as such (TargetError), unless only this dtype
    makes it raise (then it declines the dtype); a declined configuration and an already named failure pass."""
    try:
        yield
    except (NotSupportedError, TargetError):
        raise
    except Exception as exc:
        _runs_in_float64(candidate, builtin, call, inputs, kwargs, dtype, exc)
        raise TargetError(f"{candidate.name} raised {type(exc).__name__}: {exc}") from exc


def _runs_in_float64(candidate: Candidate, builtin: nn.Module, call: Call, inputs: dict[str, Tensor],
                     kwargs: dict[str, object], dtype: torch.dtype, exc: Exception) -> None:
    """Raise NotSupportedError when the candidate, which raised ``exc`` at ``dtype``, runs on the same case in
    float64 on the CPU: code that cannot run at a lower precision (a fill value of -1e9, which float16 cannot
    hold) declines that precision; it is not a difference from the built-in (float64 judges the case)."""
    if dtype == torch.float64:
        return
    try:
        _float64_rerun(candidate, builtin, call, inputs, kwargs, "cpu")()
    except Exception:  # it raises in float64 too: the crash is the candidate's failure
        return
    raise NotSupportedError(f"the target raises in {str(dtype).removeprefix('torch.')} "
                            f"({type(exc).__name__}: {exc}) where it runs in float64") from exc


def compare_pair(
    builtin: nn.Module,
    handmade_module: nn.Module,
    call: Call,
    inputs: dict[str, Tensor],
    kwargs: dict[str, object] | None = None,
    *,
    dtype: torch.dtype,
    device: torch.device | str,
    grads: bool = True,
    seed: int = 0,
) -> list[Verdict]:
    """``compare_modules`` for a handmade module that holds (or will be loaded with) the built-in's weights."""
    return compare_modules(builtin, HandmadeTwin(handmade_module), call, inputs, kwargs, dtype=dtype, device=device,
                           grads=grads, seed=seed)
