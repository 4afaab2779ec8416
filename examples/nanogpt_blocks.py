"""A nanoGPT-style GPT body: ``Blocks(config)``, the stack of pre-norm blocks and the final ``ln_f``.

Written the way nanoGPT-like code is: a ``GPTConfig`` dataclass (n_embd, n_head, n_layer, dropout, bias),
one packed ``c_attn`` Linear giving q, k and v, ``c_proj`` after attention, an MLP ``c_fc`` -> GELU ->
``c_proj`` 4 x n_embd wide, pre-norm residuals, attention that is always causal (no mask argument) through
``F.scaled_dot_product_attention(is_causal=True)``, and a final LayerNorm. Batch-first (B, T, C).
Embeddings and the head are left out: this is what ``nn.TransformerEncoder(norm_first=True,
activation="gelu")`` layers with a causal mask and a final norm compute.

``ScaledByWidth`` is the classic bug: scores scaled by 1/sqrt(n_embd) instead of 1/sqrt(head size), here
with a hand-written softmax attention over a ``tril`` buffer.

Check it: ``parity check examples.nanogpt_blocks:Blocks --as decoder_only``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class GPTConfig:
    block_size: int = 64
    n_layer: int = 2
    n_head: int = 2
    n_embd: int = 16
    dropout: float = 0.0
    bias: bool = True


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head, self.n_embd, self.dropout = config.n_head, config.n_embd, config.dropout
        self.register_buffer("tril", torch.tril(torch.ones(config.block_size, config.block_size)))

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0,
                                              is_causal=True)

    def forward(self, x: Tensor) -> Tensor:
        B, T, C = x.size()  # noqa: N806
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = self.attend(q, k, v).transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig, attention: type[CausalSelfAttention] = CausalSelfAttention) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = attention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Blocks(nn.Module):
    attention: type[CausalSelfAttention] = CausalSelfAttention

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList([Block(config, self.attention) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.drop(x)
        for block in self.h:
            x = block(x)
        return self.ln_f(x)


class WidthScaledAttention(CausalSelfAttention):
    """Softmax attention by hand over the tril buffer, scaled by 1/sqrt(n_embd): the bug."""

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        T = q.size(-2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.n_embd))
        att = att.masked_fill(self.tril[:T, :T] == 0, float("-inf"))
        return F.softmax(att, dim=-1) @ v


class ScaledByWidth(Blocks):
    attention = WidthScaledAttention
