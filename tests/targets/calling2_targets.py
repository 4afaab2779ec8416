"""Targets for how a forward is called when the call leaves something out or binds too much: a required mask
the code reads unconditionally, and an optional tensor keyword it ignores. Each in its own style.

- ``LogKeepAttention``: ``forward(tokens, keep)``, a self-attention whose ``keep`` (N, 1, L, S) 0/1 keep-mask is
  required and added as ``log(keep)`` (0 or -inf): a None crashes it. Twin: scores scaled by 1/d_model.
- ``AllowedEncoderLayer``: a post-norm encoder layer, ``forward(seq, allowed)``, ``allowed`` an (N, S) bool
  keep-mask of real tokens, required and indexed unconditionally; one packed projection sliced by hand.
  Twin: the feed-forward's residual is dropped.
- ``PositionalCrossAttention``: ``forward(queries, memory, /, *, offsets=None, key_mask=None)``, keys and values
  from one ``memory`` (one packed (2E, E) projection), ``offsets`` an optional tensor it never reads.
- ``CausalUnlessToldGPT``: a pre-norm GPT stack whose attention is causal when no mask is given (SDPA's
  ``is_causal``) and takes ``mask``, an (N, L, S) bool keep-mask, instead. Twin: heads merged
  without moving them next to the width.
- ``TrilUnlessMaskedAttention``: an attention (keys and values from ``ctx``) whose scores are masked
  lower-triangular when no ``scores_mask`` (additive, (N, 1, L, S)) is given.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LogKeepAttention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.wq, self.wk, self.wv = (nn.Parameter(torch.randn(width, width) / width) for _ in range(3))
        self.bq, self.bk, self.bv = (nn.Parameter(torch.zeros(width)) for _ in range(3))
        self.out = nn.Linear(width, width)

    def _scale(self, width: int) -> float:
        return 1.0 / math.sqrt(width // self.heads)

    def forward(self, tokens: Tensor, keep: Tensor) -> Tensor:
        n, t, w = tokens.shape
        heads = [F.linear(tokens, wt, b).reshape(n, t, self.heads, -1).permute(0, 2, 1, 3)
                 for wt, b in ((self.wq, self.bq), (self.wk, self.bk), (self.wv, self.bv))]
        q, k, v = heads
        scores = torch.einsum("nhld,nhsd->nhls", q, k) * self._scale(w) + torch.log(keep.to(q.dtype))
        mixed = torch.einsum("nhls,nhsd->nhld", scores.softmax(-1), v)
        return self.out(mixed.permute(0, 2, 1, 3).reshape(n, t, w))


class LogKeepAttentionBug(LogKeepAttention):
    def _scale(self, width: int) -> float:
        return 1.0 / math.sqrt(width)  # the bug: the whole width, not one head's


class AllowedEncoderLayer(nn.Module):
    def __init__(self, d_model: int, nhead: int, dim_feedforward: int) -> None:
        super().__init__()
        self.nhead = nhead
        self.packed = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.up, self.down = nn.Linear(d_model, dim_feedforward), nn.Linear(dim_feedforward, d_model)
        self.norms = nn.ModuleList([nn.LayerNorm(d_model), nn.LayerNorm(d_model)])

    def _ff_residual(self, h: Tensor, ff: Tensor) -> Tensor:
        return h + ff

    def forward(self, seq: Tensor, allowed: Tensor) -> Tensor:
        n, s, d = seq.shape
        qkv = self.packed(seq)
        q, k, v = (qkv[..., i * d:(i + 1) * d].reshape(n, s, self.nhead, -1).transpose(1, 2) for i in range(3))
        blocked = ~allowed[:, None, None, :]
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=~blocked)
        h = self.norms[0](seq + self.proj(att.transpose(1, 2).reshape(n, s, d)))
        return self.norms[1](self._ff_residual(h, self.down(F.relu(self.up(h)))))


class AllowedEncoderLayerBug(AllowedEncoderLayer):
    def _ff_residual(self, h: Tensor, ff: Tensor) -> Tensor:
        return ff  # the bug: no residual around the feed-forward


class PositionalCrossAttention(nn.Module):
    def __init__(self, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.to_q = nn.Linear(embed_dim, embed_dim, bias=False)
        self.to_kv = nn.Linear(embed_dim, 2 * embed_dim, bias=False)
        self.to_out = nn.Linear(embed_dim, embed_dim, bias=False)

    def forward(self, queries: Tensor, memory: Tensor, /, *, offsets: Tensor | None = None,
                key_mask: Tensor | None = None) -> Tensor:
        e = queries.shape[-1]
        k, v = self.to_kv(memory).split(e, dim=-1)
        heads = [z.unflatten(-1, (self.num_heads, -1)).transpose(1, 2) for z in (self.to_q(queries), k, v)]
        if key_mask is not None:  # (N, S) bool, True = padding
            key_mask = ~key_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(*heads, attn_mask=key_mask)
        return self.to_out(out.transpose(1, 2).flatten(2))


class _VisibleBlock(nn.Module):
    """A pre-norm block whose attention is causal when no mask is given (``is_causal``); a given
    ``mask`` (N, L, S) bool, True = visible, replaces that."""

    def __init__(self, width: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.heads = heads
        self.proj = nn.ModuleDict({name: nn.Linear(width, width) for name in ("query", "key", "value", "out")})
        self.pre = nn.ModuleList([nn.LayerNorm(width), nn.LayerNorm(width)])
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def _merge(self, out: Tensor) -> Tensor:
        return out.transpose(1, 2).flatten(2)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        h = self.pre[0](x)
        q, k, v = (self.proj[n](h).unflatten(-1, (self.heads, -1)).transpose(1, 2) for n in ("query", "key", "value"))
        given = None if mask is None else mask[:, None]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=given, is_causal=mask is None)
        x = x + self.proj["out"](self._merge(out))
        return x + self.mlp(self.pre[1](x))


class _VisibleBlockBug(_VisibleBlock):
    def _merge(self, out: Tensor) -> Tensor:
        return out.flatten(2).reshape(out.shape[0], out.shape[2], -1)  # the bug: heads merged without the transpose


class CausalUnlessToldGPT(nn.Module):
    """A GPT stack ``forward(hidden, mask=None)``: causal by default, an (N, L, S) keep-mask
    otherwise; a final norm."""

    block = _VisibleBlock

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, num_layers: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(self.block(d_model, nhead, dim_feedforward) for _ in range(num_layers))
        self.final = nn.LayerNorm(d_model)

    def forward(self, hidden: Tensor, mask: Tensor | None = None) -> Tensor:
        for block in self.blocks:
            hidden = block(hidden, mask)
        return self.final(hidden)


class CausalUnlessToldGPTBug(CausalUnlessToldGPT):
    block = _VisibleBlockBug


class TrilUnlessMaskedAttention(nn.Module):
    """``forward(inp, ctx, scores_mask=None)``: an additive (N, 1, L, S) mask added to the scores; without one,
    the scores are masked lower-triangular (causal)."""

    def __init__(self, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.in_proj = nn.Parameter(torch.randn(3 * embed_dim, embed_dim) / embed_dim)
        self.in_bias = nn.Parameter(torch.zeros(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def forward(self, inp: Tensor, ctx: Tensor, scores_mask: Tensor | None = None) -> Tensor:
        n, t, e = inp.shape
        wq, wk, wv = self.in_proj.chunk(3)
        bq, bk, bv = self.in_bias.chunk(3)
        q, k, v = (F.linear(x, w, b).view(n, x.shape[1], self.num_heads, -1).transpose(1, 2)
                   for x, w, b in ((inp, wq, bq), (ctx, wk, bk), (ctx, wv, bv)))
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        if scores_mask is None:
            tril = torch.ones(t, k.shape[2], dtype=torch.bool, device=inp.device).tril()
            scores = scores.masked_fill(~tril, float("-inf"))
        else:
            scores = scores + scores_mask
        return self.out_proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(n, t, e))
