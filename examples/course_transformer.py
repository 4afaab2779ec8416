"""A Transformer written the way an introductory course writes it, and its adapter for the harness.

This is the code a learner brings to be checked, kept as the course has it:

- ``LayerNorm`` by hand: unbiased standard deviation, ``eps`` added to the std;
- ``ResidualConnection`` is pre-norm: ``x + dropout(sublayer(norm(x)))``;
- keep-masks (1 = may attend) applied with ``masked_fill(mask == 0, -1e9)``;
- ``make_model`` builds each decoder layer with ONE attention object used for self- and cross-attention,
  and the cross-attention takes no mask;
- ``copy.deepcopy`` stacks, each with a final ``LayerNorm``.

The model is batch-first and takes d_model features (no embeddings), like ``nn.Transformer``.
``adapter`` (at the bottom) plugs it in: ``parity diagnose examples.course_transformer:adapter``.
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
    """Layer normalization, as the course writes it."""

    def __init__(self, features: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.a_2 = nn.Parameter(torch.ones(features))
        self.b_2 = nn.Parameter(torch.zeros(features))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(-1, keepdim=True)
        std = x.std(-1, keepdim=True)
        return self.a_2 * (x - mean) / (std + self.eps) + self.b_2


def attention(query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None = None,
              dropout: nn.Dropout | None = None) -> tuple[Tensor, Tensor]:
    """Scaled dot-product attention; ``mask`` is 1 where a query may attend."""
    d_k = query.size(-1)
    scores = torch.matmul(query, key.transpose(-2, -1)) / math.sqrt(d_k)
    if mask is not None:
        scores = scores.masked_fill(mask == 0, -1e9)
    p_attn = scores.softmax(dim=-1)
    if dropout is not None:
        p_attn = dropout(p_attn)
    return torch.matmul(p_attn, value), p_attn


class MultiHeadAttention(nn.Module):
    """Multi-head attention with four linear maps: queries, keys, values, output."""

    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.1) -> None:
        super().__init__()
        assert d_model % num_heads == 0
        self.d_k = d_model // num_heads
        self.h = num_heads
        self.w_q = nn.Linear(d_model, d_model)
        self.w_k = nn.Linear(d_model, d_model)
        self.w_v = nn.Linear(d_model, d_model)
        self.w_o = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(p=dropout)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None = None) -> Tensor:
        if mask is not None:
            mask = mask.unsqueeze(1)  # the same mask for every head
        nbatches = query.size(0)
        # 1) project, then split d_model into h heads of d_k
        query, key, value = (
            lin(x).view(nbatches, -1, self.h, self.d_k).transpose(1, 2)
            for lin, x in zip((self.w_q, self.w_k, self.w_v), (query, key, value), strict=True)
        )
        # 2) attend in every head at once
        x, _ = attention(query, key, value, mask=mask, dropout=self.dropout)
        # 3) concatenate the heads and apply the output map
        x = x.transpose(1, 2).contiguous().view(nbatches, -1, self.h * self.d_k)
        return self.w_o(x)


class FeedForward(nn.Module):
    """FFN(x) = max(0, x W1 + b1) W2 + b2."""

    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.w_1 = nn.Linear(d_model, d_ff)
        self.w_2 = nn.Linear(d_ff, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.w_2(self.dropout(F.relu(self.w_1(x))))


class ResidualConnection(nn.Module):
    """A residual connection around a sublayer, with layer norm and dropout."""

    def __init__(self, size: int, dropout: float, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm = LayerNorm(size, eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, sublayer: Callable[[Tensor], Tensor]) -> Tensor:
        return x + self.dropout(sublayer(self.norm(x)))


class EncoderLayer(nn.Module):
    """Self-attention, then feed-forward."""

    def __init__(self, d_model: int, self_attention: MultiHeadAttention, feed_forward: FeedForward,
                 dropout: float, eps: float = 1e-6) -> None:
        super().__init__()
        self.self_attention, self.feed_forward = self_attention, feed_forward
        self.sublayer = clones(ResidualConnection(d_model, dropout, eps), 2)
        self.size = d_model

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        x = self.sublayer[0](x, lambda x: self.self_attention(x, x, x, mask))
        return self.sublayer[1](x, self.feed_forward)


class DecoderLayer(nn.Module):
    """Masked self-attention, cross-attention over the encoder output, feed-forward."""

    def __init__(self, d_model: int, self_attention: MultiHeadAttention, cross_attention: MultiHeadAttention,
                 feed_forward: FeedForward, dropout: float, eps: float = 1e-6) -> None:
        super().__init__()
        self.self_attention, self.cross_attention = self_attention, cross_attention
        self.feed_forward = feed_forward
        self.sublayer = clones(ResidualConnection(d_model, dropout, eps), 3)
        self.size = d_model

    def forward(self, x: Tensor, encoder_output: Tensor, mask: Tensor | None) -> Tensor:
        x1 = self.sublayer[0](x, lambda x: self.self_attention(x, x, x, mask))
        x2 = self.sublayer[1](x1, lambda x: self.cross_attention(x, encoder_output, encoder_output))
        return self.sublayer[2](x2, self.feed_forward)


class Encoder(nn.Module):
    """N encoder layers, then a final layer norm."""

    def __init__(self, layer: EncoderLayer, num_layers: int) -> None:
        super().__init__()
        self.layers = clones(layer, num_layers)
        self.norm = LayerNorm(layer.size, layer.sublayer[0].norm.eps)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        for layer in self.layers:
            x = layer(x, mask)
        return self.norm(x)


class Decoder(nn.Module):
    """N decoder layers, then a final layer norm."""

    def __init__(self, layer: DecoderLayer, num_layers: int) -> None:
        super().__init__()
        self.layers = clones(layer, num_layers)
        self.norm = LayerNorm(layer.size, layer.sublayer[0].norm.eps)

    def forward(self, x: Tensor, encoder_output: Tensor, mask: Tensor | None) -> Tensor:
        for layer in self.layers:
            x = layer(x, encoder_output, mask)
        return self.norm(x)


class CourseTransformer(nn.Module):
    """Encoder and decoder; (N, S, d_model) and (N, T, d_model) in, (N, T, d_model) out."""

    def __init__(self, encoder: Encoder, decoder: Decoder) -> None:
        super().__init__()
        self.encoder, self.decoder = encoder, decoder

    def forward(self, src: Tensor, tgt: Tensor, src_mask: Tensor | None = None,
                tgt_mask: Tensor | None = None) -> Tensor:
        return self.decoder(tgt, self.encoder(src, src_mask), tgt_mask)


def make_model(num_encoder_layers: int = 6, num_decoder_layers: int = 6, d_model: int = 512, d_ff: int = 2048,
               num_heads: int = 8, dropout: float = 0.1, eps: float = 1e-6) -> CourseTransformer:
    """Build the model as the course does: one attention object serves both attentions of a decoder layer."""
    c = copy.deepcopy
    attn = MultiHeadAttention(d_model, num_heads, dropout)
    ff = FeedForward(d_model, d_ff, dropout)
    mha = c(attn)
    return CourseTransformer(
        Encoder(EncoderLayer(d_model, c(attn), c(ff), dropout, eps), num_encoder_layers),
        Decoder(DecoderLayer(d_model, mha, mha, c(ff), dropout, eps), num_decoder_layers),
    )


# ---------------------------------------------------------------------------------------------------------
# The adapter: how the harness builds, loads and runs this model (the plug-in contract, README "Plug-ins").


def keep_mask(attn_mask: Tensor | None, key_padding_mask: Tensor | None) -> Tensor | None:
    """nn.Transformer's masks (True or -inf = blocked) as one course keep-mask (1 = may attend), (N, L, S)."""
    keep = None
    if attn_mask is not None:
        if attn_mask.dim() == 3:
            raise NotImplementedError("the course's attention takes one mask for every head, not (N*nhead, L, S)")
        keep = ~attn_mask if attn_mask.dtype == torch.bool else attn_mask == 0
        keep = keep.unsqueeze(0)  # (1, L, S)
    if key_padding_mask is not None:
        pad_keep = ~key_padding_mask if key_padding_mask.dtype == torch.bool else key_padding_mask == 0
        pad_keep = pad_keep.unsqueeze(1)  # (N, 1, S)
        keep = pad_keep if keep is None else keep & pad_keep
    return keep


class CourseAdapter:
    """Plugs CourseTransformer into the harness.

    - ``build``: the course has one layer layout (pre-norm) and ReLU only; it is built whatever ``norm_first``
      says, so that ``parity diagnose`` can tell which layout it matches. GELU and ``bias=False`` are declined.
    - ``load_reference``: nn.Transformer's weights, renamed. Each decoder layer has one attention object for
      self- and cross-attention: it takes the SELF-attention weights (``multihead_attn.*`` is not loaded).
    - ``run``: layout (the course is batch-first), masks turned into keep-masks. The course's cross-attention
      has no mask, so ``memory_mask`` and ``memory_key_padding_mask`` have nowhere to go; causal hints are
      ignored (the masks themselves are passed).
    """

    def supports(self, **config: object) -> bool:
        return config["activation"] == "relu" and bool(config["bias"])

    def build(self, **config: object) -> nn.Module:
        model = make_model(config["num_encoder_layers"], config["num_decoder_layers"], config["d_model"],
                           config["dim_feedforward"], config["nhead"], config["dropout"], config["layer_norm_eps"])
        model.batch_first_io = config["batch_first"]  # the layout the harness will use (the course's is batch-first)
        return model

    @torch.no_grad()
    def load_reference(self, model: nn.Module, reference: nn.Module) -> None:
        state = reference.state_dict()

        def attention(mine: MultiHeadAttention, prefix: str) -> None:
            for lin, w, b in zip((mine.w_q, mine.w_k, mine.w_v), state[prefix + "in_proj_weight"].chunk(3),
                                 state[prefix + "in_proj_bias"].chunk(3), strict=True):
                lin.weight.copy_(w)
                lin.bias.copy_(b)
            mine.w_o.weight.copy_(state[prefix + "out_proj.weight"])
            mine.w_o.bias.copy_(state[prefix + "out_proj.bias"])

        def norm(mine: LayerNorm, prefix: str) -> None:
            mine.a_2.copy_(state[prefix + "weight"])
            mine.b_2.copy_(state[prefix + "bias"])

        def feed_forward(mine: FeedForward, prefix: str) -> None:
            for lin, name in ((mine.w_1, "linear1"), (mine.w_2, "linear2")):
                lin.weight.copy_(state[f"{prefix}{name}.weight"])
                lin.bias.copy_(state[f"{prefix}{name}.bias"])

        for stack in ("encoder", "decoder"):
            for i, layer in enumerate(getattr(model, stack).layers):
                p = f"{stack}.layers.{i}."
                attention(layer.self_attention, p + "self_attn.")  # in the decoder, also the cross-attention
                feed_forward(layer.feed_forward, p)
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
            src_key_padding_mask = None if src_key_padding_mask is None else src_key_padding_mask.unsqueeze(0)
            tgt_key_padding_mask = None if tgt_key_padding_mask is None else tgt_key_padding_mask.unsqueeze(0)
        elif not model.batch_first_io:
            src, tgt = src.transpose(0, 1), tgt.transpose(0, 1)
        out = model(src, tgt, keep_mask(src_mask, src_key_padding_mask), keep_mask(tgt_mask, tgt_key_padding_mask))
        if unbatched:
            return out.squeeze(0)
        return out if model.batch_first_io else out.transpose(0, 1)

    def submodules(self, model: nn.Module) -> dict[str, nn.Module]:
        """nn.Transformer's submodule names -> the course modules computing the same thing."""
        names: dict[str, nn.Module] = {"encoder.norm": model.encoder.norm, "decoder.norm": model.decoder.norm}
        for stack in ("encoder", "decoder"):
            for i, layer in enumerate(getattr(model, stack).layers):
                p = f"{stack}.layers.{i}"
                names[p] = layer
                names[f"{p}.self_attn"] = layer.self_attention
                if stack == "decoder":
                    names[f"{p}.multihead_attn"] = layer.cross_attention  # the same object: its 2nd call
                names[f"{p}.linear1"] = layer.feed_forward.w_1
                names[f"{p}.linear2"] = layer.feed_forward.w_2
                for j, residual in enumerate(layer.sublayer):
                    names[f"{p}.norm{j + 1}"] = residual.norm
        return names


adapter = CourseAdapter()
