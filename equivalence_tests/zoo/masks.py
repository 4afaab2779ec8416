"""Mask bugs: each a MultiheadAttention that misreads its masks (``read_masks``) before handmade's own code runs."""

from __future__ import annotations

import torch
from torch import Tensor

import handmade
from equivalence_tests.zoo._base import BugAdapter, replace_attention
from handmade.masks import to_additive

Masks = tuple[Tensor | None, Tensor | None, bool]  # key_padding_mask, attn_mask, is_causal


class MisreadsMasks(handmade.MultiheadAttention):
    """handmade attention, but the masks pass through ``read_masks`` first: a subclass plants the bug there."""

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        kpm, attn_mask, is_causal = self.read_masks(query, key, key_padding_mask, attn_mask, is_causal, need_weights)
        return super().forward(query, key, value, kpm, need_weights, attn_mask, average_attn_weights, is_causal)

    def read_masks(self, query: Tensor, key: Tensor, kpm: Tensor | None, attn_mask: Tensor | None,
                   is_causal: bool, need_weights: bool) -> Masks:
        return kpm, attn_mask, is_causal

    def lengths(self, query: Tensor, key: Tensor) -> tuple[int, int, int]:
        """(N, L, S) of the call; N is 1 for unbatched input."""
        seq = 1 if self.batch_first and query.dim() == 3 else 0
        batch = query.size(1 - seq) if query.dim() == 3 else 1
        return batch, query.size(seq), key.size(seq)


class InvertedBoolMasks(MisreadsMasks):
    def read_masks(self, query, key, kpm, attn_mask, is_causal, need_weights) -> Masks:
        def flip(m: Tensor | None) -> Tensor | None:  # True taken to mean "attend"
            return ~m if m is not None and m.dtype == torch.bool else m

        return flip(kpm), flip(attn_mask), is_causal


class FloatMasksAsBool(MisreadsMasks):
    def read_masks(self, query, key, kpm, attn_mask, is_causal, need_weights) -> Masks:
        def as_bool(m: Tensor | None) -> Tensor | None:  # mask.bool(): every non-zero entry blocks
            return m if m is None or m.dtype == torch.bool else m != 0

        return as_bool(kpm), as_bool(attn_mask), is_causal


class PaddingOnQueries(MisreadsMasks):
    def read_masks(self, query, key, kpm, attn_mask, is_causal, need_weights) -> Masks:
        if kpm is None:
            return kpm, attn_mask, is_causal
        n, length, keys = self.lengths(query, key)
        pad = to_additive(kpm, "key_padding_mask", query.dtype).reshape(n, 1, -1, 1)  # (N, 1, L, 1): rows
        base = to_additive(attn_mask, "attn_mask", query.dtype)
        base = torch.zeros(length, keys, dtype=query.dtype, device=query.device) if base is None else base
        base = base.view(n, self.num_heads, length, keys) if base.dim() == 3 else base
        merged = (base + pad).expand(n, self.num_heads, length, keys)
        return None, merged.reshape(n * self.num_heads, length, keys), False


class CausalOffByOne(MisreadsMasks):
    def read_masks(self, query, key, kpm, attn_mask, is_causal, need_weights) -> Masks:
        if is_causal and kpm is None and not need_weights:  # the hint: build the causal mask here
            _, length, keys = self.lengths(query, key)
            return None, torch.ones(length, keys, dtype=torch.bool).triu(diagonal=2), False  # sees t+1 too
        return kpm, attn_mask, is_causal


class HeadMajorMaskRows(MisreadsMasks):
    def read_masks(self, query, key, kpm, attn_mask, is_causal, need_weights) -> Masks:
        if attn_mask is not None and attn_mask.dim() == 3:  # row h*N + n read as (batch n, head h)
            rows = attn_mask.view(self.num_heads, -1, *attn_mask.shape[1:]).transpose(0, 1)
            attn_mask = rows.reshape(attn_mask.shape)
        return kpm, attn_mask, is_causal


class IgnoresAttnMask(MisreadsMasks):
    def read_masks(self, query, key, kpm, attn_mask, is_causal, need_weights) -> Masks:
        return kpm, None, False


class IgnoresPadding(MisreadsMasks):
    def read_masks(self, query, key, kpm, attn_mask, is_causal, need_weights) -> Masks:
        return None, attn_mask, is_causal


def _planted(cls: type, which: str = "all") -> object:
    return lambda model, config: replace_attention(model, config, cls, which)


bool_mask_inverted = BugAdapter("bool masks read as True = attend (torch: True = blocked)", _planted(InvertedBoolMasks))
float_mask_as_bool = BugAdapter("float masks read as bool (mask.bool()): additive values become blocks",
                                _planted(FloatMasksAsBool))
padding_on_query_axis = BugAdapter("key padding mask applied to the query axis (rows) instead of the keys",
                                   _planted(PaddingOnQueries))
causal_off_by_one = BugAdapter("causal mask built from the is_causal hint with triu(diagonal=2): t sees t+1",
                               _planted(CausalOffByOne))
per_head_mask_head_major = BugAdapter("3-D attn_mask rows read head-major (h*N + n) instead of batch-major (n*H + h)",
                                      _planted(HeadMajorMaskRows))
tgt_mask_ignored = BugAdapter("decoder self-attention drops tgt_mask (and its causal hint)",
                              _planted(IgnoresAttnMask, "decoder_self"))
memory_padding_ignored = BugAdapter("cross-attention drops memory_key_padding_mask", _planted(IgnoresPadding, "cross"))
