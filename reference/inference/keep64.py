"""Float64 runs of code that casts down: ``x.float()`` on a float64 tensor is kept float64.

Mixed-precision habits write casts into a forward: ``super().forward(x.float())``, ``self.w1(x.float())``,
``softmax(scores.float(), -1).type_as(scores)``. Run in float64, such code either crashes (a float32 input meets
a float64 weight: "mat1 and mat2 must have the same dtype") or computes in float32, and float64, the oracle,
cannot judge it. Every copy of a target the harness runs (reference/inference/copying.py) carries a forward
pre-hook that, while its parameters are float64, runs its forward under ``KeepFloat64``: a cast of a float64
tensor to a less precise floating dtype returns the tensor as it is (moved to the cast's device). Float64 then
judges the code's arithmetic; float32, float16 and bfloat16 runs, where these casts are what the code does,
are untouched. A class whose first float64 call casts nothing is not watched again (the mode costs ~20% of a
float64 forward); one that does is always, and ``kept(model)`` says what was kept, for the report.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

_CASTS = frozenset({Tensor.float, Tensor.half, Tensor.bfloat16, Tensor.to, Tensor.type, Tensor.type_as})
_CASTING: dict[type, str] = {}  # class -> the first cast kept, in words
_PLAIN: set[type] = set()  # classes whose first float64 call cast nothing
_STACK = "_parity_keep64_modes"


class KeepFloat64(TorchFunctionMode):
    """Casts of float64 tensors to a less precise floating dtype return the tensor; ``first`` says the first."""

    def __init__(self) -> None:
        super().__init__()
        self.first: str | None = None

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if func in _CASTS and isinstance(out, Tensor) and out.is_floating_point() and out.dtype != torch.float64:
            source = args[0]
            if isinstance(source, Tensor) and source.dtype == torch.float64:
                if self.first is None:
                    self.first = f"Tensor.{func.__name__} to {out.dtype} on a float64 tensor of shape " \
                                 f"{tuple(source.shape)}"
                return source.to(out.device)
        return out


def _float64(module: nn.Module) -> bool:
    first = next((p for p in module.parameters() if p.is_floating_point()), None)
    return first is not None and first.dtype == torch.float64


def _enter(module: nn.Module, args: Any, kwargs: Any) -> None:
    watch = type(module) not in _PLAIN and _float64(module)
    mode = KeepFloat64() if watch else None
    if mode is not None:
        mode.__enter__()
    module.__dict__.setdefault(_STACK, []).append(mode)


def _leave(module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
    stack = module.__dict__.get(_STACK)
    mode = stack.pop() if stack else None
    if mode is None:
        return
    mode.__exit__(None, None, None)
    if mode.first is not None:
        _CASTING.setdefault(type(module), mode.first)
    elif output is not None and type(module) not in _CASTING:
        _PLAIN.add(type(module))


def install(model: nn.Module) -> None:
    """Watch ``model``'s float64 forwards (once per model: a copy of a watched model is watched)."""
    if _enter in model._forward_pre_hooks.values():
        return
    model.register_forward_pre_hook(_enter, with_kwargs=True)
    model.register_forward_hook(_leave, with_kwargs=True, always_call=True)


def kept(model: nn.Module) -> str | None:
    """What a float64 run of ``model``'s class casts down and the harness kept, in words; None if nothing."""
    return _CASTING.get(type(model))
