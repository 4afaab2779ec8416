"""Encoder and decoder layers (paper section 3.1): sublayers wrapped in residual connections and layer norm."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from handmade.attention import MultiheadAttention
from handmade.feed_forward import Activation, FeedForward
from handmade.normalization import LayerNorm


class ResidualConnection(nn.Module):
    """LayerNorm(x + Dropout(Sublayer(x))) (post-norm, the paper's), or x + Dropout(Sublayer(LayerNorm(x)))."""

    def __init__(
        self,
        d_model: int,
        dropout: float,
        norm_first: bool,
        layer_norm_eps: float,
        bias: bool,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.norm = LayerNorm(d_model, eps=layer_norm_eps, bias=bias, device=device, dtype=dtype)
        self.dropout = nn.Dropout(dropout)
        self.norm_first = norm_first

    def forward(self, x: Tensor, sublayer: Callable[[Tensor], Tensor]) -> Tensor:
        """Apply ``sublayer`` to ``x`` with the residual path around it."""
        if self.norm_first:
            return x + self.dropout(sublayer(self.norm(x)))
        return self.norm(x + self.dropout(sublayer(x)))


class TransformerEncoderLayer(nn.Module):
    """Self-attention then feed-forward, each in a residual connection; a drop-in for nn.TransformerEncoderLayer."""

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: Activation = "relu",
        layer_norm_eps: float = 1e-5,
        batch_first: bool = False,
        norm_first: bool = False,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        residual = {"dropout": dropout, "norm_first": norm_first, "layer_norm_eps": layer_norm_eps, "bias": bias}
        self.self_attn = MultiheadAttention(d_model, nhead, dropout, bias=bias, batch_first=batch_first, **factory)
        self.feed_forward = FeedForward(d_model, dim_feedforward, dropout, activation, bias, **factory)
        self.residual1 = ResidualConnection(d_model, **residual, **factory)
        self.residual2 = ResidualConnection(d_model, **residual, **factory)

    def forward(
        self,
        src: Tensor,
        src_mask: Tensor | None = None,
        src_key_padding_mask: Tensor | None = None,
        is_causal: bool = False,
    ) -> Tensor:
        """src (S, N, E), (N, S, E) when batch_first, or (S, E) -> same shape."""

        def self_attention(x: Tensor) -> Tensor:
            return self.self_attn(
                x, x, x, key_padding_mask=src_key_padding_mask, attn_mask=src_mask,
                need_weights=False, is_causal=is_causal,
            )[0]

        x = self.residual1(src, self_attention)
        return self.residual2(x, self.feed_forward)


class TransformerDecoderLayer(nn.Module):
    """Masked self-attention, cross-attention over the encoder output, feed-forward; a drop-in for its built-in."""

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: Activation = "relu",
        layer_norm_eps: float = 1e-5,
        batch_first: bool = False,
        norm_first: bool = False,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        residual = {"dropout": dropout, "norm_first": norm_first, "layer_norm_eps": layer_norm_eps, "bias": bias}
        self.self_attn = MultiheadAttention(d_model, nhead, dropout, bias=bias, batch_first=batch_first, **factory)
        self.cross_attn = MultiheadAttention(d_model, nhead, dropout, bias=bias, batch_first=batch_first, **factory)
        self.feed_forward = FeedForward(d_model, dim_feedforward, dropout, activation, bias, **factory)
        self.residual1 = ResidualConnection(d_model, **residual, **factory)
        self.residual2 = ResidualConnection(d_model, **residual, **factory)
        self.residual3 = ResidualConnection(d_model, **residual, **factory)

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        tgt_mask: Tensor | None = None,
        memory_mask: Tensor | None = None,
        tgt_key_padding_mask: Tensor | None = None,
        memory_key_padding_mask: Tensor | None = None,
        tgt_is_causal: bool = False,
        memory_is_causal: bool = False,
    ) -> Tensor:
        """tgt (T, N, E) and memory (S, N, E) [or batch-first, or unbatched] -> (T, N, E)."""

        def self_attention(x: Tensor) -> Tensor:
            return self.self_attn(
                x, x, x, key_padding_mask=tgt_key_padding_mask, attn_mask=tgt_mask,
                need_weights=False, is_causal=tgt_is_causal,
            )[0]

        def cross_attention(x: Tensor) -> Tensor:  # queries from the decoder, keys and values from the encoder
            return self.cross_attn(
                x, memory, memory, key_padding_mask=memory_key_padding_mask, attn_mask=memory_mask,
                need_weights=False, is_causal=memory_is_causal,
            )[0]

        x = self.residual1(tgt, self_attention)
        x = self.residual2(x, cross_attention)
        return self.residual3(x, self.feed_forward)
