"""Which kernels a step ran: whether the built-in's fast paths and nested tensors actually fired."""

from __future__ import annotations

import collections
from collections.abc import Callable

from torch.utils._python_dispatch import TorchDispatchMode

# aten op (overload packet name) -> the path it reveals (nn_transformer notes, section 4).
PATH_OPS = {
    "aten._transformer_encoder_layer_fwd": "encoder_layer_fastpath",
    "aten._native_multi_head_attention": "mha_fastpath",
    "aten._nested_tensor_from_mask": "nested_tensor",
    "aten._nested_tensor_from_mask_left_aligned": "nested_tensor",
}


class OpRecorder(TorchDispatchMode):
    """Count the aten ops that reach the dispatcher (an op's own internal calls are not seen)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def paths_taken(counts: dict[str, int]) -> dict[str, int]:
    """How many calls went down each fast path, from an OpRecorder's counts."""
    paths = dict.fromkeys(sorted(set(PATH_OPS.values())), 0)
    for op, path in PATH_OPS.items():
        paths[path] += counts.get(op, 0)
    return paths


def record_paths(step: Callable[[], object]) -> dict[str, int]:
    """Run ``step`` once under an OpRecorder; return the fast-path calls it made."""
    with OpRecorder() as recorder:
        step()
    return paths_taken(recorder.counts)
