"""Bugs in how layers, residuals, norms and the two stacks are wired together."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

import handmade
from equivalence_tests.zoo._base import BugAdapter, replace_attention, residuals
from handmade.layers import ResidualConnection


class SkippedNorm(handmade.LayerNorm):
    """A final norm that is built (its weights load) but never applied."""

    def forward(self, x: Tensor) -> Tensor:
        return x


class ResidualFromNormed(ResidualConnection):
    def forward(self, x: Tensor, sublayer: Callable[[Tensor], Tensor]) -> Tensor:
        if self.norm_first:
            x = self.norm(x)  # the residual path now carries norm(x), not x
            return x + self.dropout(sublayer(x))
        return super().forward(x, sublayer)


class ReadsItsQuery(handmade.MultiheadAttention):
    """Cross-attention that attends over its own query stream instead of the encoder memory."""

    def forward(
        self, query: Tensor, key: Tensor, value: Tensor, *args: object, **kwargs: object
    ) -> tuple[Tensor, Tensor | None]:
        return super().forward(query, query, query, *args, **kwargs)


class DecoderReadsSource(handmade.Transformer):
    def forward(
        self, src: Tensor, tgt: Tensor, src_mask: Tensor | None = None, tgt_mask: Tensor | None = None,
        memory_mask: Tensor | None = None, src_key_padding_mask: Tensor | None = None,
        tgt_key_padding_mask: Tensor | None = None, memory_key_padding_mask: Tensor | None = None,
        src_is_causal: bool | None = None, tgt_is_causal: bool | None = None, memory_is_causal: bool = False,
    ) -> Tensor:
        self.encoder(src, mask=src_mask, src_key_padding_mask=src_key_padding_mask, is_causal=src_is_causal)
        return self.decoder(  # the bug: src where the encoder's output (memory) belongs
            tgt, src, tgt_mask=tgt_mask, memory_mask=memory_mask, tgt_key_padding_mask=tgt_key_padding_mask,
            memory_key_padding_mask=memory_key_padding_mask, tgt_is_causal=tgt_is_causal,
            memory_is_causal=memory_is_causal,
        )


class DecoderReadsSourceAdapter(BugAdapter):
    def build(self, **config: object) -> nn.Module:
        return DecoderReadsSource(**config)


def _skip_decoder_norm(model: handmade.Transformer, config: dict) -> None:
    model.decoder.norm = SkippedNorm(config["d_model"], eps=config["layer_norm_eps"], bias=config["bias"])


def _residuals_from_normed(model: handmade.Transformer, config: dict) -> None:
    for layer, name in residuals(model):
        setattr(layer, name, ResidualFromNormed(config["d_model"], config["dropout"], config["norm_first"],
                                                config["layer_norm_eps"], config["bias"]))


def _cross_reads_decoder(model: handmade.Transformer, config: dict) -> None:
    replace_attention(model, config, ReadsItsQuery, "cross")


def _share_self_and_cross(model: handmade.Transformer, config: dict) -> None:
    for layer in model.decoder.layers:
        layer.cross_attn = layer.self_attn


def _share_encoder_layers(model: handmade.Transformer, config: dict) -> None:
    layers = model.encoder.layers
    model.encoder.layers = nn.ModuleList([layers[0]] * len(layers))  # [layer] * N: one layer, N references


norm_first_ignored = BugAdapter("norm_first not passed on: always post-norm", options={"norm_first": False})
final_norm_missing = BugAdapter("the decoder stack's final LayerNorm is built but never applied", _skip_decoder_norm)
prenorm_residual_from_normed = BugAdapter("pre-norm residual adds the normalised x: norm(x) + f(norm(x))",
                                          _residuals_from_normed)
cross_attention_reads_decoder = BugAdapter("cross-attention keys and values from the decoder stream, not memory",
                                           _cross_reads_decoder)
self_cross_shared_weights = BugAdapter("decoder self- and cross-attention are one module (shared weights)",
                                       _share_self_and_cross)
encoder_layers_share_weights = BugAdapter("encoder layers cloned as [layer] * N: every layer shares one set of weights",
                                          _share_encoder_layers)
decoder_reads_src = DecoderReadsSourceAdapter("the decoder attends to src instead of the encoder's output")
