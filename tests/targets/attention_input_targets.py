"""Attentions that mix up their inputs at the call site, each with its corrected twin: the attention level's
draws must give query, key and value tensors of their own for these to fail.

- ``EinsumAttention(d_model, nhead)``: one packed ``(3E, E)`` projection tensor read through ``einsum``,
  batch-first, ``forward(queries, keys, values, mask=None)`` with torch's mask meaning (True or -inf =
  blocked); ``SwappedEinsumAttention`` is the same module whose ``forward`` hands the keys to the values'
  slot and the values to the keys' (``self.attend(queries, values, keys, ...)``).
- ``ContextAttention(width, heads)``: functional style (``F.linear`` on rows of one ``[W_k; W_v]`` tensor,
  ``bmm`` over ``(N * heads, len, d)``), sequence-first, ``forward(x, context)`` taking keys and values from one
  context tensor and no mask; ``QueryKeyedAttention`` is its twin that projects the keys from ``x`` instead.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class EinsumAttention(nn.Module):
    def __init__(self, d_model: int, nhead: int) -> None:
        super().__init__()
        self.heads = nhead
        self.packed = nn.Parameter(torch.empty(3 * d_model, d_model))
        self.packed_bias = nn.Parameter(torch.zeros(3 * d_model))
        self.mix = nn.Linear(d_model, d_model)
        nn.init.xavier_uniform_(self.packed)

    def attend(self, queries: Tensor, keys: Tensor, values: Tensor, mask: Tensor | None) -> Tensor:
        w_q, w_k, w_v = self.packed.chunk(3)
        b_q, b_k, b_v = self.packed_bias.chunk(3)
        split = lambda t: t.unflatten(-1, (self.heads, -1))  # noqa: E731  (n, len, e) -> (n, len, h, d)
        q = split(torch.einsum("nle,fe->nlf", queries, w_q) + b_q)
        k = split(torch.einsum("nse,fe->nsf", keys, w_k) + b_k)
        v = split(torch.einsum("nse,fe->nsf", values, w_v) + b_v)
        scores = torch.einsum("nlhd,nshd->nhls", q, k) / math.sqrt(q.shape[-1])
        if mask is not None:
            scores = scores.masked_fill(mask, -math.inf) if mask.dtype == torch.bool else scores + mask
        mixed = torch.einsum("nhls,nshd->nlhd", scores.softmax(dim=-1), v)
        return self.mix(mixed.flatten(-2))

    def forward(self, queries: Tensor, keys: Tensor, values: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.attend(queries, keys, values, mask)


class SwappedEinsumAttention(EinsumAttention):
    def forward(self, queries: Tensor, keys: Tensor, values: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.attend(queries, values, keys, mask)  # the bug: keys and values change places


class ContextAttention(nn.Module):
    """Sequence-first (L, N, E) queries over an (S, N, E) context; keys and values both come from the context."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(width, width, bias=False)
        self.to_kv = nn.Linear(width, 2 * width, bias=False)  # [W_k; W_v]
        self.to_out = nn.Linear(width, width, bias=False)  # no bias anywhere: nn.MultiheadAttention(bias=False)

    def keyed(self, x: Tensor, context: Tensor) -> Tensor:
        """The stream the keys are projected from."""
        return context

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        w_k, w_v = self.to_kv.weight.chunk(2)
        length, batch, width = x.shape

        def per_head(t: Tensor) -> Tensor:  # (len, N, E) -> (N * heads, len, E / heads)
            return t.reshape(t.shape[0], batch * self.heads, width // self.heads).transpose(0, 1)

        q, k = per_head(self.to_q(x)), per_head(F.linear(self.keyed(x, context), w_k))
        v = per_head(F.linear(context, w_v))
        weights = torch.softmax(torch.bmm(q, k.transpose(1, 2)) / math.sqrt(width // self.heads), dim=-1)
        return self.to_out(torch.bmm(weights, v).transpose(0, 1).reshape(length, batch, width))


class QueryKeyedAttention(ContextAttention):
    def keyed(self, x: Tensor, context: Tensor) -> Tensor:
        return x  # the bug: keys projected from the queries' stream, not from the context
