"""A blog-style encoder-decoder Transformer: hand-written LayerNorm, ModuleDicts, einsum attention.

``Seq2SeqTransformer(dim, n_heads, ff_dim, n_layers, dropout)`` is the model of "attention is all you
need" as a blog post writes it, with no embeddings (it maps d_model features to d_model features):

- ``LayerNorm`` by hand with ``gamma``/``beta`` and the biased variance (as torch computes it);
- every sub-layer in a ``ModuleDict`` (``"self_attn"``, ``"norm_1"``, ...), post-norm residuals;
- attention weights in a ``ParameterDict`` stored (in, out), applied and split into heads with einsum;
- batch-first at the call (``forward(src, tgt, tgt_mask=None)``, the mask additive or bool "True =
  blocked"), sequence-first inside; both stacks end with a LayerNorm.

It computes what ``nn.Transformer(dim, n_heads, n_layers, n_layers, ff_dim, batch_first=True)`` does.
``UnbiasedNorm`` is the classic bug: the variance with Bessel's correction (``unbiased=True``).

Check it: ``parity check examples.blog_seq2seq:Seq2SeqTransformer`` (the whole model).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class LayerNorm(nn.Module):
    unbiased = False

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))
        self.beta = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        mu = x.mean(dim=-1, keepdim=True)
        var = x.var(dim=-1, keepdim=True, unbiased=self.unbiased)
        return (x - mu) / torch.sqrt(var + self.eps) * self.gamma + self.beta


class Attention(nn.Module):
    """Multi-head attention on (L, N, E) with (in, out) weights and einsum."""

    def __init__(self, dim: int, n_heads: int) -> None:
        super().__init__()
        self.h, self.dh = n_heads, dim // n_heads
        self.w = nn.ParameterDict({p: nn.Parameter(torch.randn(dim, dim) / dim**0.5) for p in ("q", "k", "v", "o")})
        self.b = nn.ParameterDict({p: nn.Parameter(torch.zeros(dim)) for p in ("q", "k", "v", "o")})

    def project(self, x: Tensor, p: str) -> Tensor:
        return torch.einsum("lne,ef->lnf", x, self.w[p]) + self.b[p]

    def forward(self, x: Tensor, mem: Tensor, mask: Tensor | None = None) -> Tensor:
        L, N, _ = x.shape
        q = self.project(x, "q").reshape(L, N, self.h, self.dh)
        k = self.project(mem, "k").reshape(mem.shape[0], N, self.h, self.dh)
        v = self.project(mem, "v").reshape(mem.shape[0], N, self.h, self.dh)
        scores = torch.einsum("lnhd,snhd->nhls", q, k) / self.dh**0.5
        if mask is not None:
            scores = scores + mask
        out = torch.einsum("nhls,snhd->lnhd", scores.softmax(-1), v).reshape(L, N, -1)
        return self.project(out, "o")


def feed_forward(dim: int, ff_dim: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, ff_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ff_dim, dim))


class Seq2SeqTransformer(nn.Module):
    norm = LayerNorm

    def __init__(self, dim: int, n_heads: int, ff_dim: int, n_layers: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.ModuleList(nn.ModuleDict({
            "self_attn": Attention(dim, n_heads), "norm_1": self.norm(dim),
            "ff": feed_forward(dim, ff_dim, dropout), "norm_2": self.norm(dim)}) for _ in range(n_layers))
        self.decoder = nn.ModuleList(nn.ModuleDict({
            "self_attn": Attention(dim, n_heads), "norm_1": self.norm(dim),
            "cross_attn": Attention(dim, n_heads), "norm_2": self.norm(dim),
            "ff": feed_forward(dim, ff_dim, dropout), "norm_3": self.norm(dim)}) for _ in range(n_layers))
        self.final = nn.ModuleDict({"encoder": self.norm(dim), "decoder": self.norm(dim)})

    def encode(self, x: Tensor) -> Tensor:
        for layer in self.encoder:
            x = layer["norm_1"](x + self.drop(layer["self_attn"](x, x)))
            x = layer["norm_2"](x + self.drop(layer["ff"](x)))
        return self.final["encoder"](x)

    def decode(self, y: Tensor, memory: Tensor, mask: Tensor | None) -> Tensor:
        for layer in self.decoder:
            y = layer["norm_1"](y + self.drop(layer["self_attn"](y, y, mask)))
            y = layer["norm_2"](y + self.drop(layer["cross_attn"](y, memory)))
            y = layer["norm_3"](y + self.drop(layer["ff"](y)))
        return self.final["decoder"](y)

    def forward(self, src: Tensor, tgt: Tensor, tgt_mask: Tensor | None = None) -> Tensor:
        if tgt_mask is not None and tgt_mask.dtype == torch.bool:
            tgt_mask = torch.zeros(tgt_mask.shape, dtype=src.dtype).masked_fill(tgt_mask, float("-inf"))
        memory = self.encode(src.transpose(0, 1))
        return self.decode(tgt.transpose(0, 1), memory, tgt_mask).transpose(0, 1)


class UnbiasedLayerNorm(LayerNorm):
    unbiased = True


class UnbiasedNorm(Seq2SeqTransformer):
    norm = UnbiasedLayerNorm
