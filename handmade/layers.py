"""Encoder and decoder layers (section 3.1): each sublayer's output is LayerNorm(x + Dropout(Sublayer(x))).

With ``norm_first`` (pre-norm) it is x + Dropout(Sublayer(LayerNorm(x))) instead. The sublayers are
multi-head attention (3.2) and the position-wise feed-forward network FFN(x) = act(x W1 + b1) W2 + b2 (3.3).
Submodule names are nn.TransformerEncoderLayer's and nn.TransformerDecoderLayer's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from handmade.attention import MultiheadAttention, check_heads
from handmade.masks import canonical_masks
from handmade.normalization import LayerNorm

Activation = str | Callable[[Tensor], Tensor]


def resolve_activation(activation: Activation) -> Callable[[Tensor], Tensor]:
    """Map "relu" / "gelu" (exact, erf-based) to functions; pass a callable through."""
    if activation == "relu":
        return F.relu
    if activation == "gelu":
        return F.gelu
    if callable(activation):
        return activation
    raise ValueError(f"activation must be 'relu', 'gelu' or a callable, got activation={activation!r}")


def check_sizes(d_model: int, nhead: int, dim_feedforward: int) -> None:
    """The layers' size arguments, named as the layers name them (MultiheadAttention says embed_dim, num_heads)."""
    check_heads(d_model, nhead, ("d_model", "nhead"))
    if dim_feedforward <= 0:
        raise ValueError(f"dim_feedforward must be greater than 0, got dim_feedforward={dim_feedforward}")


class TransformerEncoderLayer(nn.Module):
    """Self-attention, then the feed-forward network, each a residual sublayer; a drop-in for its built-in."""

    def __init__(
        self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1,
        activation: Activation = "relu", layer_norm_eps: float = 1e-5, batch_first: bool = False,
        norm_first: bool = False, bias: bool = True, device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_sizes(d_model, nhead, dim_feedforward)
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.self_attn = MultiheadAttention(d_model, nhead, dropout, bias=bias, batch_first=batch_first, **factory)
        self.linear1 = nn.Linear(d_model, dim_feedforward, bias=bias, **factory)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model, bias=bias, **factory)
        self.norm_first = norm_first
        norm: dict[str, Any] = {"eps": layer_norm_eps, "bias": bias, **factory}
        self.norm1, self.norm2 = (LayerNorm(d_model, **norm) for _ in range(2))
        self.dropout1, self.dropout2 = nn.Dropout(dropout), nn.Dropout(dropout)
        self.activation = resolve_activation(activation)

    def forward(
        self, src: Tensor, src_mask: Tensor | None = None, src_key_padding_mask: Tensor | None = None,
        is_causal: bool = False,
    ) -> Tensor:
        """src (S, N, E), (N, S, E) when batch_first, or (S, E) -> same shape."""
        src_mask, src_key_padding_mask = canonical_masks(
            src, src, self.self_attn.batch_first, self.self_attn.num_heads,
            ("src", "src", "src_mask", "src_key_padding_mask", "is_causal"), src_mask, src_key_padding_mask, is_causal,
        )
        x = src
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), src_mask, src_key_padding_mask, is_causal)
            x = x + self._ff_block(self.norm2(x))
        else:
            x = self.norm1(x + self._sa_block(x, src_mask, src_key_padding_mask, is_causal))
            x = self.norm2(x + self._ff_block(x))
        return x

    def _sa_block(
        self, x: Tensor, attn_mask: Tensor | None, key_padding_mask: Tensor | None, is_causal: bool = False
    ) -> Tensor:
        """Self-attention sublayer (3.2.3: queries, keys and values all come from the layer's input)."""
        x = self.self_attn(x, x, x, attn_mask=attn_mask, key_padding_mask=key_padding_mask, need_weights=False,
                           is_causal=is_causal)[0]
        return self.dropout1(x)

    def _ff_block(self, x: Tensor) -> Tensor:
        """Position-wise feed-forward sublayer (3.3): act(x W1 + b1) W2 + b2, the same at every position."""
        x = self.linear2(self.dropout(self.activation(self.linear1(x))))
        return self.dropout2(x)


class TransformerDecoderLayer(nn.Module):
    """Masked self-attention, attention over the encoder output, feed-forward; a drop-in for its built-in."""

    def __init__(
        self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1,
        activation: Activation = "relu", layer_norm_eps: float = 1e-5, batch_first: bool = False,
        norm_first: bool = False, bias: bool = True, device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_sizes(d_model, nhead, dim_feedforward)
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.self_attn = MultiheadAttention(d_model, nhead, dropout, bias=bias, batch_first=batch_first, **factory)
        self.multihead_attn = MultiheadAttention(d_model, nhead, dropout, bias=bias, batch_first=batch_first, **factory)
        self.linear1 = nn.Linear(d_model, dim_feedforward, bias=bias, **factory)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model, bias=bias, **factory)
        self.norm_first = norm_first
        norm: dict[str, Any] = {"eps": layer_norm_eps, "bias": bias, **factory}
        self.norm1, self.norm2, self.norm3 = (LayerNorm(d_model, **norm) for _ in range(3))
        self.dropout1, self.dropout2, self.dropout3 = nn.Dropout(dropout), nn.Dropout(dropout), nn.Dropout(dropout)
        self.activation = resolve_activation(activation)

    def forward(
        self, tgt: Tensor, memory: Tensor, tgt_mask: Tensor | None = None, memory_mask: Tensor | None = None,
        tgt_key_padding_mask: Tensor | None = None, memory_key_padding_mask: Tensor | None = None,
        tgt_is_causal: bool = False, memory_is_causal: bool = False,
    ) -> Tensor:
        """tgt (T, N, E) and memory (S, N, E) [or batch-first, or unbatched] -> (T, N, E)."""
        tgt_mask, tgt_key_padding_mask, memory_mask, memory_key_padding_mask = decoder_masks(
            self.self_attn.batch_first, self.self_attn.num_heads, tgt, memory,
            tgt_mask, memory_mask, tgt_key_padding_mask, memory_key_padding_mask, tgt_is_causal, memory_is_causal,
        )
        x = tgt
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), tgt_mask, tgt_key_padding_mask, tgt_is_causal)
            x = x + self._mha_block(self.norm2(x), memory, memory_mask, memory_key_padding_mask, memory_is_causal)
            x = x + self._ff_block(self.norm3(x))
        else:
            x = self.norm1(x + self._sa_block(x, tgt_mask, tgt_key_padding_mask, tgt_is_causal))
            x = self.norm2(x + self._mha_block(x, memory, memory_mask, memory_key_padding_mask, memory_is_causal))
            x = self.norm3(x + self._ff_block(x))
        return x

    def _sa_block(
        self, x: Tensor, attn_mask: Tensor | None, key_padding_mask: Tensor | None, is_causal: bool = False
    ) -> Tensor:
        """Masked self-attention sublayer (3.2.3: a position attends to the positions up to it)."""
        x = self.self_attn(x, x, x, attn_mask=attn_mask, key_padding_mask=key_padding_mask, need_weights=False,
                           is_causal=is_causal)[0]
        return self.dropout1(x)

    def _mha_block(
        self, x: Tensor, mem: Tensor, attn_mask: Tensor | None, key_padding_mask: Tensor | None, is_causal: bool = False
    ) -> Tensor:
        """Encoder-decoder attention sublayer (3.2.3): queries from the decoder, keys and values from the encoder."""
        x = self.multihead_attn(x, mem, mem, attn_mask=attn_mask, key_padding_mask=key_padding_mask,
                                need_weights=False, is_causal=is_causal)[0]
        return self.dropout2(x)

    def _ff_block(self, x: Tensor) -> Tensor:
        """Position-wise feed-forward sublayer (3.3): act(x W1 + b1) W2 + b2, the same at every position."""
        x = self.linear2(self.dropout(self.activation(self.linear1(x))))
        return self.dropout3(x)


def decoder_masks(
    batch_first: bool, num_heads: int, tgt: Tensor, src: Tensor, tgt_mask: Tensor | None, memory_mask: Tensor | None,
    tgt_key_padding_mask: Tensor | None, memory_key_padding_mask: Tensor | None, tgt_is_causal: bool | None,
    memory_is_causal: bool,
) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
    """The decoder's four masks, checked and additive; ``src`` is the memory or what it is computed from."""
    tgt_mask, tgt_key_padding_mask = canonical_masks(
        tgt, tgt, batch_first, num_heads, ("tgt", "tgt", "tgt_mask", "tgt_key_padding_mask", "tgt_is_causal"),
        tgt_mask, tgt_key_padding_mask, tgt_is_causal,
    )
    memory_mask, memory_key_padding_mask = canonical_masks(
        tgt, src, batch_first, num_heads, ("tgt", "memory", "memory_mask", "memory_key_padding_mask",
        "memory_is_causal"), memory_mask, memory_key_padding_mask, memory_is_causal,
    )
    return tgt_mask, tgt_key_padding_mask, memory_mask, memory_key_padding_mask
