"""The encoder and decoder stacks and the Transformer (paper section 3.1, Figure 1)."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from handmade.feed_forward import Activation
from handmade.layers import TransformerDecoderLayer, TransformerEncoderLayer
from handmade.masks import generate_square_subsequent_mask
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


def _seq_len(x: Tensor, batch_first: bool) -> int:
    return x.size(1) if batch_first and x.dim() == 3 else x.size(0)


class TransformerEncoder(nn.Module):
    """N identical encoder layers, then an optional final norm; a drop-in for nn.TransformerEncoder.

    ``enable_nested_tensor`` and ``mask_check`` are accepted for compatibility: they select torch's
    nested-tensor fast path, which this one-path implementation does not have.
    """

    def __init__(
        self,
        encoder_layer: TransformerEncoderLayer,
        num_layers: int,
        norm: nn.Module | None = None,
        enable_nested_tensor: bool = True,
        mask_check: bool = True,
    ) -> None:
        super().__init__()
        self.layers = _clones(encoder_layer, num_layers)
        self.num_layers, self.norm = num_layers, norm
        self.enable_nested_tensor, self.mask_check = enable_nested_tensor, mask_check

    def forward(
        self,
        src: Tensor,
        mask: Tensor | None = None,
        src_key_padding_mask: Tensor | None = None,
        is_causal: bool | None = None,
    ) -> Tensor:
        """src (S, N, E) [or (N, S, E) when batch_first, or (S, E)] -> same shape."""
        is_causal = detect_is_causal(mask, is_causal, _seq_len(src, self.layers[0].self_attn.batch_first))
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
        self,
        tgt: Tensor,
        memory: Tensor,
        tgt_mask: Tensor | None = None,
        memory_mask: Tensor | None = None,
        tgt_key_padding_mask: Tensor | None = None,
        memory_key_padding_mask: Tensor | None = None,
        tgt_is_causal: bool | None = None,
        memory_is_causal: bool = False,
    ) -> Tensor:
        """tgt (T, N, E), memory (S, N, E) [or batch-first, or unbatched] -> (T, N, E)."""
        tgt_is_causal = detect_is_causal(tgt_mask, tgt_is_causal, _seq_len(tgt, self.layers[0].self_attn.batch_first))
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
        self,
        d_model: int = 512,
        nhead: int = 8,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: Activation = "relu",
        custom_encoder: nn.Module | None = None,
        custom_decoder: nn.Module | None = None,
        layer_norm_eps: float = 1e-5,
        batch_first: bool = False,
        norm_first: bool = False,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        options = {
            "dim_feedforward": dim_feedforward, "dropout": dropout, "activation": activation,
            "layer_norm_eps": layer_norm_eps, "batch_first": batch_first, "norm_first": norm_first, "bias": bias,
        }
        if custom_encoder is not None:
            self.encoder = custom_encoder
        else:
            layer = TransformerEncoderLayer(d_model, nhead, **options, **factory)
            norm = LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **factory)  # present even when post-norm
            self.encoder = TransformerEncoder(layer, num_encoder_layers, norm)
        if custom_decoder is not None:
            self.decoder = custom_decoder
        else:
            layer = TransformerDecoderLayer(d_model, nhead, **options, **factory)
            norm = LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **factory)
            self.decoder = TransformerDecoder(layer, num_decoder_layers, norm)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        self.d_model, self.nhead, self.batch_first = d_model, nhead, batch_first

    def forward(
        self,
        src: Tensor,
        tgt: Tensor,
        src_mask: Tensor | None = None,
        tgt_mask: Tensor | None = None,
        memory_mask: Tensor | None = None,
        src_key_padding_mask: Tensor | None = None,
        tgt_key_padding_mask: Tensor | None = None,
        memory_key_padding_mask: Tensor | None = None,
        src_is_causal: bool | None = None,
        tgt_is_causal: bool | None = None,
        memory_is_causal: bool = False,
    ) -> Tensor:
        """src (S, N, E) and tgt (T, N, E) [(N, S, E) and (N, T, E) when batch_first; or unbatched] -> like tgt."""
        if src.dim() != tgt.dim() or src.dim() not in (2, 3):
            raise ValueError(
                f"src and tgt must both be 3-D (batched) or both 2-D (unbatched), got src {tuple(src.shape)} "
                f"and tgt {tuple(tgt.shape)}"
            )
        batch_dim = 0 if self.batch_first else 1
        if src.dim() == 3 and src.size(batch_dim) != tgt.size(batch_dim):
            raise ValueError(
                f"src and tgt must have the same batch size (dim {batch_dim}), got src {tuple(src.shape)} "
                f"and tgt {tuple(tgt.shape)}"
            )
        if src.size(-1) != self.d_model or tgt.size(-1) != self.d_model:
            raise ValueError(
                f"src and tgt must have d_model={self.d_model} features, got src {tuple(src.shape)} "
                f"and tgt {tuple(tgt.shape)}"
            )
        memory = self.encoder(src, mask=src_mask, src_key_padding_mask=src_key_padding_mask, is_causal=src_is_causal)
        return self.decoder(
            tgt, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
            tgt_key_padding_mask=tgt_key_padding_mask, memory_key_padding_mask=memory_key_padding_mask,
            tgt_is_causal=tgt_is_causal, memory_is_causal=memory_is_causal,
        )

    @staticmethod
    def generate_square_subsequent_mask(
        sz: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> Tensor:
        """Float causal mask (sz, sz): 0 on and below the diagonal, -inf above."""
        return generate_square_subsequent_mask(sz, device=device, dtype=dtype)
