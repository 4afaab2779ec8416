"""Masks: the causal ("sequence") mask of section 3.2.3, padding masks, and how masks combine.

Convention (torch's): a bool mask marks with ``True`` what may NOT be attended; a float mask is added to
the attention scores, so ``0`` keeps and ``-inf`` blocks.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor


def generate_square_subsequent_mask(
    sz: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> Tensor:
    """Float causal mask (sz, sz): 0 on and below the diagonal, -inf above (as nn.Transformer's)."""
    if sz < 0:
        raise ValueError(f"mask size must be non-negative, got sz={sz}")
    full = torch.full((sz, sz), float("-inf"), device=device, dtype=dtype or torch.float32)
    return torch.triu(full, diagonal=1)


def subsequent_mask(size: int, device: torch.device | str | None = None) -> Tensor:
    """Bool causal mask (size, size): True above the diagonal, where a position would see the future."""
    if size < 0:
        raise ValueError(f"mask size must be non-negative, got size={size}")
    return torch.ones(size, size, dtype=torch.bool, device=device).triu(diagonal=1)


def padding_mask(lengths: Tensor, max_len: int | None = None) -> Tensor:
    """Bool key padding mask (N, S) from sequence lengths: True at the padded positions."""
    if lengths.dim() != 1:
        raise ValueError(f"lengths must be 1-D (N,), got shape {tuple(lengths.shape)}")
    max_len = int(lengths.max()) if max_len is None else max_len
    positions = torch.arange(max_len, device=lengths.device)
    return positions.unsqueeze(0) >= lengths.unsqueeze(1)


def top_left_causal_mask(query_len: int, key_len: int, device: torch.device) -> Tensor:
    """Bool (L, S) mask blocking key j for query i when j > i: what an ``is_causal`` hint stands for."""
    return torch.ones(query_len, key_len, dtype=torch.bool, device=device).triu(diagonal=1)


def to_additive(mask: Tensor | None, name: str, dtype: torch.dtype, accept_float32: bool = False) -> Tensor | None:
    """Turn a bool mask into 0/-inf of ``dtype``; check that a float mask has ``dtype`` (or float32, if accepted).

    torch's attention kernel (the layers' path) also takes a float32 mask for any input dtype, such as the
    default ``generate_square_subsequent_mask()`` with a float64 or float16 model; the weights path does not.
    """
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask, float("-inf"))
    if not mask.is_floating_point():
        raise TypeError(f"{name} must be a bool or floating point tensor, got dtype {mask.dtype}")
    if mask.dtype != dtype and not (accept_float32 and mask.dtype == torch.float32):
        allowed = f"{dtype} or torch.float32" if accept_float32 else f"{dtype}"
        raise TypeError(f"a float {name} must have the input's dtype ({allowed}), got {name}.dtype={mask.dtype}")
    return mask.to(dtype)


def warn_if_mixed(mask: Tensor | None, name: str, other: Tensor | None, other_name: str) -> None:
    """Warn, as torch does, when a bool mask is combined with a float one."""
    if mask is not None and other is not None and (mask.dtype == torch.bool) != (other.dtype == torch.bool):
        warnings.warn(
            f"Support for mismatched {name} and {other_name} is deprecated. Use same type for both instead.",
            stacklevel=3,
        )
