"""GPT-style pieces written the ways public GPT code writes them, each a pattern that once failed correct code.

- ``CausalHeadAttention(cfg)``: self-attention with one input and no mask argument, always causal through a
  ``tril`` buffer sized by ``cfg.block_size``, q/k/v as ``tokeys``/``toqueries``/``tovalues`` used keys first
  (the order of use disagrees with the names: the names decide).
- ``LambdaBlock(cfg)``: a pre-norm block whose MLP is a ``lambda`` over a ``ModuleDict`` built in ``__init__``
  (a deep copy of the block keeps calling the original's modules unless the closure follows the copy).
- ``Norm(ndim, bias)``: a LayerNorm whose width is called ``ndim``.
- ``NeedsVocab(cfg)``: reads ``cfg.vocab_size``, which no level sets: a clear construction error, no traceback.

``cfg`` is any object with ``n_embd``, ``n_head``, ``dropout`` (minGPT's ``attn_pdrop`` works too), ``block_size``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class CausalHeadAttention(nn.Module):
    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.h, e = cfg.n_head, cfg.n_embd
        self.tokeys, self.toqueries, self.tovalues = (nn.Linear(e, e) for _ in range(3))
        self.unifyheads = nn.Linear(e, e)
        self.register_buffer("tril", torch.tril(torch.ones(cfg.block_size, cfg.block_size, dtype=torch.bool)))

    def forward(self, x: Tensor) -> Tensor:  # (B, T, C)
        b, t, c = x.shape
        k = self.tokeys(x).view(b, t, self.h, c // self.h).transpose(1, 2)  # keys first, as pbloem/former
        q = self.toqueries(x).view(b, t, self.h, c // self.h).transpose(1, 2)
        v = self.tovalues(x).view(b, t, self.h, c // self.h).transpose(1, 2)
        w = (q @ k.transpose(-2, -1)) / math.sqrt(c // self.h)
        w = w.masked_fill(~self.tril[:t, :t], float("-inf")).softmax(-1)
        return self.unifyheads((w @ v).transpose(1, 2).reshape(b, t, c))


class WidthScaledHeadAttention(CausalHeadAttention):
    def forward(self, x: Tensor) -> Tensor:
        b, t, c = x.shape
        k = self.tokeys(x).view(b, t, self.h, c // self.h).transpose(1, 2)
        q = self.toqueries(x).view(b, t, self.h, c // self.h).transpose(1, 2)
        v = self.tovalues(x).view(b, t, self.h, c // self.h).transpose(1, 2)
        w = (q @ k.transpose(-2, -1)) / math.sqrt(c)  # the bug: the width, not the head size
        w = w.masked_fill(~self.tril[:t, :t], float("-inf")).softmax(-1)
        return self.unifyheads((w @ v).transpose(1, 2).reshape(b, t, c))


class LambdaBlock(nn.Module):
    def __init__(self, cfg: Any) -> None:
        super().__init__()
        e = cfg.n_embd
        self.ln_1, self.ln_2 = nn.LayerNorm(e), nn.LayerNorm(e)
        self.attn = CausalHeadAttention(cfg)
        self.mlp = nn.ModuleDict({"c_fc": nn.Linear(e, 4 * e), "c_proj": nn.Linear(4 * e, e),
                                  "drop": nn.Dropout(cfg.attn_pdrop)})
        m = self.mlp
        self.mlpf = lambda x: m["drop"](m["c_proj"](F.gelu(m["c_fc"](x))))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlpf(self.ln_2(x))


class Norm(nn.Module):
    def __init__(self, ndim: int, bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class NeedsVocab(nn.Module):
    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.embed = nn.Embedding(cfg.vocab_size, cfg.n_embd)

    def forward(self, x: Tensor) -> Tensor:
        return x
