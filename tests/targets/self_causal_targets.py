"""Layers that apply a causal mask of their own and take none (tests/inference/test_self_causal.py): checked
as an encoder or decoder layer, the built-in gets the causal mask they apply (reference/inference/options.py
CAUSAL_FIELDS).

- ``Lookback(d, h)``: a GPT-style pre-norm block; attention through ``F.scaled_dot_product_attention(...,
  is_causal=True)`` on separate q/k/v projections, tanh-free exact GELU. Bug twin ``LookbackPeek``: its own
  mask lets each position see the next one (``triu(diagonal=2)`` blocked).
- ``Tower(d, h, n_layer)``: ``Lookback`` blocks and a final norm, checked as an encoder (the stack's case
  carries the causal fields one level down).
- ``Autoregressive(d, h, ff)``: a post-norm decoder layer, ``forward(y, enc)``, whose self-attention builds a
  ``tril`` keep-mask from the sequence length; the cross-attention is unmasked.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Lookback(nn.Module):
    def __init__(self, d: int, h: int) -> None:
        super().__init__()
        self.h = h
        self.pre_attn, self.pre_mlp = nn.LayerNorm(d), nn.LayerNorm(d)
        self.wq, self.wk, self.wv, self.wo = (nn.Linear(d, d) for _ in range(4))
        self.fc, self.proj = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        a = self.pre_attn(x)
        q, k, v = (w(a).view(b, t, self.h, -1).transpose(1, 2) for w in (self.wq, self.wk, self.wv))
        x = x + self.wo(self.attend(q, k, v).transpose(1, 2).reshape(b, t, d))
        return x + self.proj(F.gelu(self.fc(self.pre_mlp(x))))


class LookbackPeek(Lookback):
    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        t = q.shape[-2]
        blocked = torch.ones(t, t, dtype=torch.bool, device=q.device).triu(diagonal=2)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=~blocked)


class Tower(nn.Module):
    def __init__(self, d: int, h: int, n_layer: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Lookback(d, h) for _ in range(n_layer))
        self.out = nn.LayerNorm(d)

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return self.out(x)


class Autoregressive(nn.Module):
    def __init__(self, d: int, h: int, ff: int) -> None:
        super().__init__()
        self.own = nn.MultiheadAttention(d, h, batch_first=True)
        self.other = nn.MultiheadAttention(d, h, batch_first=True)
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(3))
        self.ff = nn.Sequential(nn.Linear(d, ff), nn.ReLU(), nn.Linear(ff, d))

    def forward(self, y: Tensor, enc: Tensor) -> Tensor:
        t = y.shape[1]
        keep = torch.tril(torch.ones(t, t, dtype=torch.bool, device=y.device))
        y = self.norms[0](y + self.own(y, y, y, attn_mask=~keep, need_weights=False)[0])
        y = self.norms[1](y + self.other(y, enc, enc, need_weights=False)[0])
        return self.norms[2](y + self.ff(y))
