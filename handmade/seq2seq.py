"""The whole sequence-to-sequence model of Figure 1: embeddings -> positional encoding -> Transformer -> output."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from handmade.embeddings import Embeddings, Generator, PositionalEncoding
from handmade.layers import Activation
from handmade.transformer import Transformer


class Seq2SeqTransformer(nn.Module):
    """Token ids in, log-probabilities over the target vocabulary out."""

    def __init__(
        self, src_vocab_size: int, tgt_vocab_size: int, d_model: int = 512, nhead: int = 8,
        num_encoder_layers: int = 6, num_decoder_layers: int = 6, dim_feedforward: int = 2048, dropout: float = 0.1,
        activation: Activation = "relu", layer_norm_eps: float = 1e-5, batch_first: bool = False,
        norm_first: bool = False, bias: bool = True, max_len: int = 5000, device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.src_embed = Embeddings(src_vocab_size, d_model, **factory)
        self.tgt_embed = Embeddings(tgt_vocab_size, d_model, **factory)
        self.positional_encoding = PositionalEncoding(d_model, dropout, max_len, batch_first, **factory)
        self.transformer = Transformer(
            d_model, nhead, num_encoder_layers, num_decoder_layers, dim_feedforward, dropout, activation,
            layer_norm_eps=layer_norm_eps, batch_first=batch_first, norm_first=norm_first, bias=bias, **factory,
        )
        self.generator = Generator(d_model, tgt_vocab_size, **factory)

    def forward(
        self, src: Tensor, tgt: Tensor, src_mask: Tensor | None = None, tgt_mask: Tensor | None = None,
        memory_mask: Tensor | None = None, src_key_padding_mask: Tensor | None = None,
        tgt_key_padding_mask: Tensor | None = None, memory_key_padding_mask: Tensor | None = None,
    ) -> Tensor:
        """Token ids src (S, N) and tgt (T, N) [(N, S), (N, T) when batch_first] -> (T, N, tgt_vocab_size)."""
        memory_in = self.positional_encoding(self.src_embed(src))
        tgt_in = self.positional_encoding(self.tgt_embed(tgt))
        out = self.transformer(
            memory_in, tgt_in, src_mask=src_mask, tgt_mask=tgt_mask, memory_mask=memory_mask,
            src_key_padding_mask=src_key_padding_mask, tgt_key_padding_mask=tgt_key_padding_mask,
            memory_key_padding_mask=memory_key_padding_mask,
        )
        return self.generator(out)
