"""Targets that cast down inside their forward, as mixed-precision code does (tests/inference/test_keep64.py).
Run in float64 each crashes or computes in float32 unless the harness keeps the casts float64.

- ``Upcast(n_embd, n_head, ffw)``: a pre-norm encoder layer whose block body runs on ``src.to(torch.float32)``
  through its own ``nn.MultiheadAttention`` and returns ``.to(src.dtype)``. Bug twin ``UpcastBug``: the
  feed-forward's residual is added after its norm instead of around it.
- ``Softmax32(width, n_heads)``: self-attention written with einsum, its softmax taken on ``scores.float()``
  and cast back with ``type_as``.
- ``TypedFeedForward(model_dim, hidden_dim)``: a feed-forward whose input goes through
  ``.type(torch.float32)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Upcast(nn.Module):
    def __init__(self, n_embd: int, n_head: int, ffw: int) -> None:
        super().__init__()
        self.ln_a, self.ln_b = nn.LayerNorm(n_embd), nn.LayerNorm(n_embd)
        self.att = nn.MultiheadAttention(n_embd, n_head, batch_first=True)
        self.up, self.down = nn.Linear(n_embd, ffw), nn.Linear(ffw, n_embd)

    def forward(self, src: Tensor, src_mask: Tensor | None = None) -> Tensor:
        h = src.to(torch.float32)
        a = self.ln_a(h)
        h = h + self.att(a, a, a, attn_mask=src_mask, need_weights=False)[0]
        h = h + self.down(F.relu(self.up(self.ln_b(h))))
        return h.to(src.dtype)


class UpcastBug(Upcast):
    def forward(self, src: Tensor, src_mask: Tensor | None = None) -> Tensor:
        h = src.to(torch.float32)
        a = self.ln_a(h)
        h = h + self.att(a, a, a, attn_mask=src_mask, need_weights=False)[0]
        h = self.ln_b(h)
        h = h + self.down(F.relu(self.up(h)))  # the residual is taken after the norm
        return h.to(src.dtype)


class Softmax32(nn.Module):
    def __init__(self, width: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.to_q, self.to_k, self.to_v = (nn.Linear(width, width) for _ in range(3))
        self.to_out = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        b, t, c = x.shape
        q, k, v = (f(x).view(b, t, self.n_heads, c // self.n_heads) for f in (self.to_q, self.to_k, self.to_v))
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * (c // self.n_heads) ** -0.5
        weights = F.softmax(scores.float(), dim=-1).type_as(scores)
        return self.to_out(torch.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, t, c))


class TypedFeedForward(nn.Module):
    def __init__(self, model_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.inner = nn.Sequential(nn.Linear(model_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, model_dim))

    def forward(self, tokens: Tensor) -> Tensor:
        return self.inner(tokens.type(torch.float32)).to(tokens.dtype)
