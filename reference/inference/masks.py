"""Masks between torch's conventions and a hand-written attention's.

torch blocks where a bool mask is True or a float mask is -inf, takes (L, S) or (N*H, L, S) attention
masks and a separate (N, S) key-padding mask. Hand-written attention often takes one mask broadcasting
against its (N, H, L, S) scores, and often a keep-mask (True/1 = may attend), which is only ever used when
the user declares it.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from reference.targets.contract import NotSupportedError


def is_causal_mask(mask: Tensor) -> bool:
    """Whether ``mask`` (L, L) blocks exactly the future: True/-inf above the diagonal, False/0 elsewhere."""
    if mask.dim() != 2 or mask.shape[0] != mask.shape[1]:
        return False
    above = torch.ones(mask.shape, dtype=torch.bool, device=mask.device).triu(1)
    blocked = mask if mask.dtype == torch.bool else torch.isneginf(mask)
    allowed_ok = mask.dtype == torch.bool or bool((mask[~above] == 0).all())
    return bool(torch.equal(blocked, above)) and allowed_ok


def same(a: Tensor, b: Tensor) -> bool:
    """One input given twice (the engine passes copies, so equal values count)."""
    return a is b or (a.shape == b.shape and bool(torch.equal(a.detach(), b.detach())))


def keep(mask: Tensor) -> Tensor:
    """torch's block-mask (True or -inf = blocked) as a keep-mask (True = may attend)."""
    if mask.dtype == torch.bool:
        return ~mask
    if bool(((mask == 0) | torch.isneginf(mask)).all()):
        return mask == 0
    raise NotSupportedError("a float mask with values other than 0 and -inf has no keep-mask form")


def merged(attn: Tensor | None, padding: Tensor | None, given: Mapping[str, Tensor], batch_first: bool) -> Tensor:
    """torch's attn_mask ((L, S) or (N*H, L, S)) and key_padding_mask (N, S) as one mask broadcasting
    against scores (N, H, L, S), blocked where either blocks (bool, or additive float)."""
    query = given["query"]
    batched = query.dim() == 3
    N = query.shape[0 if batch_first else 1] if batched else 1
    parts = []
    if attn is not None:
        if attn.dim() == 3:
            attn = attn.reshape(N, -1, *attn.shape[-2:]) if batched else attn
        parts.append(attn)
    if padding is not None:
        parts.append(padding[:, None, None, :] if batched else padding[None, None, :])
    if len(parts) == 1:
        return parts[0]
    a, b = parts
    if a.dtype == torch.bool and b.dtype == torch.bool:
        return a | b
    def additive(m: Tensor, like: Tensor) -> Tensor:
        return m if m.is_floating_point() else torch.zeros(m.shape, dtype=like.dtype).masked_fill(m, float("-inf"))
    return additive(a, query) + additive(b, query)
