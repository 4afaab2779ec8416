"""FLOPs of a step (``torch.utils.flop_counter`` plus the attention it cannot see) and the device's matmul limit.

FlopCounterMode counts matmuls (mm, addmm, bmm, CUDA's fused attention) by formula. It has no formula for
CPU's fused attention kernel ``_scaled_dot_product_flash_attention_for_cpu`` (what the built-in's slow path
calls on CPU) nor for its backward, and it sees the built-in's fast-path kernels as single ops with no
formula. So the workload's FLOPs are counted once per case on the built-in with its fast path off, with
the matmuls of every call to the CPU fused kernel added from its shapes (:class:`UncountedAttention`); every
implementation's GFLOP/s uses that same count. Padding does not reduce it: it is the dense workload.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.benchmark import Timer
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from benchmarks.presets import Size
from benchmarks.timing import make_timer

aten = torch.ops.aten


def _attention_matmuls(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> int:
    """q kᵀ and p v: 2 flops per multiply-add, q (N, H, L, D), k (N, H, S, D), v (N, H, S, Dv)."""
    *batch, length, head_dim = query.shape
    keys, value_dim = key.shape[-2], value.shape[-1]
    return 2 * batch[0] * batch[1] * length * keys * (head_dim + value_dim)


# Ops that FlopCounterMode leaves at 0 -> their matmul FLOPs from the arguments.
UNCOUNTED: dict[object, Callable[..., int]] = {
    aten._scaled_dot_product_flash_attention_for_cpu: lambda q, k, v, *_, **__: _attention_matmuls(q, k, v),
    # backward: dv = pᵀ dO, dp = dO vᵀ, dq = ds k, dk = dsᵀ q, twice the forward (FlopCounterMode's convention)
    aten._scaled_dot_product_flash_attention_for_cpu_backward: (
        lambda grad, q, k, v, *_, **__: 2 * _attention_matmuls(q, k, v)
    ),
}


class UncountedAttention(TorchDispatchMode):
    """Add up the matmul FLOPs of the fused attention kernels that FlopCounterMode has no formula for."""

    def __init__(self) -> None:
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        packet = func.overloadpacket
        if packet in UNCOUNTED and packet not in flop_registry:
            self.flops += UNCOUNTED[packet](*args, **(kwargs or {}))
        return func(*args, **(kwargs or {}))


@dataclass(frozen=True)
class FlopCount:
    counted: int  # what FlopCounterMode saw
    added: int  # fused-attention matmuls it did not see

    @property
    def total(self) -> int:
        return self.counted + self.added


def count_flops(step: Callable[[], object]) -> FlopCount:
    """Run ``step`` once and count its FLOPs (call it under no_grad rather than inference_mode, so that
    composite ops reach the counter decomposed)."""
    with FlopCounterMode(display=False) as counter, UncountedAttention() as uncounted:
        step()
    return FlopCount(counter.get_total_flops(), uncounted.flops)


def transformer_flops(size: Size, mode: str) -> int:
    """nn.Transformer's matmul FLOPs by formula (source and target of length L, batch N, model E, FFN F).

    Forward: per encoder layer 8NLE² (q, k, v, out projections) + 4NL²E (q kᵀ, p v) + 4NLEF (FFN); per
    decoder layer the same for self-attention and FFN plus cross-attention, 8NLE² + 4NL²E. Train adds the
    backward, twice the forward, less the input gradients of the first layers' q/k/v projections
    (src and tgt do not require grad): 6NLE² per stack.
    """
    n, length, e, f = size.batch, size.seq_len, size.d_model, size.dim_feedforward
    block = 8 * n * length * e * e + 4 * n * length * length * e  # one attention
    ffn = 4 * n * length * e * f
    forward = size.num_encoder_layers * (block + ffn) + size.num_decoder_layers * (2 * block + ffn)
    if mode == "eval":
        return forward
    return 3 * forward - 2 * 6 * n * length * e * e


MATMUL_LIMIT = "matmul limit"


def matmul_timer(device: str, dtype: torch.dtype, threads: int, clock: str = "wall") -> tuple[Timer, int]:
    """A Timer of one dense n x n by n x n product on ``device`` and its FLOPs: the device's matmul limit.

    The runner times it in the same rounds as the implementations, so it sees the same machine state.
    """
    n = 4096 if device.startswith("cuda") else 1024
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    return make_timer(lambda: a @ b, MATMUL_LIMIT, MATMUL_LIMIT, MATMUL_LIMIT, threads, clock), 2 * n**3
