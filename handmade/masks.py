"""Masks: the causal ("sequence") mask of section 3.2.3, padding masks, and how masks are checked and combined.

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
    return torch.full((sz, sz), float("-inf"), device=device, dtype=dtype or torch.float32).triu(diagonal=1)


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
    return torch.arange(max_len, device=lengths.device).unsqueeze(0) >= lengths.unsqueeze(1)


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


def sizes(x: Tensor, name: str, batch_first: bool) -> tuple[int, int | None]:
    """(length, batch) of ``x`` (L, N, E) [(N, L, E) when batch_first]; batch is None when ``x`` is unbatched (L, E)."""
    if x.dim() not in (2, 3):
        raise ValueError(
            f"{name} must be 2-D (L, E) unbatched or 3-D batched, got a {x.dim()}-D tensor of shape {tuple(x.shape)}"
        )
    if x.dim() == 2:
        return x.size(0), None
    return (x.size(1), x.size(0)) if batch_first else (x.size(0), x.size(1))


def canonical_masks(
    query: Tensor, key: Tensor, batch_first: bool, num_heads: int, names: tuple[str, str, str, str, str],
    attn_mask: Tensor | None, key_padding_mask: Tensor | None, is_causal: bool | None, need_weights: bool = False,
) -> tuple[Tensor | None, Tensor | None]:
    """Check one attention's masks against its query and key; return them additive in the query's dtype.

    ``names`` are the caller's for (query, key, attn_mask, key_padding_mask, is_causal): every public module
    calls this on its own arguments, so that a bad ``tgt_mask`` is reported as tgt_mask, not as attn_mask.
    Where the causal hint will replace attn_mask (no padding mask, no weights asked for), its dtype is not checked.
    """
    q_name, k_name, mask_name, kpm_name, hint_name = names
    (L, N), (S, _) = sizes(query, q_name, batch_first), sizes(key, k_name, batch_first)
    if is_causal and attn_mask is None:
        raise ValueError(
            f"{hint_name}=True needs {mask_name}: the flag is a hint that {mask_name} is causal, not a mask "
            "(use generate_square_subsequent_mask)"
        )
    shapes = {
        mask_name: {"(L, S)": (L, S), "(N*num_heads, L, S)": ((N or 1) * num_heads, L, S)},
        kpm_name: {"(S,)": (S,)} if N is None else {"(N, S)": (N, S)},
    }
    for name, mask in ((mask_name, attn_mask), (kpm_name, key_padding_mask)):
        if mask is not None and tuple(mask.shape) not in shapes[name].values():
            allowed = " or ".join(f"{label}={shape}" for label, shape in shapes[name].items())
            raise ValueError(f"{name} must have shape {allowed}, got {tuple(mask.shape)}")
    if len({m.dtype == torch.bool for m in (attn_mask, key_padding_mask) if m is not None}) == 2:  # as torch warns
        warnings.warn(
            f"Support for mismatched {kpm_name} and {mask_name} is deprecated. Use same type for both instead.",
            stacklevel=3,
        )
    if not (is_causal and key_padding_mask is None and not need_weights):
        attn_mask = to_additive(attn_mask, mask_name, query.dtype, accept_float32=not need_weights)
    return attn_mask, to_additive(key_padding_mask, kpm_name, query.dtype, accept_float32=not need_weights)
