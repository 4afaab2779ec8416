"""Independent Transformer pieces, written the ways real code is, for ``parity diagnose`` on real code (issue 19).

Each style is unlike handmade's and unlike the others'; each has a correct class and classes with one bug.

- ``InPlaceLayer`` (encoder_layer): matmul attention in its own module, the feed-forward an ``nn.Sequential``
  with ``nn.ReLU(inplace=True)`` after its first Linear, residuals added in place (``h += x``) on tensors
  the submodules returned. ``InPlaceNorm2Eps``: its second LayerNorm has eps 1e-6 hard-coded.
- ``SplitLayer`` (encoder_layer, HF/BERT-like): the attention split into a ``self`` part (``query``/``key``/
  ``value``) and an ``output`` part holding the output ``dense``, the residual and the ``LayerNorm``; an
  ``intermediate`` and an ``output`` module for the feed-forward; batch-first, post-norm only, a
  dataclass config. ``SplitWidthScaled``: scores scaled by 1/sqrt(hidden_size).
- ``PackedGPT`` (decoder_only): one packed ``qkv`` Linear chunked in three, einsum scores, always causal
  with the mask built inside from ``tril``. ``PackedCausalOffByOne``: ``tril(1)``, so position t sees t + 1;
  ``PackedMergeNoTranspose``: heads merged by ``reshape(B, T, E)`` straight from (B, H, T, hd).
- ``HeadSharedAttention`` (attention): one ``head_dim x head_dim`` projection for q, k and v each, shared by
  every head (applied to the input cut into heads), scores scaled by 1/sqrt(embed_size): both bugs are
  common in tutorial code.
- ``FunctionalEncoder`` (encoder): parameters in small holders, the computation in plain functions; the
  feed-forward's two matrices in one module (a target module standing for two built-in ones).
  ``FunctionalNoResidual``: the attention residual is missing; ``FunctionalDoubleResidual``: the
  feed-forward residual is added twice (2x + f(x)); ``FunctionalEvalDropout``: ``F.dropout(h, 0.1)`` in the
  feed-forward (training left True), whatever the mode.
- ``ShapeSniffingDecoderLayer`` (decoder_layer): attention that takes the packed self-attention path when
  key and query have the same shape; ``ShapeSniffingBug`` treats cross-attention as self-attention when the
  target and memory lengths are equal (it then attends over tgt), right otherwise.
- ``BatchFirstOnlyTransformer`` (transformer, a drop-in subclass of nn.Transformer): raises unless batch-first
  (a shape check, not a decline), and its LayerNorms use eps 1e-3.
- ``batch_first_map_adapter`` (transformer): an adapter whose ``submodules()`` maps only batch-first models;
  its model uses eps 1e-6 in every LayerNorm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# -- shared helpers ----------------------------------------------------------------------------------------------


def blocked_scores(scores: Tensor, mask: Tensor | None, padding: Tensor | None) -> Tensor:
    """Scores (N, H, L, S) with torch's masks added: bool True = blocked, float added; padding (N, S)."""
    N, H, L, S = scores.shape
    for m, shape in ((mask, (N, H, L, S) if mask is not None and mask.dim() == 3 else (L, S)), (padding, (N, 1, 1, S))):
        if m is None:
            continue
        add = torch.zeros(m.shape, dtype=scores.dtype, device=scores.device).masked_fill(m, -math.inf) \
            if m.dtype == torch.bool else m.to(scores.dtype)
        scores = scores + add.reshape(shape)
    return scores


def safe_softmax(scores: Tensor) -> Tensor:
    """softmax over the keys; a query whose keys are all blocked gets 0 (as nn.MultiheadAttention)."""
    empty = torch.isneginf(scores).all(-1, keepdim=True)
    return scores.masked_fill(empty, 0.0).softmax(-1).masked_fill(empty, 0.0)


# -- 1. in-place operations --------------------------------------------------------------------------------------


class MatmulAttention(nn.Module):
    """Batch-first self-attention: four Linears, matmul scores."""

    def __init__(self, width: int, heads: int, bias: bool, p: float) -> None:
        super().__init__()
        self.to_q, self.to_k, self.to_v = (nn.Linear(width, width, bias=bias) for _ in range(3))
        self.to_out = nn.Linear(width, width, bias=bias)
        self.heads, self.drop = heads, nn.Dropout(p)

    def forward(self, x: Tensor, mask: Tensor | None, padding: Tensor | None) -> Tensor:
        N, L, E = x.shape
        split = lambda t: t.view(N, L, self.heads, E // self.heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.to_q(x)), split(self.to_k(x)), split(self.to_v(x))
        scores = blocked_scores(q @ k.transpose(-1, -2) / math.sqrt(E // self.heads), mask, padding)
        out = self.drop(safe_softmax(scores)) @ v
        return self.to_out(out.transpose(1, 2).reshape(N, L, E))


class InPlaceLayer(nn.Module):
    """nn.TransformerEncoderLayer's computation with in-place ReLU and in-place residual adds."""

    norm2_eps: float | None = None

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation: str = "relu", layer_norm_eps: float = 1e-5, batch_first: bool = False,
                 norm_first: bool = False, bias: bool = True) -> None:
        super().__init__()
        if activation not in ("relu", "gelu"):
            raise NotImplementedError(f"activation {activation!r}: relu or gelu only")
        self.attn = MatmulAttention(d_model, nhead, bias, dropout)
        act = nn.ReLU(inplace=True) if activation == "relu" else nn.GELU()
        self.ff = nn.Sequential(nn.Linear(d_model, dim_feedforward, bias=bias), act, nn.Dropout(dropout),
                                nn.Linear(dim_feedforward, d_model, bias=bias))
        self.norm1 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias)
        self.norm2 = nn.LayerNorm(d_model, eps=self.norm2_eps or layer_norm_eps, bias=bias)
        self.drop1, self.drop2 = nn.Dropout(dropout), nn.Dropout(dropout)
        self.batch_first, self.norm_first = batch_first, norm_first

    def forward(self, src: Tensor, src_mask: Tensor | None = None, src_key_padding_mask: Tensor | None = None,
                is_causal: bool = False) -> Tensor:
        unbatched = src.dim() == 2
        x = src.unsqueeze(0) if unbatched else src if self.batch_first else src.transpose(0, 1)
        pad = None if src_key_padding_mask is None else src_key_padding_mask.reshape(x.size(0), -1)
        if self.norm_first:
            h = self.drop1(self.attn(self.norm1(x), src_mask, pad))
            h += x
            y = self.drop2(self.ff(self.norm2(h)))
            y += h
            x = y
        else:
            h = self.drop1(self.attn(x, src_mask, pad))
            h += x
            h = self.norm1(h)
            y = self.drop2(self.ff(h))
            y += h
            x = self.norm2(y)
        return x.squeeze(0) if unbatched else x if self.batch_first else x.transpose(0, 1)


class InPlaceNorm2Eps(InPlaceLayer):
    norm2_eps = 1e-6


# -- 2. HF-like split attention ------------------------------------------------------------------------------------


@dataclass
class EncoderSettings:
    hidden_size: int = 64
    num_attention_heads: int = 4
    intermediate_size: int = 256
    dropout: float = 0.1
    layer_norm_eps: float = 1e-5
    width_scaled: bool = False  # the bug's switch (a user never sets it)


class SelfPart(nn.Module):
    def __init__(self, s: EncoderSettings) -> None:
        super().__init__()
        self.query = nn.Linear(s.hidden_size, s.hidden_size)
        self.key = nn.Linear(s.hidden_size, s.hidden_size)
        self.value = nn.Linear(s.hidden_size, s.hidden_size)
        self.dropout = nn.Dropout(s.dropout)
        self.heads, self.hidden = s.num_attention_heads, s.hidden_size
        self.scale = s.hidden_size ** -0.5 if s.width_scaled else (s.hidden_size // s.num_attention_heads) ** -0.5

    def shape(self, t: Tensor) -> Tensor:
        return t.view(*t.shape[:2], self.heads, -1).permute(0, 2, 1, 3)

    def forward(self, hidden_states: Tensor) -> Tensor:
        q, k, v = self.shape(self.query(hidden_states)), self.shape(self.key(hidden_states)), \
            self.shape(self.value(hidden_states))
        probs = self.dropout(torch.matmul(q, k.transpose(-1, -2)).mul(self.scale).softmax(-1))
        context = torch.matmul(probs, v).permute(0, 2, 1, 3).contiguous()
        return context.view(*hidden_states.shape[:2], self.hidden)


class OutputPart(nn.Module):
    """Dense, dropout, residual, LayerNorm: the part after a sublayer."""

    def __init__(self, d_in: int, s: EncoderSettings) -> None:
        super().__init__()
        self.dense = nn.Linear(d_in, s.hidden_size)
        self.LayerNorm = nn.LayerNorm(s.hidden_size, eps=s.layer_norm_eps)
        self.dropout = nn.Dropout(s.dropout)

    def forward(self, hidden_states: Tensor, input_tensor: Tensor) -> Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + input_tensor)


class AttentionPart(nn.Module):
    def __init__(self, s: EncoderSettings) -> None:
        super().__init__()
        self.self = SelfPart(s)
        self.output = OutputPart(s.hidden_size, s)

    def forward(self, hidden_states: Tensor) -> Tensor:
        return self.output(self.self(hidden_states), hidden_states)


class Intermediate(nn.Module):
    def __init__(self, s: EncoderSettings) -> None:
        super().__init__()
        self.dense = nn.Linear(s.hidden_size, s.intermediate_size)

    def forward(self, hidden_states: Tensor) -> Tensor:
        return F.relu(self.dense(hidden_states))


class SplitLayer(nn.Module):
    """A BERT-like layer (post-norm, relu, batch-first): attention, intermediate, output."""

    width_scaled = False

    def __init__(self, config: EncoderSettings) -> None:
        super().__init__()
        config.width_scaled = self.width_scaled
        self.attention = AttentionPart(config)
        self.intermediate = Intermediate(config)
        self.output = OutputPart(config.intermediate_size, config)

    def forward(self, hidden_states: Tensor) -> Tensor:
        attended = self.attention(hidden_states)
        return self.output(self.intermediate(attended), attended)


class SplitWidthScaled(SplitLayer):
    width_scaled = True


# -- 3. packed q/k/v, always causal ----------------------------------------------------------------------------------


@dataclass
class TinyGPTSettings:
    width: int = 32
    n_heads: int = 4
    depth: int = 2
    mlp_dim: int = 128
    p_drop: float = 0.0


class PackedCausalAttention(nn.Module):
    def __init__(self, s: TinyGPTSettings, bug: str) -> None:
        super().__init__()
        self.qkv = nn.Linear(s.width, 3 * s.width)
        self.proj = nn.Linear(s.width, s.width)
        self.heads, self.bug = s.n_heads, bug

    def forward(self, x: Tensor) -> Tensor:
        B, T, E = x.shape  # noqa: N806
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in self.qkv(x).chunk(3, dim=-1))
        scores = torch.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(E // self.heads)
        allowed = torch.ones(T, T, dtype=torch.bool, device=x.device).tril(1 if self.bug == "off_by_one" else 0)
        weights = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
        y = torch.einsum("bhqk,bhkd->bhqd", weights, v)
        y = y.reshape(B, T, E) if self.bug == "merge" else y.transpose(1, 2).reshape(B, T, E)
        return self.proj(y)


class PackedBlock(nn.Module):
    def __init__(self, s: TinyGPTSettings, bug: str) -> None:
        super().__init__()
        self.pre_attn, self.pre_mlp = nn.LayerNorm(s.width), nn.LayerNorm(s.width)
        self.attn = PackedCausalAttention(s, bug)
        self.mlp = nn.Sequential(nn.Linear(s.width, s.mlp_dim), nn.GELU(), nn.Linear(s.mlp_dim, s.width),
                                 nn.Dropout(s.p_drop))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.pre_attn(x))
        return x + self.mlp(self.pre_mlp(x))


class PackedGPT(nn.Module):
    bug = ""

    def __init__(self, settings: TinyGPTSettings) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(PackedBlock(settings, self.bug) for _ in range(settings.depth))
        self.norm_out = nn.LayerNorm(settings.width)

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return self.norm_out(x)


class PackedCausalOffByOne(PackedGPT):
    bug = "off_by_one"


class PackedMergeNoTranspose(PackedGPT):
    bug = "merge"


# -- 4. one projection shared across heads ---------------------------------------------------------------------------


class HeadSharedAttention(nn.Module):
    """q, k, v each through ONE head_dim x head_dim Linear applied to every head's slice of the input; the
    scores divided by sqrt(embed_size); keep-masks (1 = may attend); batch-first; returns the output only."""

    def __init__(self, embed_size: int, heads: int) -> None:
        super().__init__()
        self.embed_size, self.heads, self.head_dim = embed_size, heads, embed_size // heads
        self.values = nn.Linear(self.head_dim, self.head_dim, bias=False)
        self.keys = nn.Linear(self.head_dim, self.head_dim, bias=False)
        self.queries = nn.Linear(self.head_dim, self.head_dim, bias=False)
        self.fc_out = nn.Linear(embed_size, embed_size)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None = None) -> Tensor:
        n = query.shape[0]
        cut = lambda t: t.reshape(n, t.shape[1], self.heads, self.head_dim)  # noqa: E731
        q, k, v = self.queries(cut(query)), self.keys(cut(key)), self.values(cut(value))
        energy = torch.einsum("nqhd,nkhd->nhqk", q, k)
        if mask is not None:
            energy = energy.masked_fill(mask == 0, float("-1e20"))
        attention = torch.softmax(energy / self.embed_size ** 0.5, dim=3)
        out = torch.einsum("nhqk,nkhd->nqhd", attention, v).reshape(n, query.shape[1], self.embed_size)
        return self.fc_out(out)


# -- 5. functional style ---------------------------------------------------------------------------------------------


class Affine(nn.Module):
    """A weight and a bias, used by the functions below (never called itself)."""

    def __init__(self, n_out: int, n_in: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(n_out, n_in) / math.sqrt(n_in))
        self.b = nn.Parameter(torch.zeros(n_out))


class NormParams(nn.Module):
    def __init__(self, width: int, eps: float) -> None:
        super().__init__()
        self.g, self.b, self.eps = nn.Parameter(torch.ones(width)), nn.Parameter(torch.zeros(width)), eps

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, x.shape[-1:], self.g, self.b, self.eps)


class AttnParams(nn.Module):
    """Packed in-projection and out-projection; the forward is the functional attention."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.inp, self.out, self.heads = Affine(3 * width, width), Affine(width, width), heads

    def forward(self, x: Tensor, mask: Tensor | None, padding: Tensor | None) -> Tensor:
        return functional_attention(x, self.inp, self.out, self.heads, mask, padding)


class MlpParams(nn.Module):
    """Both feed-forward matrices in one module: it stands for nn's linear1 and linear2 together."""

    def __init__(self, width: int, hidden: int, bug: str) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(hidden, width) / math.sqrt(width))
        self.b1 = nn.Parameter(torch.zeros(hidden))
        self.w2 = nn.Parameter(torch.randn(width, hidden) / math.sqrt(hidden))
        self.b2 = nn.Parameter(torch.zeros(width))
        self.bug = bug

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(F.linear(x, self.w1, self.b1))
        if self.bug == "eval_dropout":
            h = F.dropout(h, 0.1)
        return F.linear(h, self.w2, self.b2)


def functional_attention(x: Tensor, inp: Affine, out: Affine, heads: int, mask: Tensor | None,
                         padding: Tensor | None) -> Tensor:
    """x (L, N, E), sequence-first."""
    L, N, E = x.shape
    q, k, v = F.linear(x, inp.w, inp.b).chunk(3, dim=-1)
    q, k, v = (t.reshape(L, N * heads, E // heads).transpose(0, 1) for t in (q, k, v))  # (N*H, L, hd)
    scores = torch.bmm(q, k.transpose(1, 2)).view(N, heads, L, L) / math.sqrt(E // heads)
    weights = safe_softmax(blocked_scores(scores, mask, padding)).view(N * heads, L, L)
    merged = torch.bmm(weights, v).transpose(0, 1).reshape(L, N, E)
    return F.linear(merged, out.w, out.b)


class FunctionalBlock(nn.Module):
    def __init__(self, width: int, heads: int, hidden: int, eps: float, bug: str) -> None:
        super().__init__()
        self.attn, self.mlp = AttnParams(width, heads), MlpParams(width, hidden, bug)
        self.ln_a, self.ln_m = NormParams(width, eps), NormParams(width, eps)
        self.bug = bug

    def forward(self, x: Tensor, mask: Tensor | None, padding: Tensor | None) -> Tensor:
        a = self.attn(x, mask, padding)
        x = self.ln_a(a if self.bug == "no_residual" else x + a)
        f = self.mlp(x)
        return self.ln_m(x + x + f if self.bug == "double_residual" else x + f)


class FunctionalEncoder(nn.Module):
    """Post-norm, relu, sequence-first, no final norm: what nn.TransformerEncoder computes without ``norm``."""

    bug = ""

    def __init__(self, d_model: int, nhead: int, num_layers: int, dim_feedforward: int,
                 layer_norm_eps: float = 1e-5) -> None:
        super().__init__()
        self.layers = nn.ModuleList(FunctionalBlock(d_model, nhead, dim_feedforward, layer_norm_eps, self.bug)
                                    for _ in range(num_layers))

    def forward(self, src: Tensor, mask: Tensor | None = None, src_key_padding_mask: Tensor | None = None) -> Tensor:
        x = src
        for layer in self.layers:
            x = layer(x, mask, src_key_padding_mask)
        return x


class FunctionalNoResidual(FunctionalEncoder):
    bug = "no_residual"


class FunctionalDoubleResidual(FunctionalEncoder):
    bug = "double_residual"


class FunctionalEvalDropout(FunctionalEncoder):
    bug = "eval_dropout"


# -- 6. a bug that shows only when two lengths are equal -------------------------------------------------------------


class SniffingAttention(nn.Module):
    """Sequence-first attention with separate q and packed k/v projections. When key has the query's shape it
    takes the "self-attention" path and projects the query for keys and values too (``sniff``: the bug)."""

    def __init__(self, width: int, heads: int, sniff: bool) -> None:
        super().__init__()
        self.q, self.kv, self.o = nn.Linear(width, width), nn.Linear(width, 2 * width), nn.Linear(width, width)
        self.heads, self.sniff = heads, sniff

    def forward(self, query: Tensor, key: Tensor, mask: Tensor | None, padding: Tensor | None) -> Tensor:
        L, N, E = query.shape
        source = query if self.sniff and key.shape == query.shape else key
        S, hd = source.size(0), E // self.heads
        k, v = self.kv(source).chunk(2, dim=-1)
        heads = lambda t, n: t.reshape(n, N, self.heads, hd).permute(1, 2, 0, 3)  # noqa: E731
        scores = heads(self.q(query), L) @ heads(k, S).transpose(-1, -2) / math.sqrt(hd)
        out = safe_softmax(blocked_scores(scores, mask, padding)) @ heads(v, S)
        return self.o(out.permute(2, 0, 1, 3).reshape(L, N, E))


class ShapeSniffingDecoderLayer(nn.Module):
    """Post-norm decoder layer, relu, sequence-first (declines the rest)."""

    sniff = False

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float = 0.0,
                 batch_first: bool = False, norm_first: bool = False, activation: str = "relu") -> None:
        super().__init__()
        if batch_first or norm_first or activation != "relu" or dropout:
            raise NotImplementedError("sequence-first post-norm relu without dropout only")
        self.self_attn = SniffingAttention(d_model, nhead, False)
        self.cross_attn = SniffingAttention(d_model, nhead, self.sniff)
        self.fc1, self.fc2 = nn.Linear(d_model, dim_feedforward), nn.Linear(dim_feedforward, d_model)
        self.ln1, self.ln2, self.ln3 = nn.LayerNorm(d_model), nn.LayerNorm(d_model), nn.LayerNorm(d_model)

    def forward(self, tgt: Tensor, memory: Tensor, tgt_mask: Tensor | None = None, memory_mask: Tensor | None = None,
                tgt_key_padding_mask: Tensor | None = None,
                memory_key_padding_mask: Tensor | None = None) -> Tensor:
        unbatched = tgt.dim() == 2
        if unbatched:
            tgt, memory = tgt.unsqueeze(1), memory.unsqueeze(1)
            tgt_key_padding_mask = None if tgt_key_padding_mask is None else tgt_key_padding_mask.unsqueeze(0)
            memory_key_padding_mask = None if memory_key_padding_mask is None else memory_key_padding_mask.unsqueeze(0)
        x = self.ln1(tgt + self.self_attn(tgt, tgt, tgt_mask, tgt_key_padding_mask))
        x = self.ln2(x + self.cross_attn(x, memory, memory_mask, memory_key_padding_mask))
        x = self.ln3(x + self.fc2(F.relu(self.fc1(x))))
        return x.squeeze(1) if unbatched else x


class ShapeSniffingBug(ShapeSniffingDecoderLayer):
    sniff = True


# -- 7. crashes in one layout ------------------------------------------------------------------------------------------


class BatchFirstOnlyTransformer(nn.Transformer):
    """A drop-in nn.Transformer written for (batch, seq, feature) tensors only: its forward checks the layout and
    raises for sequence-first ones (a crash, not a decline), and every LayerNorm has eps 1e-3 (the bug)."""

    def __init__(self, **config: Any) -> None:
        super().__init__(**config)
        for module in self.modules():
            if isinstance(module, nn.LayerNorm):
                module.eps = 1e-3

    def forward(self, src: Tensor, tgt: Tensor, *args: Any, **kwargs: Any) -> Tensor:  # type: ignore[override]
        if not self.batch_first or src.dim() != 3:
            raise RuntimeError(f"expected (batch, seq, feature) tensors, got src of shape {tuple(src.shape)}")
        return super().forward(src, tgt, *args, **kwargs)


# -- 8. an adapter whose map reaches batch-first models only ---------------------------------------------------------


class BatchFirstMapAdapter:
    """Builds nn.Transformer with eps 1e-6 in every LayerNorm (the bug); ``submodules`` maps batch-first models
    only (sequence-first ones get a map to nothing: the names of a layout it was never written for)."""

    def build(self, **config: Any) -> nn.Module:
        return nn.Transformer(**{**config, "layer_norm_eps": 1e-6})

    def load_reference(self, model: nn.Module, reference: nn.Module) -> None:
        model.load_state_dict(reference.state_dict())

    def run(self, model: nn.Module, src: Tensor, tgt: Tensor, **kwargs: object) -> Tensor:
        return model(src, tgt, **kwargs)

    def submodules(self, model: nn.Module) -> dict[str, nn.Module]:
        if not model.batch_first:
            return {}
        return {name: module for name, module in model.named_modules() if name}


batch_first_map_adapter = BatchFirstMapAdapter()
