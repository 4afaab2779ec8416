"""Bugs inside equation 1, softmax(q kᵀ / sqrt(D) + mask) v: each a MultiheadAttention whose ``attend`` errs."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

import handmade
from equivalence_tests.zoo._base import BugAdapter, replace_attention
from handmade.attention import scaled_dot_product_attention


def softmax_attention(scores: Tensor, v: Tensor, mask: Tensor | None, dropout_p: float, dim: int = -1) -> Tensor:
    """handmade's masking, softmax (over ``dim``) and dropout on ready-made scores; rows fully blocked give 0."""
    blocked = None
    if mask is not None:
        blocked = torch.isneginf(mask).all(dim=-1, keepdim=True)
        scores = (scores + mask).masked_fill(blocked, 0.0)
    weights = F.softmax(scores, dim=dim)
    weights = weights if blocked is None else weights.masked_fill(blocked, 0.0)
    return F.dropout(weights, p=dropout_p) if dropout_p > 0.0 else weights


class NoScale(handmade.MultiheadAttention):
    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout_p: float) -> tuple[Tensor, Tensor]:
        weights = softmax_attention(q @ k.transpose(-2, -1), v, mask, dropout_p)  # no 1/sqrt(D)
        return weights @ v, weights


class ScaleByModelWidth(handmade.MultiheadAttention):
    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout_p: float) -> tuple[Tensor, Tensor]:
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.embed_dim)  # sqrt(d_model), not sqrt(head size)
        weights = softmax_attention(scores, v, mask, dropout_p)
        return weights @ v, weights


class SoftmaxOverQueries(handmade.MultiheadAttention):
    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout_p: float) -> tuple[Tensor, Tensor]:
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
        weights = softmax_attention(scores, v, mask, dropout_p, dim=-2)  # normalises each key's column
        return weights @ v, weights


class MaskAfterSoftmax(handmade.MultiheadAttention):
    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout_p: float) -> tuple[Tensor, Tensor]:
        weights = F.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.size(-1)), dim=-1)
        if mask is not None:  # blocked keys zeroed after the softmax: rows no longer sum to 1
            weights = weights.masked_fill(torch.isneginf(mask), 0.0)
        weights = F.dropout(weights, p=dropout_p) if dropout_p > 0.0 else weights
        return weights @ v, weights


class SoftmaxInFloat32(handmade.MultiheadAttention):
    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout_p: float) -> tuple[Tensor, Tensor]:
        scores = (q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))).float()  # "softmax is unstable in half"
        weights = softmax_attention(scores, v, None if mask is None else mask.float(), dropout_p).to(q.dtype)
        return weights @ v, weights


class AttentionDropoutAlways(handmade.MultiheadAttention):
    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout_p: float) -> tuple[Tensor, Tensor]:
        return scaled_dot_product_attention(q, k, v, mask, self.dropout)  # self.dropout, whatever the mode


def _everywhere(cls: type) -> object:
    return lambda model, config: replace_attention(model, config, cls)


scale_missing = BugAdapter("attention scores not divided by sqrt(head size)", _everywhere(NoScale))
scale_by_d_model = BugAdapter("attention scores divided by sqrt(d_model) instead of sqrt(d_model / nhead)",
                              _everywhere(ScaleByModelWidth))
softmax_over_queries = BugAdapter("softmax over the query axis (dim=-2) instead of the key axis",
                                  _everywhere(SoftmaxOverQueries))
mask_after_softmax = BugAdapter("blocked keys zeroed after the softmax (rows no longer sum to 1; additive masks lost)",
                                _everywhere(MaskAfterSoftmax))
softmax_in_float32 = BugAdapter("attention scores cast to float32 for the softmax, whatever the model's dtype",
                                _everywhere(SoftmaxInFloat32))
attention_dropout_in_eval = BugAdapter("attention-probability dropout uses self.dropout even in eval mode",
                                       _everywhere(AttentionDropoutAlways))
