"""Attention built from ``nn.LazyLinear`` (no input width until the first forward pass), its lengths argument
required (tests/inference/test_lazy.py); the harness gives the parameters their shapes with one forward pass
(reference/inference/lazy.py).

- ``Deferred(units, heads, p)``: ``forward(q_in, k_in, v_in, lengths)``, heads folded into the batch
  (``bmm``); ``lengths=None`` attends to every key. Bug twin ``DeferredUnscaled``: the scores are not scaled.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class Deferred(nn.Module):
    def __init__(self, units: int, heads: int, p: float) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.out = (nn.LazyLinear(units) for _ in range(4))
        self.drop = nn.Dropout(p)

    def fold(self, x: Tensor) -> Tensor:
        n, t, _ = x.shape
        return x.reshape(n, t, self.heads, -1).permute(0, 2, 1, 3).reshape(n * self.heads, t, -1)

    def scale(self, scores: Tensor, width: int) -> Tensor:
        return scores / math.sqrt(width)

    def forward(self, q_in: Tensor, k_in: Tensor, v_in: Tensor, lengths: Tensor | None) -> Tensor:
        q, k, v = self.fold(self.q(q_in)), self.fold(self.k(k_in)), self.fold(self.v(v_in))
        scores = self.scale(torch.bmm(q, k.transpose(1, 2)), q.shape[-1])
        if lengths is not None:
            keep = torch.arange(k.shape[1], device=k.device)[None, :] < lengths.repeat_interleave(self.heads)[:, None]
            scores = scores.masked_fill(~keep[:, None, :], -1e6)
        mixed = torch.bmm(self.drop(scores.softmax(-1)), v)
        n = q_in.shape[0]
        return self.out(mixed.reshape(n, self.heads, mixed.shape[1], -1).permute(0, 2, 1, 3).flatten(2))


class DeferredUnscaled(Deferred):
    def scale(self, scores: Tensor, width: int) -> Tensor:
        return scores
