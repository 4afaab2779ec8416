"""Targets written the ways real code constructs and lays out a Transformer, each correct and with a one-bug twin
(``...Bug``), for tests/inference/test_construct_real_styles.py. Each is in its own style:

- ``KeyedBlock(cfg)``: a pre-norm causal block whose config is a dict read by key (``cfg["emb_dim"]``), with keys
  no level sets (``cfg["drop_rate"]``, ``cfg["qkv_bias"]``, ``cfg["context_length"]``); q/k/v without biases.
  Bug: the causal mask lets each position see the next one.
- ``SettingsLayer(settings)``: a post-norm layer taking one object of a plain config class with twenty defaulted
  fields (``CodecSettings``), some read that no level sets (``feed_chunking``); untyped. Bug: softmax over queries.
- ``RelayLayer(d_model, dim_feedforward, **mixer_options)``: the number of heads reaches the attention only through
  ``**mixer_options``. Bug: the feed-forward's residual adds the normalized input.
- ``PlainBlock(breadth, n_attn, leak, widen=2)``: names no table lists; raw ``nn.Parameter`` weights used as
  ``x @ W``; a hand-written norm. Bug: the norm uses the unbiased variance.
- ``BiasOnlyOut(dim, num_heads)``: attention whose q/k/v have no bias but whose output projection has one (einsum).
  Bug: heads merged without moving them next to the feature axis.
- ``HeadPacked(d_model, nhead, dim_feedforward, dropout)``: one packed q/k/v projection laid out per head
  (``[q_h; k_h; v_h]`` row blocks, head after head). Bug: scores scaled by 1/head_dim.
- ``GappedStack(d_model, nhead, dim_feedforward, num_layers)``: an encoder stack with a ``ModuleList`` of ``None``
  taps beside its layers. Bug: the final norm's bias is subtracted.
- ``FF_INSTANCE``: a feed-forward given as an instance with its own widths (24 -> 56 -> 24), GELU by ``erf``.
  Bug: ``FF_INSTANCE_BUG`` uses the sigmoid approximation of GELU.
- ``SeqFirstSeq2Seq(d_model, nhead, ...)``: an independent sequence-first encoder-decoder that takes padding
  masks, merged into additive (N, 1, 1, S) masks. Bug: the memory's padding mask is ignored.
- ``SpecDecoder(spec: DecoderSpec)``: a decoder stack configured by a dataclass with a field no level sets and no
  default (``embedding_dropout``). Bug: the self-attention ignores ``tgt_mask``.
- ``SwitchedInputBias(width, heads, use_bias)``: a bias flag that switches the q/k/v biases only (the output
  projection keeps its own). Bug: scores scaled by 1/head_dim.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# -- a config dict read by key ----------------------------------------------------------------------------------


class KeyedBlock(nn.Module):
    causal_shift = 1

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        width, self.n_heads = cfg["emb_dim"], cfg["n_heads"]
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.W_query = nn.Linear(width, width, bias=cfg["qkv_bias"])
        self.W_key = nn.Linear(width, width, bias=cfg["qkv_bias"])
        self.W_value = nn.Linear(width, width, bias=cfg["qkv_bias"])
        self.out_proj = nn.Linear(width, width)
        self.ff = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.drop = nn.Dropout(cfg["drop_rate"])
        blocked = torch.triu(torch.ones(cfg["context_length"], cfg["context_length"]), diagonal=self.causal_shift)
        self.register_buffer("blocked", blocked.bool(), persistent=False)

    def _attend(self, x: Tensor) -> Tensor:
        b, t, e = x.shape
        heads = [w(x).view(b, t, self.n_heads, e // self.n_heads).transpose(1, 2)
                 for w in (self.W_query, self.W_key, self.W_value)]
        q, k, v = heads
        scores = (q @ k.transpose(2, 3)).masked_fill(self.blocked[:t, :t], -torch.inf)
        weights = self.drop(torch.softmax(scores / math.sqrt(k.shape[-1]), dim=-1))
        return self.out_proj((weights @ v).transpose(1, 2).contiguous().view(b, t, e))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop(self._attend(self.ln1(x)))
        return x + self.drop(self.ff(self.ln2(x)))


class KeyedBlockBug(KeyedBlock):
    causal_shift = 2  # the bug: each position also sees the next one


# -- a config class with twenty defaulted fields, untyped ------------------------------------------------------


class CodecSettings:
    def __init__(self, vocab_size: int = 30522, hidden_size: int = 768, num_attention_heads: int = 12,
                 intermediate_size: int = 3072, hidden_act: str = "gelu", hidden_dropout_prob: float = 0.1,
                 attention_probs_dropout_prob: float = 0.1, max_position_embeddings: int = 512,
                 type_vocab_size: int = 2, initializer_range: float = 0.02, layer_norm_eps: float = 1e-12,
                 pad_token_id: int = 0, feed_chunking: int = 0, is_decoder: bool = False,
                 position_embedding_type: str = "absolute", use_cache: bool = True, classifier_dropout: Any = None,
                 output_attentions: bool = False, torchscript: bool = False, pruned_heads: Any = None,
                 **extra: Any) -> None:
        self.vocab_size, self.hidden_size, self.num_attention_heads = vocab_size, hidden_size, num_attention_heads
        self.intermediate_size, self.hidden_act = intermediate_size, hidden_act
        self.hidden_dropout_prob, self.attention_probs_dropout_prob = hidden_dropout_prob, attention_probs_dropout_prob
        self.max_position_embeddings, self.type_vocab_size = max_position_embeddings, type_vocab_size
        self.initializer_range, self.layer_norm_eps, self.pad_token_id = initializer_range, layer_norm_eps, pad_token_id
        self.feed_chunking, self.is_decoder, self.position_embedding_type = feed_chunking, is_decoder, \
            position_embedding_type
        self.use_cache, self.classifier_dropout, self.output_attentions = use_cache, classifier_dropout, \
            output_attentions
        self.torchscript, self.pruned_heads = torchscript, pruned_heads or {}
        for key, value in extra.items():
            setattr(self, key, value)


ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu}


class SettingsLayer(nn.Module):
    softmax_dim = -1

    def __init__(self, settings) -> None:  # type: ignore[no-untyped-def]  # untyped, as library code often is
        super().__init__()
        e = settings.hidden_size
        self.heads, self.chunking = settings.num_attention_heads, settings.feed_chunking
        assert not settings.is_decoder and settings.position_embedding_type == "absolute"
        self.query, self.key, self.value, self.dense = (nn.Linear(e, e) for _ in range(4))
        self.attn_norm = nn.LayerNorm(e, eps=settings.layer_norm_eps)
        self.intermediate = nn.Linear(e, settings.intermediate_size)
        self.output = nn.Linear(settings.intermediate_size, e)
        self.out_norm = nn.LayerNorm(e, eps=settings.layer_norm_eps)
        self.act = ACTIVATIONS[settings.hidden_act]
        self.dropout = nn.Dropout(settings.hidden_dropout_prob)

    def split(self, x: Tensor) -> Tensor:
        return x.view(*x.shape[:-1], self.heads, -1).permute(0, 2, 1, 3)

    def forward(self, hidden: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        q, k, v = self.split(self.query(hidden)), self.split(self.key(hidden)), self.split(self.value(hidden))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.size(-1))
        if attention_mask is not None:
            scores = scores + attention_mask
        context = torch.matmul(scores.softmax(self.softmax_dim), v).permute(0, 2, 1, 3).flatten(2)
        hidden = self.attn_norm(hidden + self.dropout(self.dense(context)))
        return self.out_norm(hidden + self.dropout(self.output(self.act(self.intermediate(hidden)))))


class SettingsLayerBug(SettingsLayer):
    softmax_dim = -2  # the bug: normalized over the queries


# -- the number of heads passed down through **kwargs ----------------------------------------------------------


class HeadMixer(nn.Module):
    def __init__(self, dim: int, n_heads: int, dropout: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        self.n_heads, self.p = n_heads, dropout
        self.q_lin, self.k_lin, self.v_lin, self.o_lin = (nn.Linear(dim, dim, bias=bias) for _ in range(4))

    def forward(self, x: Tensor) -> Tensor:  # (S, N, E): heads folded into the batch, bmm
        s, n, e = x.shape
        fold = lambda t: t.reshape(s, n * self.n_heads, e // self.n_heads).transpose(0, 1)  # noqa: E731
        q, k, v = fold(self.q_lin(x)), fold(self.k_lin(x)), fold(self.v_lin(x))
        w = torch.bmm(q, k.transpose(1, 2)).div(math.sqrt(e // self.n_heads)).softmax(-1)
        return self.o_lin(torch.bmm(F.dropout(w, self.p, self.training), v).transpose(0, 1).reshape(s, n, e))


class RelayLayer(nn.Module):
    def __init__(self, d_model: int, dim_feedforward: int, **mixer_options: Any) -> None:
        super().__init__()
        self.mixer = HeadMixer(d_model, **mixer_options)
        self.norm_a, self.norm_b = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.grow, self.shrink = nn.Linear(d_model, dim_feedforward), nn.Linear(dim_feedforward, d_model)

    def forward(self, src: Tensor) -> Tensor:
        src = self.norm_a(src + self.mixer(src))
        return self.norm_b(src + self.shrink(F.relu(self.grow(src))))


class RelayLayerBug(RelayLayer):
    def forward(self, src: Tensor) -> Tensor:
        src = self.norm_a(src + self.mixer(src))
        normed = self.norm_b(src)  # the bug: the residual adds the normalized input
        return self.norm_b(normed + self.shrink(F.relu(self.grow(src))))


# -- constructor names no table lists --------------------------------------------------------------------------


class PlainBlock(nn.Module):
    unbiased = False

    def __init__(self, breadth: int, n_attn: int, leak: float, widen: int = 2) -> None:
        super().__init__()
        self.n_attn, self.leak = n_attn, leak
        g = torch.Generator().manual_seed(0)
        mat = lambda a, b: nn.Parameter(torch.randn(a, b, generator=g) / math.sqrt(a))  # noqa: E731  (in, out)
        self.w_in, self.b_in = mat(breadth, 3 * breadth), nn.Parameter(torch.zeros(3 * breadth))
        self.w_out, self.b_out = mat(breadth, breadth), nn.Parameter(torch.zeros(breadth))
        self.w_up, self.b_up = mat(breadth, widen * breadth), nn.Parameter(torch.zeros(widen * breadth))
        self.w_down, self.b_down = mat(widen * breadth, breadth), nn.Parameter(torch.zeros(breadth))
        self.g1, self.s1 = nn.Parameter(torch.ones(breadth)), nn.Parameter(torch.zeros(breadth))
        self.g2, self.s2 = nn.Parameter(torch.ones(breadth)), nn.Parameter(torch.zeros(breadth))

    def _norm(self, x: Tensor, gain: Tensor, shift: Tensor) -> Tensor:
        centred = x - x.mean(-1, keepdim=True)
        return gain * centred / torch.sqrt(x.var(-1, keepdim=True, unbiased=self.unbiased) + 1e-5) + shift

    def forward(self, x: Tensor) -> Tensor:  # (N, L, E), pre-norm
        n, length, e = x.shape
        q, k, v = (self._norm(x, self.g1, self.s1) @ self.w_in + self.b_in).chunk(3, dim=-1)
        split = lambda t: t.reshape(n, length, self.n_attn, -1).transpose(1, 2)  # noqa: E731
        att = F.dropout((split(q) @ split(k).transpose(-1, -2) * (e // self.n_attn) ** -0.5).softmax(-1), self.leak,
                        self.training)
        x = x + (att @ split(v)).transpose(1, 2).reshape(n, length, e) @ self.w_out + self.b_out
        return x + F.relu(self._norm(x, self.g2, self.s2) @ self.w_up + self.b_up) @ self.w_down + self.b_down


class PlainBlockBug(PlainBlock):
    unbiased = True  # the bug: the variance divides by E - 1


# -- no q/k/v bias, a biased output projection ------------------------------------------------------------------


class BiasOnlyOut(nn.Module):
    merge = "bhld->blhd"

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.h = num_heads
        self.to_q, self.to_k, self.to_v = (nn.Linear(dim, dim, bias=False) for _ in range(3))
        self.proj = nn.Linear(dim, dim)

    def forward(self, query: Tensor, key: Tensor, value: Tensor) -> Tensor:  # (N, L, E)
        q, k, v = (f(t).unflatten(-1, (self.h, -1)) for f, t in ((self.to_q, query), (self.to_k, key),
                                                                 (self.to_v, value)))
        att = torch.einsum("blhd,bshd->bhls", q, k).mul(q.shape[-1] ** -0.5).softmax(-1)
        out = torch.einsum("bhls,bshd->bhld", att, v)
        return self.proj(torch.einsum(self.merge, out).flatten(2) if self.merge else out.reshape(query.shape))


class BiasOnlyOutBug(BiasOnlyOut):
    merge = ""  # the bug: (N, H, L, D) flattened straight to (N, L, E)


# -- q/k/v packed per head --------------------------------------------------------------------------------------


class HeadPacked(nn.Module):
    power = 0.5

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.nhead, self.p = nhead, dropout
        self.Wqkv = nn.Linear(d_model, 3 * d_model)
        self.Wo = nn.Linear(d_model, d_model)
        self.ln_attn, self.ln_ff = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.fc1, self.fc2 = nn.Linear(d_model, dim_feedforward), nn.Linear(dim_feedforward, d_model)

    def forward(self, x: Tensor) -> Tensor:  # (N, L, E), post-norm
        n, length, e = x.shape
        per_head = self.Wqkv(x).view(n, length, self.nhead, 3 * (e // self.nhead)).transpose(1, 2)
        q, k, v = per_head.chunk(3, dim=-1)  # each head's rows: its q, then its k, then its v
        att = torch.softmax(q @ k.transpose(-2, -1) / (k.shape[-1] ** self.power), dim=-1)
        mixed = (F.dropout(att, self.p, self.training) @ v).transpose(1, 2).reshape(n, length, e)
        x = self.ln_attn(x + self.Wo(mixed))
        return self.ln_ff(x + self.fc2(F.dropout(F.relu(self.fc1(x)), self.p, self.training)))


class HeadPackedBug(HeadPacked):
    power = 1.0  # the bug: scaled by 1/head_dim


# -- None entries in a module list ------------------------------------------------------------------------------


class GappedLayer(nn.Module):
    def __init__(self, d: int, h: int, f: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(d, h, batch_first=True)
        self.n1, self.n2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, f), nn.ReLU(), nn.Linear(f, d))

    def forward(self, x: Tensor, pad: Tensor | None) -> Tensor:
        y = self.n1(x)
        x = x + self.attn(y, y, y, key_padding_mask=pad, need_weights=False)[0]
        return x + self.ff(self.n2(x))


class GappedStack(nn.Module):
    shift_sign = 1.0

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([GappedLayer(d_model, nhead, dim_feedforward) for _ in range(num_layers)])
        self.taps = nn.ModuleList([None for _ in range(num_layers)])  # adapters, none fitted
        self.final = nn.LayerNorm(d_model)

    def forward(self, x: Tensor, src_key_padding_mask: Tensor | None = None) -> Tensor:  # (N, S, E)
        for layer, tap in zip(self.layers, self.taps, strict=True):
            x = layer(x, src_key_padding_mask)
            if tap is not None:
                x = tap(x)
        f = self.final
        return F.layer_norm(x, f.normalized_shape, f.weight, self.shift_sign * f.bias, f.eps)


class GappedStackBug(GappedStack):
    shift_sign = -1.0  # the bug: the final norm's shift subtracted


# -- a feed-forward given as an instance -----------------------------------------------------------------------


class Expand(nn.Module):
    def __init__(self, d_in: int, hidden: int, exact: bool = True) -> None:
        super().__init__()
        self.up, self.down, self.exact = nn.Linear(d_in, hidden), nn.Linear(hidden, d_in), exact

    def forward(self, x: Tensor) -> Tensor:
        h = self.up(x)
        h = 0.5 * h * (1.0 + torch.erf(h / math.sqrt(2.0))) if self.exact else h * torch.sigmoid(1.702 * h)
        return self.down(h)


FF_INSTANCE = Expand(24, 56)
FF_INSTANCE_BUG = Expand(24, 56, exact=False)  # the bug: GELU's sigmoid approximation


PACKED_INSTANCE = HeadPacked(24, 4, 40, dropout=0.0)  # an instance: its number of heads is measured


# -- a ``bias`` argument that switches some biases only ----------------------------------------------------------


class SwitchedInputBias(nn.Module):
    """``use_bias`` switches the q/k/v biases only; the output projection always has one, so with biases off
    it is nn.MultiheadAttention(bias=True) with in_proj_bias at 0, not bias=False. Functional style: one
    packed (3E, E) parameter for q, k and v, split by ``chunk`` after one matrix product."""

    def __init__(self, width: int, heads: int, use_bias: bool = True, scale_power: float = 0.5) -> None:
        super().__init__()
        self.heads, self.scale_power = heads, scale_power
        self.qkv = nn.Parameter(torch.randn(3 * width, width) / math.sqrt(width))
        self.qkv_b = nn.Parameter(torch.zeros(3 * width)) if use_bias else None
        self.proj = nn.Linear(width, width)

    def forward(self, query: Tensor, key: Tensor, value: Tensor) -> Tensor:  # batch-first
        w, b = self.qkv.chunk(3), (None, None, None) if self.qkv_b is None else self.qkv_b.chunk(3)
        q, k, v = (F.linear(x, w[i], b[i]) for i, x in enumerate((query, key, value)))
        split = lambda t: t.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # noqa: E731
        q, k, v = split(q), split(k), split(v)
        scores = q @ k.transpose(-1, -2) / q.shape[-1] ** self.scale_power
        return self.proj((scores.softmax(-1) @ v).transpose(1, 2).flatten(-2))


class SwitchedInputBiasBug(SwitchedInputBias):
    def __init__(self, width: int, heads: int, use_bias: bool = True) -> None:
        super().__init__(width, heads, use_bias, scale_power=1.0)  # the bug: scores scaled by 1/head_dim
