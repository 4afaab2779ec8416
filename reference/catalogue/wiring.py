"""Bugs in how layers, residuals, norms, attentions and the two stacks are wired together."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from torch import Tensor, nn

import handmade
from reference.cases.case import Case
from reference.catalogue._base import ATTN, LAYERS, STACK_CLASSES, Deviation, Plant, become, delegate, instances, layers


def _norm_first(value: bool) -> Plant:
    def plant(model: nn.Module, config: Mapping[str, object]) -> None:
        for layer in layers(model):
            layer.norm_first = value  # built with the wrong norm_first: norm_first not passed on

    return plant


class EncoderResidualFromNormed(handmade.TransformerEncoderLayer):
    def forward(self, src: Tensor, src_mask: Tensor | None = None, src_key_padding_mask: Tensor | None = None,
                is_causal: bool = False) -> Tensor:
        if not self.norm_first:
            return super().forward(src, src_mask, src_key_padding_mask, is_causal)
        x = self.norm1(src)  # the residual path now carries norm(x), not x
        x = x + self._sa_block(x, src_mask, src_key_padding_mask, is_causal)
        x = self.norm2(x)
        return x + self._ff_block(x)


class DecoderResidualFromNormed(handmade.TransformerDecoderLayer):
    def forward(self, tgt: Tensor, memory: Tensor, tgt_mask: Tensor | None = None, memory_mask: Tensor | None = None,
                tgt_key_padding_mask: Tensor | None = None, memory_key_padding_mask: Tensor | None = None,
                tgt_is_causal: bool = False, memory_is_causal: bool = False) -> Tensor:
        if not self.norm_first:
            return super().forward(tgt, memory, tgt_mask, memory_mask, tgt_key_padding_mask, memory_key_padding_mask,
                                   tgt_is_causal, memory_is_causal)
        x = self.norm1(tgt)
        x = x + self._sa_block(x, tgt_mask, tgt_key_padding_mask, tgt_is_causal)
        x = self.norm2(x)
        x = x + self._mha_block(x, memory, memory_mask, memory_key_padding_mask, memory_is_causal)
        x = self.norm3(x)
        return x + self._ff_block(x)


def _residual_from_normed(model: nn.Module, config: Mapping[str, object]) -> None:
    for encoder_layer in instances(model, handmade.TransformerEncoderLayer):
        become(encoder_layer, EncoderResidualFromNormed)
    for decoder_layer in instances(model, handmade.TransformerDecoderLayer):
        become(decoder_layer, DecoderResidualFromNormed)


class ReadsItsQuery(handmade.MultiheadAttention):
    """Cross-attention that attends over its own query stream instead of the encoder memory."""

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None,
                need_weights: bool = True, attn_mask: Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, Tensor | None]:
        return super().forward(query, query, query, key_padding_mask, need_weights, attn_mask, average_attn_weights,
                               is_causal)


def _cross_reads_decoder(model: nn.Module, config: Mapping[str, object]) -> None:
    for layer in instances(model, handmade.TransformerDecoderLayer):
        become(layer.multihead_attn, ReadsItsQuery)


class DecoderReadsSource(handmade.Transformer):
    def forward(self, src: Tensor, tgt: Tensor, src_mask: Tensor | None = None, tgt_mask: Tensor | None = None,
                memory_mask: Tensor | None = None, src_key_padding_mask: Tensor | None = None,
                tgt_key_padding_mask: Tensor | None = None, memory_key_padding_mask: Tensor | None = None,
                src_is_causal: bool | None = None, tgt_is_causal: bool | None = None,
                memory_is_causal: bool = False) -> Tensor:
        self.encoder(src, mask=src_mask, src_key_padding_mask=src_key_padding_mask, is_causal=src_is_causal)
        return self.decoder(  # the bug: src where the encoder's output (memory) belongs
            tgt, src, tgt_mask=tgt_mask, memory_mask=memory_mask, tgt_key_padding_mask=tgt_key_padding_mask,
            memory_key_padding_mask=memory_key_padding_mask, tgt_is_causal=tgt_is_causal,
            memory_is_causal=memory_is_causal)


def _decoder_reads_src(model: nn.Module, config: Mapping[str, object]) -> None:
    for transformer in instances(model, handmade.Transformer):
        become(transformer, DecoderReadsSource)


def _shared_layers(stacks: tuple[str, ...], which: str) -> Plant:
    def plant(model: nn.Module, config: Mapping[str, object]) -> None:
        for stack in instances(model, tuple(STACK_CLASSES[s] for s in stacks)):
            source = stack.layers[0 if which == "first" else -1]
            for layer in stack.layers:
                delegate(layer, source)

    return plant


def _shared_attention(use: str) -> Plant:
    def plant(model: nn.Module, config: Mapping[str, object]) -> None:
        for layer in instances(model, handmade.TransformerDecoderLayer):
            if use == "self":
                delegate(layer.multihead_attn, layer.self_attn)
            else:
                delegate(layer.self_attn, layer.multihead_attn)

    return plant


def _layers_alike(stacks: tuple[str, ...]) -> Callable[[Case], bool]:
    return lambda c: any(getattr(c.config, f"num_{s}_layers") > 1 for s in stacks)


PLACEMENT = "pre/post-norm placement"
SHARED = "weights shared between layers"
SHARED_ATTN = "weights shared between self- and cross-attention"
STACKS = {"encoder": ("encoder",), "decoder": ("decoder",), "both": ("encoder", "decoder")}

CATALOGUE = (
    Deviation(key="pre_norm", cause=PLACEMENT,
              does="normalizes before each sublayer (x + f(norm(x))), whatever norm_first says",
              fix="honour norm_first: post-norm (the default) is norm(x + f(x))", plant=_norm_first(True), sites=LAYERS,
              shows_on=lambda c: not c.config.norm_first, claims=(("norm_first", True),), option="norm_first=True"),
    Deviation(key="post_norm", cause=PLACEMENT,
              does="normalizes after each residual sum (norm(x + f(x))), whatever norm_first says",
              fix="honour norm_first=True: x + f(norm(x))", plant=_norm_first(False), sites=LAYERS,
              shows_on=lambda c: c.config.norm_first,
              claims=(("norm_first", False),), option="norm_first=False"),
    Deviation(key="prenorm_residual_from_normed", cause=PLACEMENT,
              does="adds the normalised x on the pre-norm residual path: norm(x) + f(norm(x))",
              fix="keep x on the residual path: x + f(norm(x))", plant=_residual_from_normed, sites=LAYERS,
              shows_on=lambda c: c.config.norm_first, claims=(("residual", "from normed"),)),
    *(Deviation(key=("layers" if stack == "both" else f"{stack}_layers") + f"_shared_{which}", cause=SHARED,
                does=("runs every layer of both stacks" if stack == "both" else f"runs every {stack} layer")
                + f" with the {which} layer's weights (one layer object used N times)",
                fix="build N separate layers (copy.deepcopy each), not [layer] * N",
                plant=_shared_layers(STACKS[stack], which),
                sites=(r"layers\.\d+",) if stack == "both" else (rf"^{stack}\.layers\.\d+",),
                shows_on=_layers_alike(STACKS[stack]),
                claims=tuple((f"{s}.layers", which) for s in STACKS[stack]))
      for stack in ("encoder", "decoder", "both") for which in ("first", "last")),
    Deviation(key="cross_uses_self_attention", cause=SHARED_ATTN,
              does="uses the self-attention weights for cross-attention (one attention object for both)",
              fix="give each decoder layer its own cross-attention (nn.Transformer's multihead_attn)",
              plant=_shared_attention("self"), sites=(r"^decoder\.layers\.\d+\.multihead_attn$",),
              claims=(("decoder.attention", "self for both"),)),
    Deviation(key="self_uses_cross_attention", cause=SHARED_ATTN,
              does="uses the cross-attention weights for self-attention (one attention object for both)",
              fix="give each decoder layer its own self-attention and cross-attention",
              plant=_shared_attention("cross"),
              sites=(r"^decoder\.layers\.\d+\.self_attn$",), claims=(("decoder.attention", "cross for both"),)),
    Deviation(key="cross_attention_reads_decoder", cause="cross-attention inputs",
              does="takes cross-attention keys and values from the decoder stream instead of the encoder memory",
              fix="multihead_attn(x, memory, memory): queries from the decoder, keys and values from the encoder",
              plant=_cross_reads_decoder, sites=(r"^decoder\.layers\.\d+\.multihead_attn$",),
              claims=(("cross.inputs", "decoder"),)),
    Deviation(key="decoder_reads_src", cause="cross-attention inputs",
              does="gives the decoder src where the encoder's output (memory) belongs",
              fix="memory = self.encoder(src, ...); then self.decoder(tgt, memory, ...)", plant=_decoder_reads_src,
              sites=(r"^decoder\.layers\.\d+\.multihead_attn$", r"^decoder$"), claims=(("cross.inputs", "src"),)),
    Deviation(key="batch_first_ignored", cause="batch_first ignored",
              does="builds the attention modules without batch_first: they read (N, L, E) input as (L, N, E)",
              fix="pass batch_first to every MultiheadAttention", plant=lambda m, c: _batch_first_off(m), sites=ATTN,
              shows_on=lambda c: c.config.batch_first and c.batch is not None, claims=(("attention.batch_first",
                                                                                        False),)),
)


def _batch_first_off(model: nn.Module) -> None:
    for attn in instances(model, handmade.MultiheadAttention):
        attn.batch_first = False
