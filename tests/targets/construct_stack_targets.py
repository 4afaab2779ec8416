"""Stacks for tests/inference/test_construct_real_styles.py, each correct and with a one-bug twin (``...Bug``):

- ``SeqFirstSeq2Seq(d_model, nhead, num_encoder_layers, num_decoder_layers, dim_feedforward)``: an independent
  sequence-first (L, N, E) encoder-decoder that takes every mask nn.Transformer takes, the padding masks merged
  into additive (N, 1, 1, S) masks; post-norm, with final norms. Bug: the memory's padding mask is ignored.
- ``SpecDecoder(spec: DecoderSpec)``: a pre-norm decoder stack configured by a dataclass with a field no level
  sets and that has no default (``embedding_dropout``). Bug: the self-attention ignores ``tgt_mask``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def additive(mask: Tensor | None, padding: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """An (L, S) block mask and an (N, S) padding mask (bool: True = blocked, or additive) as one additive mask."""
    total: Tensor | None = None
    if mask is not None:
        total = torch.zeros(mask.shape, dtype=dtype).masked_fill(mask, -torch.inf) if mask.dtype == torch.bool \
            else mask.to(dtype)
    if padding is not None:
        pad = torch.zeros(padding.shape, dtype=dtype).masked_fill(padding, -torch.inf) \
            if padding.dtype == torch.bool else padding.to(dtype)
        pad = pad[:, None, None, :]  # (N, 1, 1, S)
        total = pad if total is None else total + pad
    return total


class SeqAttention(nn.Module):
    def __init__(self, e: int, h: int) -> None:
        super().__init__()
        self.h = h
        self.wq, self.wk, self.wv, self.wo = (nn.Linear(e, e) for _ in range(4))

    def forward(self, q_in: Tensor, kv_in: Tensor, bias: Tensor | None) -> Tensor:  # (L, N, E), (S, N, E)
        length, n, e = q_in.shape
        heads = lambda t: t.view(t.shape[0], n, self.h, e // self.h).permute(1, 2, 0, 3)  # noqa: E731
        q, k, v = heads(self.wq(q_in)), heads(self.wk(kv_in)), heads(self.wv(kv_in))
        scores = q @ k.transpose(-1, -2) / (e // self.h) ** 0.5
        if bias is not None:
            scores = scores + bias
        out = scores.softmax(-1) @ v  # (N, H, L, D)
        return self.wo(out.permute(2, 0, 1, 3).reshape(length, n, e))


class EncoderBlock(nn.Module):
    def __init__(self, e: int, h: int, f: int) -> None:
        super().__init__()
        self.sa, self.n1, self.n2 = SeqAttention(e, h), nn.LayerNorm(e), nn.LayerNorm(e)
        self.l1, self.l2 = nn.Linear(e, f), nn.Linear(f, e)

    def forward(self, x: Tensor, bias: Tensor | None) -> Tensor:
        x = self.n1(x + self.sa(x, x, bias))
        return self.n2(x + self.l2(F.relu(self.l1(x))))


class DecoderBlock(nn.Module):
    def __init__(self, e: int, h: int, f: int) -> None:
        super().__init__()
        self.sa, self.ca = SeqAttention(e, h), SeqAttention(e, h)
        self.n1, self.n2, self.n3 = nn.LayerNorm(e), nn.LayerNorm(e), nn.LayerNorm(e)
        self.l1, self.l2 = nn.Linear(e, f), nn.Linear(f, e)

    def forward(self, y: Tensor, memory: Tensor, self_bias: Tensor | None, cross_bias: Tensor | None) -> Tensor:
        y = self.n1(y + self.sa(y, y, self_bias))
        y = self.n2(y + self.ca(y, memory, cross_bias))
        return self.n3(y + self.l2(F.relu(self.l1(y))))


class SeqFirstSeq2Seq(nn.Module):
    ignore_memory_padding = False

    def __init__(self, d_model: int, nhead: int, num_encoder_layers: int, num_decoder_layers: int,
                 dim_feedforward: int) -> None:
        super().__init__()
        self.encoder = nn.ModuleList(EncoderBlock(d_model, nhead, dim_feedforward) for _ in range(num_encoder_layers))
        self.decoder = nn.ModuleList(DecoderBlock(d_model, nhead, dim_feedforward) for _ in range(num_decoder_layers))
        self.enc_norm, self.dec_norm = nn.LayerNorm(d_model), nn.LayerNorm(d_model)

    def forward(self, src: Tensor, tgt: Tensor, src_mask: Tensor | None = None, tgt_mask: Tensor | None = None,
                memory_mask: Tensor | None = None, src_key_padding_mask: Tensor | None = None,
                tgt_key_padding_mask: Tensor | None = None,
                memory_key_padding_mask: Tensor | None = None) -> Tensor:  # (S, N, E), (T, N, E)
        memory = src
        enc_bias = additive(src_mask, src_key_padding_mask, src.dtype)
        for block in self.encoder:
            memory = block(memory, enc_bias)
        memory = self.enc_norm(memory)
        self_bias = additive(tgt_mask, tgt_key_padding_mask, tgt.dtype)
        cross_padding = None if self.ignore_memory_padding else memory_key_padding_mask
        cross_bias = additive(memory_mask, cross_padding, tgt.dtype)
        y = tgt
        for block in self.decoder:
            y = block(y, memory, self_bias, cross_bias)
        return self.dec_norm(y)


class SeqFirstSeq2SeqBug(SeqFirstSeq2Seq):
    ignore_memory_padding = True  # the bug: padded source positions are attended to by the decoder


# -- a dataclass config with a required field no level sets ----------------------------------------------------


@dataclass
class DecoderSpec:
    model_dim: int
    n_heads: int
    depth: int
    embedding_dropout: float  # no level sets it, and it has no default
    ff_mult: int = 4
    tied_heads: bool = False


class SpecLayer(nn.Module):
    def __init__(self, spec: DecoderSpec) -> None:
        super().__init__()
        e = spec.model_dim
        self.self_attn = nn.MultiheadAttention(e, spec.n_heads, batch_first=False)
        self.cross_attn = nn.MultiheadAttention(e, spec.n_heads, batch_first=False)
        self.norms = nn.ModuleList(nn.LayerNorm(e) for _ in range(3))
        self.mlp = nn.Sequential(nn.Linear(e, spec.ff_mult * e), nn.GELU(), nn.Linear(spec.ff_mult * e, e))


class SpecDecoder(nn.Module):
    uses_tgt_mask = True

    def __init__(self, spec: DecoderSpec) -> None:
        super().__init__()
        self.drop = nn.Dropout(spec.embedding_dropout)
        self.blocks = nn.ModuleList(copy.deepcopy(SpecLayer(spec)) for _ in range(spec.depth))
        self.head_norm = nn.LayerNorm(spec.model_dim)

    def forward(self, tgt: Tensor, memory: Tensor, tgt_mask: Tensor | None = None,
                tgt_key_padding_mask: Tensor | None = None,
                memory_key_padding_mask: Tensor | None = None) -> Tensor:  # (T, N, E), (S, N, E)
        y = self.drop(tgt)
        for b in self.blocks:
            h = b.norms[0](y)
            y = y + b.self_attn(h, h, h, attn_mask=tgt_mask if self.uses_tgt_mask else None,
                                key_padding_mask=tgt_key_padding_mask, need_weights=False)[0]
            h = b.norms[1](y)
            y = y + b.cross_attn(h, memory, memory, key_padding_mask=memory_key_padding_mask, need_weights=False)[0]
            y = y + b.mlp(b.norms[2](y))
        return self.head_norm(y)


class SpecDecoderBug(SpecDecoder):
    uses_tgt_mask = False  # the bug: every position sees the whole target
