"""Targets whose calling and masks are written the ways real code writes them (issue 18), for the harness's
tests: each correct class has a one-bug twin named ``...Bug``, and each is in its own style.

- ``MaskArgAttention``: ``forward(q, k, v, mask)``, the mask required (no default); torch's bool block-mask,
  broadcast against (N, H, L, S) scores. Twin: scores scaled by 1/d_head, not 1/sqrt(d_head).
- ``KeywordOnlyEncoderLayer``: ``forward(*, tokens, padding_mask=None, attn_mask=None)``, every argument
  keyword-only; packed q/k/v applied by einsum; padding as an (N, S) keep-mask (True = a real token), the
  attention mask additive. Twin: heads merged without moving them next to the width.
- ``NamedInputsDecoderLayer``: ``forward(x, mask=None, memory=None, memory_mask=None)``, sequence-first, so
  ``memory`` can only be given by name; raw ``nn.Parameter`` weights and one functional attention; ``mask`` a
  keep-mask, ``memory_mask`` an (N, S) padding block-mask. Twin: the feed-forward's residual skips the
  cross-attention's output.
- ``ExtendedMaskEncoderLayer``: a BERT-like layer taking ``attention_mask`` only as an additive (N, 1, 1, S)
  tensor (it reshapes it so), a hand-written norm with eps 1e-12 (computed in float32 at least), exact GELU.
  Twin: the norm divides by the unbiased variance.
- ``LSNMaskAttention``: sequence-first einsum attention with one packed (3E, E) parameter and an (L, S, N) bool
  block-mask. Twin: softmax over the queries.
- ``IntMaskEncoder``: an encoder stack whose ``forward(src, src_mask)`` requires an (N, S) 0/1 integer
  keep-mask (``1 - mask`` is not defined for bool tensors). Twin: the mask reaches the first layer only.
- ``ArgOrderAttention``: ``forward(seq_q, seq_v, seq_k)``, values before keys, no name torch uses, weights in a
  ``ParameterDict``: only the values can tell which input is which. Twin: the query used as the key.
- ``BatchMaskGPT``: a pre-norm GPT stack whose ``forward(x, attention_mask=None)`` takes an (N, L, S) keep-mask
  and applies no causal mask of its own. Twin: the attention's residual carries the normalized input.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# -- a required mask argument -----------------------------------------------------------------------------------


class MaskArgAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.q_lin, self.k_lin, self.v_lin, self.out_lin = (nn.Linear(d_model, d_model) for _ in range(4))

    def split(self, t: Tensor) -> Tensor:  # (N, L, E) -> (N, H, L, d)
        n, length, e = t.shape
        return t.view(n, length, self.n_heads, e // self.n_heads).transpose(1, 2)

    def scale(self, d: int) -> float:
        return d ** -0.5

    def forward(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        qh, kh, vh = self.split(self.q_lin(q)), self.split(self.k_lin(k)), self.split(self.v_lin(v))
        scores = qh @ kh.transpose(-1, -2) * self.scale(qh.size(-1))
        if mask is not None:
            scores = scores.masked_fill(mask, float("-inf"))
        ctx = scores.softmax(-1) @ vh
        n, h, length, d = ctx.shape
        return self.out_lin(ctx.transpose(1, 2).reshape(n, length, h * d))


class MaskArgAttentionBug(MaskArgAttention):
    def scale(self, d: int) -> float:
        return 1.0 / d  # the bug: 1/d_head


# -- keyword-only arguments --------------------------------------------------------------------------------------


class KeywordOnlyEncoderLayer(nn.Module):
    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.h = nhead
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.up, self.down = nn.Linear(d_model, dim_feedforward), nn.Linear(dim_feedforward, d_model)
        self.ln_attn, self.ln_ff = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)

    def merge(self, ctx: Tensor) -> Tensor:  # (N, L, H, d) -> (N, L, E)
        return ctx.flatten(2)

    def attend(self, x: Tensor, padding_mask: Tensor | None, attn_mask: Tensor | None) -> Tensor:
        n, length, e = x.shape
        q, k, v = self.qkv(x).view(n, length, 3, self.h, e // self.h).unbind(2)
        scores = torch.einsum("nlhd,nshd->nhls", q, k) / math.sqrt(e // self.h)
        if attn_mask is not None:
            scores = scores + attn_mask
        if padding_mask is not None:
            scores = scores.masked_fill(~padding_mask[:, None, None, :], float("-inf"))
        ctx = torch.einsum("nhls,nshd->nlhd", self.drop(scores.softmax(-1)), v)
        return self.proj(self.merge(ctx))

    def forward(self, *, tokens: Tensor, padding_mask: Tensor | None = None,
                attn_mask: Tensor | None = None) -> Tensor:
        x = self.ln_attn(tokens + self.drop(self.attend(tokens, padding_mask, attn_mask)))
        return self.ln_ff(x + self.drop(self.down(self.drop(F.relu(self.up(x))))))


class KeywordOnlyEncoderLayerBug(KeywordOnlyEncoderLayer):
    def merge(self, ctx: Tensor) -> Tensor:
        n, length, h, d = ctx.shape
        return ctx.transpose(1, 2).reshape(n, length, h * d)  # the bug: (H, L) order read as (L, H)


# -- an input bound by name only ---------------------------------------------------------------------------------


def _heads_attention(q: Tensor, k: Tensor, v: Tensor, heads: int, blocked: Tensor | None) -> Tensor:
    """Sequence-first (L, N, E) queries over (S, N, E) keys; ``blocked`` broadcasts against (N, H, L, S)."""
    L, N, E = q.shape
    S = k.shape[0]
    d = E // heads
    qh = q.reshape(L, N * heads, d).transpose(0, 1)  # (N*H, L, d)
    kh = k.reshape(S, N * heads, d).transpose(0, 1)
    vh = v.reshape(S, N * heads, d).transpose(0, 1)
    scores = (qh @ kh.transpose(1, 2) / math.sqrt(d)).view(N, heads, L, S)
    if blocked is not None:
        scores = scores.masked_fill(blocked, float("-inf"))
    out = scores.softmax(-1).view(N * heads, L, S) @ vh  # (N*H, L, d)
    return out.transpose(0, 1).reshape(L, N, E)


class NamedInputsDecoderLayer(nn.Module):
    def __init__(self, d_model: int, nhead: int, dim_feedforward: int) -> None:
        super().__init__()
        self.nhead = nhead
        e, f = d_model, dim_feedforward

        def weight(rows: int, cols: int) -> nn.Parameter:
            return nn.Parameter(torch.randn(rows, cols) / math.sqrt(cols))

        self.self_w, self.self_b = weight(3 * e, e), nn.Parameter(torch.zeros(3 * e))
        self.self_out_w, self.self_out_b = weight(e, e), nn.Parameter(torch.zeros(e))
        self.cross_q_w, self.cross_q_b = weight(e, e), nn.Parameter(torch.zeros(e))
        self.cross_kv_w, self.cross_kv_b = weight(2 * e, e), nn.Parameter(torch.zeros(2 * e))
        self.cross_out_w, self.cross_out_b = weight(e, e), nn.Parameter(torch.zeros(e))
        self.ff_in_w, self.ff_in_b = weight(f, e), nn.Parameter(torch.zeros(f))
        self.ff_out_w, self.ff_out_b = weight(e, f), nn.Parameter(torch.zeros(e))
        self.norms = nn.ModuleList(nn.LayerNorm(e) for _ in range(3))

    def sublayers(self, x: Tensor, memory: Tensor, keep: Tensor | None, pad: Tensor | None) -> Tensor:
        q, k, v = F.linear(x, self.self_w, self.self_b).chunk(3, dim=-1)
        a = _heads_attention(q, k, v, self.nhead, None if keep is None else ~keep)
        x = self.norms[0](x + F.linear(a, self.self_out_w, self.self_out_b))
        q = F.linear(x, self.cross_q_w, self.cross_q_b)
        k, v = F.linear(memory, self.cross_kv_w, self.cross_kv_b).chunk(2, dim=-1)
        c = _heads_attention(q, k, v, self.nhead, None if pad is None else pad[:, None, None, :])
        x = self.norms[1](x + F.linear(c, self.cross_out_w, self.cross_out_b))
        return self.feed_forward(x, x)

    def feed_forward(self, x: Tensor, residual: Tensor) -> Tensor:
        hidden = F.relu(F.linear(x, self.ff_in_w, self.ff_in_b))
        return self.norms[2](residual + F.linear(hidden, self.ff_out_w, self.ff_out_b))

    def forward(self, x: Tensor, mask: Tensor | None = None, memory: Tensor | None = None,
                memory_mask: Tensor | None = None) -> Tensor:
        assert memory is not None, "a decoder layer needs the encoder's output"
        return self.sublayers(x, memory, mask, memory_mask)


class NamedInputsDecoderLayerBug(NamedInputsDecoderLayer):
    def sublayers(self, x: Tensor, memory: Tensor, keep: Tensor | None, pad: Tensor | None) -> Tensor:
        q, k, v = F.linear(x, self.self_w, self.self_b).chunk(3, dim=-1)
        a = _heads_attention(q, k, v, self.nhead, None if keep is None else ~keep)
        x = self.norms[0](x + F.linear(a, self.self_out_w, self.self_out_b))
        before_cross = x
        q = F.linear(x, self.cross_q_w, self.cross_q_b)
        k, v = F.linear(memory, self.cross_kv_w, self.cross_kv_b).chunk(2, dim=-1)
        c = _heads_attention(q, k, v, self.nhead, None if pad is None else pad[:, None, None, :])
        x = self.norms[1](x + F.linear(c, self.cross_out_w, self.cross_out_b))
        return self.feed_forward(x, before_cross)  # the bug: the residual skips the cross-attention


# -- an additive (N, 1, 1, S) attention mask ---------------------------------------------------------------------


class Norm(nn.Module):
    def __init__(self, width: int, eps: float) -> None:
        super().__init__()
        self.gain, self.shift, self.eps = nn.Parameter(torch.ones(width)), nn.Parameter(torch.zeros(width)), eps

    def scaled(self, centred: Tensor) -> Tensor:
        return centred / torch.sqrt(centred.pow(2).mean(-1, keepdim=True) + self.eps)

    def forward(self, x: Tensor) -> Tensor:  # in float32 at least: eps 1e-12 is 0 in half precision
        wide = x.to(torch.promote_types(x.dtype, torch.float32))
        return self.gain * self.scaled(wide - wide.mean(-1, keepdim=True)).to(x.dtype) + self.shift


class UnbiasedNorm(Norm):
    def scaled(self, centred: Tensor) -> Tensor:
        # the bug: the unbiased variance (with this eps of 1e-12, eps added to the std instead shows only on a
        # constant row, which the suite does not draw: a norm over one feature is degenerate)
        return centred / (centred.pow(2).sum(-1, keepdim=True) / (centred.shape[-1] - 1) + self.eps).sqrt()


class ExtendedMaskEncoderLayer(nn.Module):
    norm_class: type[Norm] = Norm

    def __init__(self, hidden_size: int, num_attention_heads: int, intermediate_size: int) -> None:
        super().__init__()
        self.heads = num_attention_heads
        self.query, self.key, self.value = (nn.Linear(hidden_size, hidden_size) for _ in range(3))
        self.attn_dense = nn.Linear(hidden_size, hidden_size)
        self.intermediate = nn.Linear(hidden_size, intermediate_size)
        self.output_dense = nn.Linear(intermediate_size, hidden_size)
        self.attn_norm, self.output_norm = self.norm_class(hidden_size, 1e-12), self.norm_class(hidden_size, 1e-12)

    def forward(self, hidden_states: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        n, length, e = hidden_states.shape
        d = e // self.heads

        def heads(t: Tensor) -> Tensor:
            return t.view(n, length, self.heads, d).permute(0, 2, 1, 3)

        scores = heads(self.query(hidden_states)) @ heads(self.key(hidden_states)).transpose(-1, -2) / math.sqrt(d)
        if attention_mask is not None:  # the extended mask: (N, 1, 1, S), 0 or a large negative number
            scores = scores + attention_mask.reshape(n, 1, 1, length)
        context = (scores.softmax(-1) @ heads(self.value(hidden_states))).permute(0, 2, 1, 3).reshape(n, length, e)
        x = self.attn_norm(hidden_states + self.attn_dense(context))
        return self.output_norm(x + self.output_dense(F.gelu(self.intermediate(x))))


class ExtendedMaskEncoderLayerBug(ExtendedMaskEncoderLayer):
    norm_class = UnbiasedNorm


# -- an (L, S, N) mask -------------------------------------------------------------------------------------------


class LSNMaskAttention(nn.Module):
    def __init__(self, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.packed = nn.Parameter(torch.randn(3 * embed_dim, embed_dim) / math.sqrt(embed_dim))
        self.packed_bias = nn.Parameter(torch.zeros(3 * embed_dim))
        self.out = nn.Linear(embed_dim, embed_dim)

    def weights(self, scores: Tensor) -> Tensor:  # (L, S, N, H)
        return scores.softmax(dim=1)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None = None) -> Tensor:
        L, N, E = query.shape
        H = self.num_heads
        wq, wk, wv = self.packed.chunk(3)
        bq, bk, bv = self.packed_bias.chunk(3)
        q = F.linear(query, wq, bq).view(L, N, H, E // H)
        k = F.linear(key, wk, bk).view(key.shape[0], N, H, E // H)
        v = F.linear(value, wv, bv).view(value.shape[0], N, H, E // H)
        scores = torch.einsum("lnhd,snhd->lsnh", q, k) * (E // H) ** -0.5
        if mask is not None:  # (L, S, N): True = blocked
            scores = scores.masked_fill(mask[..., None], float("-inf"))
        return self.out(torch.einsum("lsnh,snhd->lnhd", self.weights(scores), v).reshape(L, N, E))


class LSNMaskAttentionBug(LSNMaskAttention):
    def weights(self, scores: Tensor) -> Tensor:
        return scores.softmax(dim=0)  # the bug: normalized over the queries


# -- an integer 0/1 mask, required by a stack ---------------------------------------------------------------------


class _IntLayer(nn.Module):
    def __init__(self, d: int, h: int, f: int) -> None:
        super().__init__()
        self.h = h
        self.attn_in, self.attn_out = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, f), nn.Linear(f, d)
        self.n1, self.n2 = nn.LayerNorm(d), nn.LayerNorm(d)

    def forward(self, x: Tensor, bias: Tensor | None) -> Tensor:
        n, length, e = x.shape
        q, k, v = (t.reshape(n, length, self.h, -1).transpose(1, 2) for t in self.attn_in(x).split(e, dim=-1))
        scores = q @ k.transpose(2, 3) / math.sqrt(q.shape[-1])
        if bias is not None:
            scores = scores + bias
        a = (scores.softmax(-1) @ v).transpose(1, 2).reshape(n, length, e)
        x = self.n1(x + self.attn_out(a))
        return self.n2(x + self.fc2(F.relu(self.fc1(x))))


class IntMaskEncoder(nn.Module):
    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, num_layers: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(_IntLayer(d_model, nhead, dim_feedforward) for _ in range(num_layers))
        self.final = nn.LayerNorm(d_model)

    def biases(self, src_mask: Tensor | None, dtype: torch.dtype) -> list[Tensor | None]:
        if src_mask is None:
            return [None] * len(self.blocks)
        bias = ((1 - src_mask)[:, None, None, :] * -1e9).to(dtype)  # 1 = a token, 0 = padding
        return [bias] * len(self.blocks)

    def forward(self, src: Tensor, src_mask: Tensor) -> Tensor:
        x = src
        for block, bias in zip(self.blocks, self.biases(src_mask, src.dtype), strict=True):
            x = block(x, bias)
        return self.final(x)


class IntMaskEncoderBug(IntMaskEncoder):
    def biases(self, src_mask: Tensor | None, dtype: torch.dtype) -> list[Tensor | None]:
        first = super().biases(src_mask, dtype)[0]
        return [first] + [None] * (len(self.blocks) - 1)  # the bug: only the first layer is masked


# -- inputs no name identifies: the order decided by the values ---------------------------------------------------


class ArgOrderAttention(nn.Module):
    """``forward(seq_q, seq_v, seq_k)``: values before keys, and no parameter named as torch names them."""

    def __init__(self, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        self.heads = num_heads
        self.w = nn.ParameterDict({n: nn.Parameter(torch.randn(embed_dim, embed_dim) / math.sqrt(embed_dim))
                                   for n in ("q", "k", "v", "o")})
        self.b = nn.ParameterDict({n: nn.Parameter(torch.zeros(embed_dim)) for n in ("q", "k", "v", "o")})

    def project(self, x: Tensor, name: str) -> Tensor:  # (N, T, E) -> (N, H, T, d)
        y = F.linear(x, self.w[name], self.b[name])
        return y.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def keys_from(self, seq_q: Tensor, seq_k: Tensor) -> Tensor:
        return seq_k

    def forward(self, seq_q: Tensor, seq_v: Tensor, seq_k: Tensor) -> Tensor:
        q, k, v = self.project(seq_q, "q"), self.project(self.keys_from(seq_q, seq_k), "k"), self.project(seq_v, "v")
        ctx = F.softmax(torch.einsum("nhld,nhsd->nhls", q, k) / math.sqrt(q.shape[-1]), dim=-1) @ v
        return F.linear(ctx.transpose(1, 2).flatten(2), self.w["o"], self.b["o"])


class ArgOrderAttentionBug(ArgOrderAttention):
    def keys_from(self, seq_q: Tensor, seq_k: Tensor) -> Tensor:
        return seq_q  # the bug: the query used as the key


# -- an (N, L, S) mask, at the decoder-only level -----------------------------------------------------------------


class _GPTBlock(nn.Module):
    def __init__(self, n_embd: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.ln1, self.ln2 = nn.LayerNorm(n_embd), nn.LayerNorm(n_embd)
        self.c_attn, self.c_proj = nn.Linear(n_embd, 3 * n_embd), nn.Linear(n_embd, n_embd)
        self.fc, self.proj = nn.Linear(n_embd, 4 * n_embd), nn.Linear(4 * n_embd, n_embd)

    def attn(self, x: Tensor, allowed: Tensor | None) -> Tensor:
        b, t, c = x.shape
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2)
                   for z in self.c_attn(x).split(c, dim=2))
        w = q @ k.transpose(-2, -1) * (1.0 / math.sqrt(k.size(-1)))
        if allowed is not None:  # (B, T, T), 1 = may attend
            w = w.masked_fill(allowed.unsqueeze(1) == 0, float("-inf"))
        return self.c_proj((F.softmax(w, dim=-1) @ v).transpose(1, 2).contiguous().view(b, t, c))

    def residual_input(self, x: Tensor, normed: Tensor) -> Tensor:
        return x

    def forward(self, x: Tensor, allowed: Tensor | None) -> Tensor:
        x = self.residual_input(x, self.ln1(x)) + self.attn(self.ln1(x), allowed)
        return x + self.proj(F.gelu(self.fc(self.ln2(x))))


class _GPTBlockBug(_GPTBlock):
    def residual_input(self, x: Tensor, normed: Tensor) -> Tensor:
        return normed  # the bug: the residual carries the normalized input


class BatchMaskGPT(nn.Module):
    """``forward(x, attention_mask=None)`` with the mask (N, L, S), 1 = may attend: no mask, no masking."""

    block = _GPTBlock

    def __init__(self, n_embd: int, n_head: int, n_layer: int) -> None:
        super().__init__()
        self.h = nn.ModuleList(self.block(n_embd, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)

    def forward(self, x: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        for block in self.h:
            x = block(x, attention_mask)
        return self.ln_f(x)


class BatchMaskGPTBug(BatchMaskGPT):
    block = _GPTBlockBug


# -- a call the harness cannot make -------------------------------------------------------------------------------


class NeedsPositions(nn.Module):
    """``forward(x, positions)``: the positions index a table, and no level input gives them: it cannot be
    called, and the check must say so at once, naming the call it tried."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.table = nn.Embedding(64, d_model)
        self.mix = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor, positions: Tensor) -> Tensor:
        return self.mix(x + self.table(positions))
