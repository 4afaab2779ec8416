"""The encoder and decoder stacks and the Transformer (paper section 3.1, Figure 1)."""

from __future__ import annotations

import copy
from typing import Any, cast

import torch
from torch import Tensor, nn

from handmade.attention import MultiheadAttention
from handmade.layers import Activation, TransformerDecoderLayer, TransformerEncoderLayer, decoder_masks
from handmade.masks import canonical_masks, generate_square_subsequent_mask, sizes
from handmade.normalization import LayerNorm


def detect_is_causal(mask: Tensor | None, is_causal: bool | None, size: int) -> bool:
    """Resolve a causal hint as torch's stacks do: an explicit hint wins; ``None`` means "is mask causal?"."""
    if is_causal is not None or mask is None:
        return bool(is_causal)
    if tuple(mask.shape) != (size, size):
        return False
    causal = generate_square_subsequent_mask(size, device=mask.device)
    reference = causal.isinf() if mask.dtype == torch.bool else causal.to(mask.dtype)
    return bool((mask == reference).all())


def _clones(layer: nn.Module, num_layers: int) -> nn.ModuleList:
    if num_layers < 1:
        raise ValueError(f"num_layers must be at least 1, got num_layers={num_layers}")
    return nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))


class TransformerEncoder(nn.Module):
    """N identical encoder layers, then an optional final norm; a drop-in for nn.TransformerEncoder.

    ``enable_nested_tensor`` and ``mask_check`` are accepted for compatibility: they select torch's
    nested-tensor fast path, which this one-path implementation does not have.
    """

    def __init__(
        self, encoder_layer: TransformerEncoderLayer, num_layers: int, norm: nn.Module | None = None,
        enable_nested_tensor: bool = True, mask_check: bool = True,
    ) -> None:
        super().__init__()
        self.layers = _clones(encoder_layer, num_layers)
        self.num_layers, self.norm = num_layers, norm
        self.enable_nested_tensor, self.mask_check = enable_nested_tensor, mask_check

    def forward(
        self, src: Tensor, mask: Tensor | None = None, src_key_padding_mask: Tensor | None = None,
        is_causal: bool | None = None,
    ) -> Tensor:
        """src (S, N, E) [or (N, S, E) when batch_first, or (S, E)] -> same shape."""
        attn = cast(MultiheadAttention, self.layers[0].self_attn)
        is_causal = detect_is_causal(mask, is_causal, sizes(src, "src", attn.batch_first)[0])
        mask, src_key_padding_mask = canonical_masks(
            src, src, attn.batch_first, attn.num_heads, ("src", "src", "mask", "src_key_padding_mask", "is_causal"),
            mask, src_key_padding_mask, is_causal,
        )
        x = src
        for layer in self.layers:
            x = layer(x, src_mask=mask, src_key_padding_mask=src_key_padding_mask, is_causal=is_causal)
        return x if self.norm is None else self.norm(x)


class TransformerDecoder(nn.Module):
    """N identical decoder layers, then an optional final norm; a drop-in for nn.TransformerDecoder."""

    def __init__(self, decoder_layer: TransformerDecoderLayer, num_layers: int, norm: nn.Module | None = None) -> None:
        super().__init__()
        self.layers = _clones(decoder_layer, num_layers)
        self.num_layers, self.norm = num_layers, norm

    def forward(
        self, tgt: Tensor, memory: Tensor, tgt_mask: Tensor | None = None, memory_mask: Tensor | None = None,
        tgt_key_padding_mask: Tensor | None = None, memory_key_padding_mask: Tensor | None = None,
        tgt_is_causal: bool | None = None, memory_is_causal: bool = False,
    ) -> Tensor:
        """tgt (T, N, E), memory (S, N, E) [or batch-first, or unbatched] -> (T, N, E)."""
        attn = cast(MultiheadAttention, self.layers[0].self_attn)
        tgt_is_causal = detect_is_causal(tgt_mask, tgt_is_causal, sizes(tgt, "tgt", attn.batch_first)[0])
        tgt_mask, tgt_key_padding_mask, memory_mask, memory_key_padding_mask = decoder_masks(
            attn.batch_first, attn.num_heads, tgt, memory,
            tgt_mask, memory_mask, tgt_key_padding_mask, memory_key_padding_mask, tgt_is_causal, memory_is_causal,
        )
        x = tgt
        for layer in self.layers:  # every layer attends to the same encoder output
            x = layer(
                x, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
                tgt_key_padding_mask=tgt_key_padding_mask, memory_key_padding_mask=memory_key_padding_mask,
                tgt_is_causal=tgt_is_causal, memory_is_causal=memory_is_causal,
            )
        return x if self.norm is None else self.norm(x)


class Transformer(nn.Module):
    """Encoder-decoder Transformer on d_model features (Figure 1 without embeddings); a drop-in for nn.Transformer."""

    def __init__(
        self, d_model: int = 512, nhead: int = 8, num_encoder_layers: int = 6, num_decoder_layers: int = 6,
        dim_feedforward: int = 2048, dropout: float = 0.1, activation: Activation = "relu",
        custom_encoder: nn.Module | None = None, custom_decoder: nn.Module | None = None,
        layer_norm_eps: float = 1e-5, batch_first: bool = False, norm_first: bool = False, bias: bool = True,
        device: torch.device | str | None = None, dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        options: dict[str, Any] = {
            "dim_feedforward": dim_feedforward, "dropout": dropout, "activation": activation,
            "layer_norm_eps": layer_norm_eps, "batch_first": batch_first, "norm_first": norm_first, "bias": bias,
        }
        if custom_encoder is not None:
            self.encoder = custom_encoder
        else:
            encoder_layer = TransformerEncoderLayer(d_model, nhead, **options, **factory)
            norm = LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **factory)  # present even when post-norm
            self.encoder = TransformerEncoder(encoder_layer, num_encoder_layers, norm)
        if custom_decoder is not None:
            self.decoder = custom_decoder
        else:
            decoder_layer = TransformerDecoderLayer(d_model, nhead, **options, **factory)
            norm = LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **factory)
            self.decoder = TransformerDecoder(decoder_layer, num_decoder_layers, norm)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        self.d_model, self.nhead, self.batch_first = d_model, nhead, batch_first

    def forward(
        self, src: Tensor, tgt: Tensor, src_mask: Tensor | None = None, tgt_mask: Tensor | None = None,
        memory_mask: Tensor | None = None, src_key_padding_mask: Tensor | None = None,
        tgt_key_padding_mask: Tensor | None = None, memory_key_padding_mask: Tensor | None = None,
        src_is_causal: bool | None = None, tgt_is_causal: bool | None = None, memory_is_causal: bool = False,
    ) -> Tensor:
        """src (S, N, E) and tgt (T, N, E) [(N, S, E) and (N, T, E) when batch_first; or unbatched] -> like tgt."""
        self._check_inputs(src, tgt)
        src_is_causal = detect_is_causal(src_mask, src_is_causal, sizes(src, "src", self.batch_first)[0])
        tgt_is_causal = detect_is_causal(tgt_mask, tgt_is_causal, sizes(tgt, "tgt", self.batch_first)[0])
        src_mask, src_key_padding_mask = canonical_masks(
            src, src, self.batch_first, self.nhead, ("src", "src", "src_mask", "src_key_padding_mask", "src_is_causal"),
            src_mask, src_key_padding_mask, src_is_causal,
        )
        tgt_mask, tgt_key_padding_mask, memory_mask, memory_key_padding_mask = decoder_masks(
            self.batch_first, self.nhead, tgt, src,
            tgt_mask, memory_mask, tgt_key_padding_mask, memory_key_padding_mask, tgt_is_causal, memory_is_causal,
        )
        memory = self.encoder(src, mask=src_mask, src_key_padding_mask=src_key_padding_mask, is_causal=src_is_causal)
        return self.decoder(
            tgt, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
            tgt_key_padding_mask=tgt_key_padding_mask, memory_key_padding_mask=memory_key_padding_mask,
            tgt_is_causal=tgt_is_causal, memory_is_causal=memory_is_causal,
        )

    def _check_inputs(self, src: Tensor, tgt: Tensor) -> None:
        """src and tgt: the same rank (2 or 3), batch size and d_model features."""
        shapes = f"got src {tuple(src.shape)} and tgt {tuple(tgt.shape)}"
        if src.dim() != tgt.dim() or src.dim() not in (2, 3):
            raise ValueError(f"src and tgt must both be 3-D (batched) or both 2-D (unbatched), {shapes}")
        batch_dim = 0 if self.batch_first else 1
        if src.dim() == 3 and src.size(batch_dim) != tgt.size(batch_dim):
            raise ValueError(f"src and tgt must have the same batch size (dim {batch_dim}), {shapes}")
        if src.size(-1) != self.d_model or tgt.size(-1) != self.d_model:
            raise ValueError(f"src and tgt must have d_model={self.d_model} features, {shapes}")

    @staticmethod
    def generate_square_subsequent_mask(
        sz: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> Tensor:
        """Float causal mask (sz, sz): 0 on and below the diagonal, -inf above."""
        return generate_square_subsequent_mask(sz, device=device, dtype=dtype)
