"""Targets whose sizes are fixed by the object, not by the drawn case: instances and zero-argument factories,
each in a style unlike handmade's, with a planted bug next to each (tests/inference/test_fixed_sizes.py).

- ``gpt``: an instance of a GPT-style block stack as a video course writes it (n_embd=48, n_head=3,
  n_layer=2): one small module per head in a ModuleList, a ``tril`` buffer, ``nn.Sequential`` blocks,
  pre-norm, a 4 x n_embd GELU MLP and a final ``ln_f``; ``gpt_scaled_by_width`` scales scores by
  1/sqrt(n_embd) instead of 1/sqrt(head size).
- ``make_norm``: a factory of a LayerNorm written by hand (``gain``/``shift``, eps 1e-6 inside the root),
  width 10; ``make_unbiased_norm``: the same with the unbiased variance (``x.std``), the classic slip.
- ``attention``: an instance of batch-first multi-head attention with 4 heads over width 20, four Linears
  ``W_q``/``W_k``/``W_v``/``W_o``, taking torch's masks (bool True = blocked, or additive; per-head ones
  too) and returning the output only; ``attention_scaled_by_width`` has the scaling bug.
- ``FeedForward``: a class for the feed-forward level (``w_1``/``w_2``, relu), an example of what the
  inference path builds for handmade's levels with no feed-forward class of their own.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Head(nn.Module):
    def __init__(self, n_embd: int, head_size: int, block_size: int, by_width: bool) -> None:
        super().__init__()
        self.key = nn.Linear(n_embd, head_size)
        self.query = nn.Linear(n_embd, head_size)
        self.value = nn.Linear(n_embd, head_size)
        self.register_buffer("tril", torch.tril(torch.ones(block_size, block_size)))
        self.scale = n_embd ** -0.5 if by_width else head_size ** -0.5

    def forward(self, x: Tensor) -> Tensor:
        T = x.shape[1]
        k, q = self.key(x), self.query(x)
        wei = (q @ k.transpose(-2, -1)) * self.scale
        wei = wei.masked_fill(self.tril[:T, :T] == 0, float("-inf")).softmax(dim=-1)
        return wei @ self.value(x)


class Heads(nn.Module):
    def __init__(self, n_embd: int, n_head: int, block_size: int, by_width: bool) -> None:
        super().__init__()
        self.heads = nn.ModuleList(Head(n_embd, n_embd // n_head, block_size, by_width) for _ in range(n_head))
        self.proj = nn.Linear(n_embd, n_embd)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(torch.cat([h(x) for h in self.heads], dim=-1))


class GPTBlock(nn.Module):
    def __init__(self, n_embd: int, n_head: int, block_size: int, by_width: bool) -> None:
        super().__init__()
        self.sa = Heads(n_embd, n_head, block_size, by_width)
        self.ffwd = nn.Sequential(nn.Linear(n_embd, 4 * n_embd), nn.GELU(), nn.Linear(4 * n_embd, n_embd))
        self.ln1, self.ln2 = nn.LayerNorm(n_embd), nn.LayerNorm(n_embd)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.sa(self.ln1(x))
        return x + self.ffwd(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, n_embd: int, n_head: int, n_layer: int, block_size: int = 32, by_width: bool = False) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[GPTBlock(n_embd, n_head, block_size, by_width) for _ in range(n_layer)])
        self.ln_f = nn.LayerNorm(n_embd)

    def forward(self, x: Tensor) -> Tensor:  # (B, T, C)
        return self.ln_f(self.blocks(x))


gpt = GPT(n_embd=48, n_head=3, n_layer=2)
gpt_scaled_by_width = GPT(n_embd=48, n_head=3, n_layer=2, by_width=True)


class Norm(nn.Module):
    def __init__(self, features: int, eps: float = 1e-6, unbiased: bool = False) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.ones(features))
        self.shift = nn.Parameter(torch.zeros(features))
        self.eps, self.unbiased = eps, unbiased

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(-1, keepdim=True)
        var = x.var(-1, keepdim=True, unbiased=self.unbiased)
        return self.gain * (x - mean) / torch.sqrt(var + self.eps) + self.shift


def make_norm() -> nn.Module:
    return Norm(10)


def make_unbiased_norm() -> nn.Module:
    return Norm(10, unbiased=True)


class Attention(nn.Module):
    def __init__(self, d_model: int, heads: int, by_width: bool = False) -> None:
        super().__init__()
        self.h, self.d_k = heads, d_model // heads
        self.W_q, self.W_k, self.W_v, self.W_o = (nn.Linear(d_model, d_model) for _ in range(4))
        self.scale = 1 / math.sqrt(d_model if by_width else self.d_k)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None) -> Tensor:  # (N, L, E)
        N, L, E = q.shape
        split = lambda t: t.view(N, -1, self.h, self.d_k).transpose(1, 2)  # noqa: E731
        Q, K, V = split(self.W_q(q)), split(self.W_k(k)), split(self.W_v(v))  # noqa: N806
        scores = Q @ K.transpose(-2, -1) * self.scale
        if attn_mask is not None:
            if attn_mask.dim() == 3:  # per head: (N * h, L, S)
                attn_mask = attn_mask.view(N, self.h, L, -1)
            scores = scores.masked_fill(attn_mask, float("-inf")) if attn_mask.dtype == torch.bool \
                else scores + attn_mask
        out = scores.softmax(-1) @ V
        return self.W_o(out.transpose(1, 2).reshape(N, L, E))


attention = Attention(20, 4)
attention_scaled_by_width = Attention(20, 4, by_width=True)


class FeedForward(nn.Module):
    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.w_1, self.w_2 = nn.Linear(d_model, d_ff), nn.Linear(d_ff, d_model)

    def forward(self, x: Tensor) -> Tensor:
        return self.w_2(F.relu(self.w_1(x)))
