"""A learner's first multi-head attention, as tutorials teach it: four Linears, batch-first, keep-masks.

``MultiHeadAttention(d_model, num_heads)`` projects with ``W_q``, ``W_k``, ``W_v``, splits the heads,
applies softmax(q k^T / sqrt(d_k)) v with ``masked_fill(mask == 0, -inf)`` (a keep-mask: 1 = may attend,
broadcast against (N, H, L, S)), merges the heads and projects with ``W_o``. It returns the output only.

``MergeWithoutTranspose`` is the classic bug: the heads are merged with ``view`` straight from
(N, H, L, D), without the transpose back to (N, L, H, D), so positions and heads are scrambled.

Check it: ``parity check examples.learner_attention:MultiHeadAttention --as attention``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class MultiHeadAttention(nn.Module):
    def __init__(self, d_model: int, num_heads: int) -> None:
        super().__init__()
        assert d_model % num_heads == 0, "d_model must be divisible by num_heads"
        self.d_model, self.num_heads, self.d_k = d_model, num_heads, d_model // num_heads
        self.W_q = nn.Linear(d_model, d_model)
        self.W_k = nn.Linear(d_model, d_model)
        self.W_v = nn.Linear(d_model, d_model)
        self.W_o = nn.Linear(d_model, d_model)

    def split_heads(self, x: Tensor) -> Tensor:
        batch, length, _ = x.size()
        return x.view(batch, length, self.num_heads, self.d_k).transpose(1, 2)

    def combine_heads(self, x: Tensor) -> Tensor:
        batch, _, length, _ = x.size()
        return x.transpose(1, 2).contiguous().view(batch, length, self.d_model)

    def scaled_dot_product_attention(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(self.d_k)
        if mask is not None:
            scores = scores.masked_fill(mask == 0, float("-inf"))
        return torch.matmul(torch.softmax(scores, dim=-1), v)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None = None) -> Tensor:
        q = self.split_heads(self.W_q(query))
        k = self.split_heads(self.W_k(key))
        v = self.split_heads(self.W_v(value))
        return self.W_o(self.combine_heads(self.scaled_dot_product_attention(q, k, v, mask)))


class MergeWithoutTranspose(MultiHeadAttention):
    """The bug: (N, H, L, D) viewed as (N, L, E) directly, heads and positions interleaved wrongly."""

    def combine_heads(self, x: Tensor) -> Tensor:
        batch, _, length, _ = x.size()
        return x.contiguous().view(batch, length, self.d_model)
