"""A hand-written Transformer, readable top to bottom, equal to ``torch.nn.Transformer``.

Modules in paper order ("Attention Is All You Need", Vaswani et al. 2017):

- ``embeddings``     token embeddings, sinusoidal positional encoding, output layer (3.4, 3.5)
- ``attention``      scaled dot-product attention (3.2.1) and multi-head attention (3.2.2)
- ``tiled_attention`` a second, memory-efficient attention core: tiles with an online softmax, forward and
                     backward by hand (FlashAttention); ``use_tiled_attention(model)`` selects it
- ``normalization``  layer normalization (Ba et al. 2016; used in 3.1)
- ``layers``         encoder and decoder layers: residual sublayers, the position-wise feed-forward network (3.1, 3.3)
- ``transformer``    encoder and decoder stacks and the Transformer (3.1, Figure 1)
- ``seq2seq``        embeddings -> positional encoding -> Transformer -> output layer
- ``masks``          causal ("sequence") and padding masks, mask merging

Submodule and parameter names are torch's, so ``state_dict()`` keys equal the built-in's except that
torch packs q, k and v into ``in_proj_weight``/``in_proj_bias`` where handmade has ``q_proj``, ``k_proj``, ``v_proj``.

Only tensor operations are used: no ``nn.MultiheadAttention``, ``nn.Transformer*``, ``nn.LayerNorm``,
``F.layer_norm``, ``F.scaled_dot_product_attention`` or ``F.multi_head_attention_forward``.

Shape letters (as in the torch docs): N batch, S source length, T target length, L query length inside
attention, E d_model, H heads, D = E // H head size, F dim_feedforward.
"""

from handmade.attention import MultiheadAttention, ScaledDotProductAttention
from handmade.embeddings import Embeddings, Generator, PositionalEncoding
from handmade.layers import TransformerDecoderLayer, TransformerEncoderLayer
from handmade.masks import generate_square_subsequent_mask, padding_mask, subsequent_mask
from handmade.normalization import LayerNorm
from handmade.seq2seq import Seq2SeqTransformer
from handmade.tiled_attention import TiledAttention, use_tiled_attention
from handmade.transformer import Transformer, TransformerDecoder, TransformerEncoder

__all__ = [
    "Embeddings",
    "Generator",
    "LayerNorm",
    "MultiheadAttention",
    "PositionalEncoding",
    "ScaledDotProductAttention",
    "Seq2SeqTransformer",
    "TiledAttention",
    "Transformer",
    "TransformerDecoder",
    "TransformerDecoderLayer",
    "TransformerEncoder",
    "TransformerEncoderLayer",
    "generate_square_subsequent_mask",
    "padding_mask",
    "subsequent_mask",
    "use_tiled_attention",
]
