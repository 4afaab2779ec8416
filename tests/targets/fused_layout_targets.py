"""Attention whose packed q/k/v projection is laid out per head (rows ``[q_h; k_h; v_h]``, head after head),
each with one bug after the projection (tests/inference/test_fused_layout.py). The bug keeps every layout of
the map from verifying, so the layout is measured with the value rows zeroed (reference/inference/layouts.py)
and diagnosis names the bug, not the layout.

- ``Fused(hidden, n_heads)``: correct; the projection's output unflattened to (B, T, heads, 3, head) and
  unbound into q, k and v.
- ``FusedMergeBug``: the heads merged by reshaping (B, heads, T, head) straight to (B, T, hidden).
- ``FusedScaleBug``: the scores divided by sqrt(hidden) instead of sqrt(head).
"""

from __future__ import annotations

from torch import Tensor, nn


class Fused(nn.Module):
    def __init__(self, hidden: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads, self.head = n_heads, hidden // n_heads
        self.fused = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)

    def scores(self, q: Tensor, k: Tensor) -> Tensor:
        return q @ k.transpose(-1, -2) / self.head ** 0.5

    def merge(self, o: Tensor) -> Tensor:
        return o.transpose(1, 2).flatten(2)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.fused(x).unflatten(-1, (self.n_heads, 3, self.head)).transpose(1, 2).unbind(-2)
        return self.proj(self.merge(self.scores(q, k).softmax(-1) @ v))


class FusedMergeBug(Fused):
    def merge(self, o: Tensor) -> Tensor:
        return o.reshape(o.shape[0], o.shape[2], -1)


class FusedScaleBug(Fused):
    def scores(self, q: Tensor, k: Tensor) -> Tensor:
        return q @ k.transpose(-1, -2) / (self.head * self.n_heads) ** 0.5
