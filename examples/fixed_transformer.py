"""The course's Transformer (course_transformer.py) with every difference ``parity diagnose`` found repaired.

Same classes, same structure; each repair is marked ``# FIX:``. It passes the equivalence suite:
``pytest equivalence_tests --impl examples.fixed_transformer:adapter``.

1. LayerNorm: biased variance, eps inside the square root.
2. Residual connections: post-norm by default (``norm_first=False``), pre-norm when asked.
3. Masks: nn.Transformer's convention (True / -inf = blocked), added to the scores, so finite float masks
   are biases; a query whose keys are all blocked attends to nothing.
4. Each decoder layer has its own self- and cross-attention, and the cross-attention takes memory masks.
5. The options the course lacked: GELU (exact) or any callable activation, ``bias=False``, causal hints.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def clones(module: nn.Module, n: int) -> nn.ModuleList:
    """N identical layers."""
    return nn.ModuleList([copy.deepcopy(module) for _ in range(n)])


class LayerNorm(nn.Module):
    """Layer normalization, as nn.LayerNorm computes it."""

    def __init__(self, features: int, eps: float = 1e-5, bias: bool = True) -> None:
        super().__init__()
        self.a_2 = nn.Parameter(torch.ones(features))
        self.b_2 = nn.Parameter(torch.zeros(features)) if bias else None
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(-1, keepdim=True)
        var = (x - mean).square().mean(-1, keepdim=True)  # FIX: biased variance (divide by n, not n - 1)
        y = (x - mean) * torch.rsqrt(var + self.eps) * self.a_2  # FIX: eps inside the square root
        return y if self.b_2 is None else y + self.b_2


def attention(query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None = None,
              dropout: nn.Dropout | None = None) -> tuple[Tensor, Tensor]:
    """Scaled dot-product attention; ``mask`` is added to the scores (-inf blocks)."""
    d_k = query.size(-1)
    scores = torch.matmul(query * (1.0 / math.sqrt(d_k)), key.transpose(-2, -1))
    blocked = None
    if mask is not None:
        scores = scores + mask  # FIX: add the mask: finite values are biases, -inf blocks
        blocked = torch.isneginf(mask).all(-1, keepdim=True)  # FIX: a row with every key blocked ...
        scores = scores.masked_fill(blocked, 0.0)
    p_attn = scores.softmax(dim=-1)
    if blocked is not None:
        p_attn = p_attn.masked_fill(blocked, 0.0)  # ... attends to nothing, as in nn.Transformer
    if dropout is not None:
        p_attn = dropout(p_attn)
    return torch.matmul(p_attn, value), p_attn


class MultiHeadAttention(nn.Module):
    """Multi-head attention with four linear maps: queries, keys, values, output."""

    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.1, bias: bool = True) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model must be divisible by num_heads, got d_model={d_model}, num_heads={num_heads}")
        self.d_k = d_model // num_heads
        self.h = num_heads
        self.w_q = nn.Linear(d_model, d_model, bias=bias)
        self.w_k = nn.Linear(d_model, d_model, bias=bias)
        self.w_v = nn.Linear(d_model, d_model, bias=bias)
        self.w_o = nn.Linear(d_model, d_model, bias=bias)
        self.dropout = nn.Dropout(p=dropout)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None = None) -> Tensor:
        """``mask``: additive, broadcastable to (N, h, L, S)."""
        nbatches = query.size(0)
        query, key, value = (
            lin(x).view(nbatches, -1, self.h, self.d_k).transpose(1, 2)
            for lin, x in zip((self.w_q, self.w_k, self.w_v), (query, key, value), strict=True)
        )
        x, _ = attention(query, key, value, mask=mask, dropout=self.dropout)
        x = x.transpose(1, 2).contiguous().view(nbatches, -1, self.h * self.d_k)
        return self.w_o(x)


class FeedForward(nn.Module):
    """FFN(x) = act(x W1 + b1) W2 + b2."""

    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.1,
                 activation: str | Callable[[Tensor], Tensor] = "relu", bias: bool = True) -> None:
        super().__init__()
        self.w_1 = nn.Linear(d_model, d_ff, bias=bias)
        self.w_2 = nn.Linear(d_ff, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)
        # FIX: nn.Transformer's activations: "relu", "gelu" (exact, erf) or a callable
        self.activation = {"relu": F.relu, "gelu": F.gelu}.get(activation, activation)

    def forward(self, x: Tensor) -> Tensor:
        return self.w_2(self.dropout(self.activation(self.w_1(x))))


class ResidualConnection(nn.Module):
    """A residual connection around a sublayer, with layer norm after (default) or before it."""

    def __init__(self, size: int, dropout: float, eps: float = 1e-5, norm_first: bool = False,
                 bias: bool = True) -> None:
        super().__init__()
        self.norm = LayerNorm(size, eps, bias)
        self.dropout = nn.Dropout(dropout)
        self.norm_first = norm_first

    def forward(self, x: Tensor, sublayer: Callable[[Tensor], Tensor]) -> Tensor:
        if self.norm_first:
            return x + self.dropout(sublayer(self.norm(x)))
        return self.norm(x + self.dropout(sublayer(x)))  # FIX: post-norm, nn.Transformer's default


class EncoderLayer(nn.Module):
    """Self-attention, then feed-forward."""

    def __init__(self, d_model: int, self_attention: MultiHeadAttention, feed_forward: FeedForward,
                 dropout: float, **residual: object) -> None:
        super().__init__()
        self.self_attention, self.feed_forward = self_attention, feed_forward
        self.sublayer = clones(ResidualConnection(d_model, dropout, **residual), 2)
        self.size = d_model

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        x = self.sublayer[0](x, lambda x: self.self_attention(x, x, x, mask))
        return self.sublayer[1](x, self.feed_forward)


class DecoderLayer(nn.Module):
    """Masked self-attention, cross-attention over the encoder output, feed-forward."""

    def __init__(self, d_model: int, self_attention: MultiHeadAttention, cross_attention: MultiHeadAttention,
                 feed_forward: FeedForward, dropout: float, **residual: object) -> None:
        super().__init__()
        self.self_attention, self.cross_attention = self_attention, cross_attention
        self.feed_forward = feed_forward
        self.sublayer = clones(ResidualConnection(d_model, dropout, **residual), 3)
        self.size = d_model

    def forward(self, x: Tensor, encoder_output: Tensor, mask: Tensor | None,
                memory_mask: Tensor | None = None) -> Tensor:
        x1 = self.sublayer[0](x, lambda x: self.self_attention(x, x, x, mask))
        # FIX: the cross-attention takes its own mask (memory_mask and memory_key_padding_mask)
        x2 = self.sublayer[1](x1, lambda x: self.cross_attention(x, encoder_output, encoder_output, memory_mask))
        return self.sublayer[2](x2, self.feed_forward)


class Encoder(nn.Module):
    """N encoder layers, then a final layer norm."""

    def __init__(self, layer: EncoderLayer, num_layers: int, norm: LayerNorm) -> None:
        super().__init__()
        self.layers = clones(layer, num_layers)
        self.norm = norm

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        for layer in self.layers:
            x = layer(x, mask)
        return self.norm(x)


class Decoder(nn.Module):
    """N decoder layers, then a final layer norm."""

    def __init__(self, layer: DecoderLayer, num_layers: int, norm: LayerNorm) -> None:
        super().__init__()
        self.layers = clones(layer, num_layers)
        self.norm = norm

    def forward(self, x: Tensor, encoder_output: Tensor, mask: Tensor | None,
                memory_mask: Tensor | None = None) -> Tensor:
        for layer in self.layers:
            x = layer(x, encoder_output, mask, memory_mask)
        return self.norm(x)


class CourseTransformer(nn.Module):
    """Encoder and decoder; (N, S, d_model) and (N, T, d_model) in, (N, T, d_model) out."""

    def __init__(self, encoder: Encoder, decoder: Decoder) -> None:
        super().__init__()
        self.encoder, self.decoder = encoder, decoder

    def forward(self, src: Tensor, tgt: Tensor, src_mask: Tensor | None = None, tgt_mask: Tensor | None = None,
                memory_mask: Tensor | None = None) -> Tensor:
        return self.decoder(tgt, self.encoder(src, src_mask), tgt_mask, memory_mask)


def make_model(num_encoder_layers: int = 6, num_decoder_layers: int = 6, d_model: int = 512, d_ff: int = 2048,
               num_heads: int = 8, dropout: float = 0.1, eps: float = 1e-5, norm_first: bool = False,
               activation: str | Callable[[Tensor], Tensor] = "relu", bias: bool = True) -> CourseTransformer:
    """Build the model: every attention its own object."""
    c = copy.deepcopy
    attn = MultiHeadAttention(d_model, num_heads, dropout, bias)
    ff = FeedForward(d_model, d_ff, dropout, activation, bias)
    residual = {"eps": eps, "norm_first": norm_first, "bias": bias}
    return CourseTransformer(
        Encoder(EncoderLayer(d_model, c(attn), c(ff), dropout, **residual), num_encoder_layers,
                LayerNorm(d_model, eps, bias)),
        # FIX: separate self- and cross-attention objects
        Decoder(DecoderLayer(d_model, c(attn), c(attn), c(ff), dropout, **residual), num_decoder_layers,
                LayerNorm(d_model, eps, bias)),
    )


# ---------------------------------------------------------------------------------------------------------
# The adapter: how the harness builds, loads and runs this model (the plug-in contract, README "Plug-ins").


def additive_mask(attn_mask: Tensor | None, key_padding_mask: Tensor | None, batch: int, nhead: int,
                  length: int, is_causal: bool | None, dtype: torch.dtype) -> Tensor | None:
    """nn.Transformer's masks for one attention as one additive mask, broadcastable to (N, nhead, L, S)."""
    if is_causal and key_padding_mask is None:  # the hint stands for a top-left causal mask (torch's rule)
        if attn_mask is None:
            raise ValueError("a *_is_causal hint needs its mask, as in nn.Transformer")
        attn_mask = torch.ones(length, attn_mask.size(-1), dtype=torch.bool, device=attn_mask.device).triu(1)
    mask = None
    if attn_mask is not None:
        mask = to_additive(attn_mask, dtype)
        mask = mask.view(batch, nhead, *mask.shape[-2:]) if mask.dim() == 3 else mask  # row n*nhead + h
    if key_padding_mask is not None:
        pad = to_additive(key_padding_mask, dtype).view(batch, 1, 1, -1)
        mask = pad if mask is None else mask + pad
    return mask


def to_additive(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """True -> -inf, False -> 0; a float mask is already additive."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    return mask.to(dtype)


class FixedAdapter:
    """Plugs the repaired model into the harness: every nn.Transformer option is supported."""

    def build(self, **config: object) -> nn.Module:
        model = make_model(config["num_encoder_layers"], config["num_decoder_layers"], config["d_model"],
                           config["dim_feedforward"], config["nhead"], config["dropout"], config["layer_norm_eps"],
                           config["norm_first"], config["activation"], config["bias"])
        model.batch_first_io, model.nhead = config["batch_first"], config["nhead"]
        return model

    @torch.no_grad()
    def load_reference(self, model: nn.Module, reference: nn.Module) -> None:
        state = reference.state_dict()

        def linear(mine: nn.Linear, weight: Tensor, bias: Tensor | None) -> None:
            mine.weight.copy_(weight)
            if mine.bias is not None:
                mine.bias.copy_(bias)

        def attention(mine: MultiHeadAttention, p: str) -> None:
            biases = state[p + "in_proj_bias"].chunk(3) if p + "in_proj_bias" in state else (None,) * 3
            for lin, w, b in zip((mine.w_q, mine.w_k, mine.w_v), state[p + "in_proj_weight"].chunk(3), biases,
                                 strict=True):
                linear(lin, w, b)
            linear(mine.w_o, state[p + "out_proj.weight"], state.get(p + "out_proj.bias"))

        def norm(mine: LayerNorm, p: str) -> None:
            mine.a_2.copy_(state[p + "weight"])
            if mine.b_2 is not None:
                mine.b_2.copy_(state[p + "bias"])

        for stack in ("encoder", "decoder"):
            for i, layer in enumerate(getattr(model, stack).layers):
                p = f"{stack}.layers.{i}."
                attention(layer.self_attention, p + "self_attn.")
                if stack == "decoder":
                    attention(layer.cross_attention, p + "multihead_attn.")  # FIX: its own weights
                for lin, name in ((layer.feed_forward.w_1, "linear1"), (layer.feed_forward.w_2, "linear2")):
                    linear(lin, state[f"{p}{name}.weight"], state.get(f"{p}{name}.bias"))
                for j, residual in enumerate(layer.sublayer):
                    norm(residual.norm, f"{p}norm{j + 1}.")
            norm(getattr(model, stack).norm, f"{stack}.norm.")

    def run(self, model: nn.Module, src: Tensor, tgt: Tensor, src_mask: Tensor | None = None,
            tgt_mask: Tensor | None = None, memory_mask: Tensor | None = None,
            src_key_padding_mask: Tensor | None = None, tgt_key_padding_mask: Tensor | None = None,
            memory_key_padding_mask: Tensor | None = None, src_is_causal: bool | None = None,
            tgt_is_causal: bool | None = None, memory_is_causal: bool = False) -> Tensor:
        unbatched = src.dim() == 2
        if unbatched:
            src, tgt = src.unsqueeze(0), tgt.unsqueeze(0)
            pads = [None if m is None else m.unsqueeze(0)
                    for m in (src_key_padding_mask, tgt_key_padding_mask, memory_key_padding_mask)]
            src_key_padding_mask, tgt_key_padding_mask, memory_key_padding_mask = pads
        elif not model.batch_first_io:
            src, tgt = src.transpose(0, 1), tgt.transpose(0, 1)
        n, h, s, t, dtype = src.size(0), model.nhead, src.size(1), tgt.size(1), src.dtype
        out = model(src, tgt,
                    additive_mask(src_mask, src_key_padding_mask, n, h, s, src_is_causal, dtype),
                    additive_mask(tgt_mask, tgt_key_padding_mask, n, h, t, tgt_is_causal, dtype),
                    additive_mask(memory_mask, memory_key_padding_mask, n, h, t, memory_is_causal, dtype))
        if unbatched:
            return out.squeeze(0)
        return out if model.batch_first_io else out.transpose(0, 1)

    def submodules(self, model: nn.Module) -> dict[str, nn.Module]:
        """nn.Transformer's submodule names -> the modules computing the same thing."""
        names: dict[str, nn.Module] = {"encoder.norm": model.encoder.norm, "decoder.norm": model.decoder.norm}
        for stack in ("encoder", "decoder"):
            for i, layer in enumerate(getattr(model, stack).layers):
                p = f"{stack}.layers.{i}"
                names[p] = layer
                names[f"{p}.self_attn"] = layer.self_attention
                if stack == "decoder":
                    names[f"{p}.multihead_attn"] = layer.cross_attention
                names[f"{p}.linear1"] = layer.feed_forward.w_1
                names[f"{p}.linear2"] = layer.feed_forward.w_2
                for j, residual in enumerate(layer.sublayer):
                    names[f"{p}.norm{j + 1}"] = residual.norm
        return names


adapter = FixedAdapter()
