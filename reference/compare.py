"""Run a target and the built-in on the same case and judge every output and gradient against the oracle.

The oracle is the built-in in float64 on the CPU, eval mode, fast path off. For a lower dtype or another
device, the built-in also runs at that dtype and device (its own error sets the bound), and the oracle uses
the same rounded weights and inputs upcast to float64, so only the arithmetic differs.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from reference.build import build_torch, randomize_
from reference.cases import Case
from reference.targets import HandmadeAdapter, NotSupportedError, Target, TargetError
from reference.tolerance import Verdict, jittered, judge, with_jittered
from reference.weights import plan


@contextmanager
def fastpath(enabled: bool) -> Iterator[None]:
    """Pin the built-in's fast path on or off (torch.backends.mha) for the block, then restore it."""
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(enabled)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


def forward_kwargs(kwargs: dict[str, object], device: torch.device | str) -> dict[str, object]:
    """Only the arguments a case sets (no None masks or hints), masks moved to ``device``."""
    out = {}
    for name, value in kwargs.items():
        if value is None or (name == "memory_is_causal" and value is False):
            continue
        out[name] = value.to(device) if isinstance(value, Tensor) else value
    return out


def _run(call, src: Tensor, tgt: Tensor, cotangent: Tensor | None) -> tuple[Tensor, dict[str, Tensor]]:
    """Output of ``call(src, tgt)`` and, when ``cotangent`` is given, d(sum(out * cotangent)) / d inputs."""
    src = src.detach().requires_grad_(cotangent is not None)
    tgt = tgt.detach().requires_grad_(cotangent is not None)
    with torch.set_grad_enabled(cotangent is not None):
        out = call(src, tgt)
    if cotangent is None:
        return out.detach(), {}
    (out * cotangent.to(out.device, out.dtype)).sum().backward()
    return out.detach(), {"src": src.grad, "tgt": tgt.grad}


def _param_grads(model: nn.Module) -> dict[str, Tensor]:
    return {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


def _candidate_param_grads(target: Target, torch_model: nn.Module, model: nn.Module) -> dict[str, Tensor] | None:
    """The candidate's parameter gradients under torch's names (packed q/k/v re-assembled), if nameable."""
    grads = _param_grads(model)
    if target.is_drop_in:
        return grads
    if not isinstance(target.obj, HandmadeAdapter):
        return None  # an adapter's parameter names are its own; inputs' gradients are still compared
    pieces: dict[str, list[tuple[int, Tensor]]] = {}
    for link in plan(torch_model, model):
        if link.handmade_key in grads:
            pieces.setdefault(link.torch_key, []).append((link.chunk or 0, grads[link.handmade_key]))
    return {k: torch.cat([g for _, g in sorted(v, key=lambda p: p[0])]) for k, v in pieces.items()}


def whole_model(
    target: Target,
    case: Case,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float64,
    grads: bool = False,
) -> list[Verdict]:
    """Verdicts for the output (and, with ``grads``, the gradients of inputs and parameters) of ``target``.

    Raises NotSupportedError when the target declines the configuration and TargetError when it crashes.
    """
    cfg = case.config
    if not target.supports(cfg.kwargs()):  # decline before building anything: a declined draw must be cheap
        raise NotSupportedError(f"{target.spec} does not support {cfg.kwargs()}")
    with fastpath(False):
        reference = build_torch("transformer", cfg, "cpu", torch.float64)
        randomize_(reference, torch.Generator().manual_seed(case.seed), case.weight_scale)
        own_needed = dtype != torch.float64 or torch.device(device).type != "cpu"
        torch_model = copy.deepcopy(reference).to(device, dtype) if own_needed else reference
        oracle_model = copy.deepcopy(torch_model).to("cpu", torch.float64) if own_needed else reference
        src, tgt, kwargs = case.tensors(dtype)
        cot = None
        if grads:
            g = torch.Generator().manual_seed(case.seed + 1)
            out_len = case.tgt_len
            shape = (out_len, cfg.d_model) if case.batch is None else (
                (case.batch, out_len, cfg.d_model) if cfg.batch_first else (out_len, case.batch, cfg.d_model))
            cot = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)

        def on(model: nn.Module, dev: torch.device | str, dt: torch.dtype):
            kw = forward_kwargs({k: v.to(dt) if isinstance(v, Tensor) and v.is_floating_point() else v
                                 for k, v in kwargs.items()}, dev)
            return lambda s, t: model(s.to(dev, dt), t.to(dev, dt), **kw)

        oracle_out, oracle_in_grads = _run(on(oracle_model, "cpu", torch.float64), src.double(), tgt.double(), cot)
        own_out, own_in_grads, jit_model = (None, {}, None)
        if own_needed:  # PyTorch's own error: on the weights as rounded and on a jittered rounding of them
            own_out, own_in_grads = _run(on(torch_model, device, dtype), src, tgt, cot)
            jit_model = jittered(torch_model, case.seed + 2)
            jit_out, jit_in_grads = _run(on(jit_model, device, dtype), src, tgt, cot)
            own_out, own_in_grads = (own_out, jit_out), with_jittered(own_in_grads, jit_in_grads)

        model = target.build(cfg.kwargs(), device, dtype)
        try:
            target.load_reference(model, torch_model)
            model.eval()
            kw = forward_kwargs(kwargs, device)
            cand_out, cand_in_grads = _run(
                lambda s, t: target.run(model, s.to(device), t.to(device), **kw), src, tgt, cot)
        except TargetError:
            raise
        except Exception as exc:  # a crash of the target is a failure of the target, reported as such
            raise TargetError(f"{target.spec} raised {type(exc).__name__}: {exc}") from exc

    verdicts = [judge("output", cand_out, oracle_out, own_out)]
    if not grads:
        return verdicts
    for name in ("src", "tgt"):
        verdicts.append(judge(f"grad {name}", cand_in_grads[name], oracle_in_grads[name], own_in_grads.get(name)))
    cand_params = _candidate_param_grads(target, torch_model, model)
    if cand_params is not None:
        oracle_params, own_params = _param_grads(oracle_model), {}
        if jit_model is not None:
            own_params = with_jittered(_param_grads(torch_model), _param_grads(jit_model))
        for name, oracle_grad in oracle_params.items():
            if name not in cand_params:
                verdicts.append(judge(f"grad {name}", torch.full_like(oracle_grad, float("nan")), oracle_grad))
                continue
            verdicts.append(judge(f"grad {name}", cand_params[name], oracle_grad, own_params.get(name)))
    return verdicts
