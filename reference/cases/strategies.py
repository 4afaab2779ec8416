"""Every hypothesis strategy of the suite, in one place.

Strategies draw plain data (sizes, options, mask kinds and an integer seed), never tensors: tensors come
from a ``torch.Generator`` seeded with the drawn seed (``reference.cases.case.Case.tensors``), so every failure
shrinks well and replays from the example hypothesis prints. Whole-model examples stay small (d_model <= 32,
lengths <= 8, <= 3 layers) so that many run quickly.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import Tensor

from reference.builtin.config import Config
from reference.cases.case import ATTN_MASKS, CAUSAL_KINDS, PADDING_MASKS, Case
from reference.cases.kinds import AttentionCase, LayerNormCase, Seq2SeqCase, StackCase

MAX_D_MODEL = 32
MAX_LEN = 8
MAX_LAYERS = 3
LOW_PRECISION = (torch.bfloat16, torch.float16)
DTYPES = (torch.float64, torch.float32, *LOW_PRECISION)


def tanh_gelu(x: Tensor) -> Tensor:
    """A smooth custom activation (GELU, tanh approximation): exercises the ``activation=callable`` option."""
    return F.gelu(x, approximate="tanh")


def silu(x: Tensor) -> Tensor:
    """Another smooth custom activation, unlike any built-in choice."""
    return F.silu(x)


ACTIVATIONS: tuple[str | Callable[[Tensor], Tensor], ...] = ("relu", "gelu", tanh_gelu, silu)
# relu is the one activation with a kink; gradients through it are compared in low precision only where
# smooth (see the calibration record in docs/tolerance.md).
SMOOTH_ACTIVATIONS = ("gelu", tanh_gelu, silu)


def is_smooth(config: Config) -> bool:
    """Whether the configuration's activation is differentiable everywhere (not relu)."""
    return config.activation != "relu"


@st.composite
def head_shapes(draw: st.DrawFn, *, max_d_model: int = MAX_D_MODEL, min_d_model: int = 1) -> tuple[int, int]:
    """(d_model, nhead) with nhead dividing d_model: nhead 1, odd and even, head sizes 1 to 8, d_model at least
    ``min_d_model``."""
    nhead = draw(st.sampled_from([1, 2, 3, 4, 5, 8]).filter(lambda h: h <= max_d_model), label="nhead")
    least = -(-min_d_model // nhead)  # the smallest head size that makes the width
    head_dim = draw(st.integers(least, max(least, min(8, max_d_model // nhead))), label="head_dim")
    return nhead * head_dim, nhead


@st.composite
def configs(
    draw: st.DrawFn,
    *,
    max_d_model: int = MAX_D_MODEL,
    max_layers: int = MAX_LAYERS,
    activations: tuple[str | Callable[[Tensor], Tensor], ...] = ACTIVATIONS,
    batch_first: bool | None = None,
) -> Config:
    """nn.Transformer constructor options: every one of them, sizes kept small; d_model at least 2 (a LayerNorm
    over one feature is degenerate: its output is its bias whatever the input, its exact input gradient 0, and
    the computed one rounding times 1/sqrt(eps): PyTorch's own float64 gradient there is 2**-33 with eps 1e-12,
    and a correct written-out norm's differs from it at every precision)."""
    d_model, nhead = draw(head_shapes(max_d_model=max_d_model, min_d_model=2))
    return Config(
        d_model=d_model,
        nhead=nhead,
        num_encoder_layers=draw(st.integers(1, max_layers), label="num_encoder_layers"),
        num_decoder_layers=draw(st.integers(1, max_layers), label="num_decoder_layers"),
        dim_feedforward=draw(st.sampled_from([1, 3, 8, 16, 32, 48]), label="dim_feedforward"),
        dropout=draw(st.sampled_from([0.0, 0.1, 0.5]), label="dropout"),  # eval mode: must have no effect
        activation=draw(st.sampled_from(activations), label="activation"),
        layer_norm_eps=draw(st.sampled_from([1e-5, 1e-6, 1e-3, 0.5]), label="layer_norm_eps"),
        batch_first=draw(st.booleans(), label="batch_first") if batch_first is None else batch_first,
        norm_first=draw(st.booleans(), label="norm_first"),
        bias=draw(st.booleans(), label="bias"),
    )


def _hint(draw: st.DrawFn, mask_kind: str, label: str) -> bool | None:
    """A ``*_is_causal`` hint: None, False, or True only when the mask it describes is causal."""
    choices = [None, False, True] if mask_kind in CAUSAL_KINDS else [None, False]
    return draw(st.sampled_from(choices), label=label)


@st.composite
def cases(
    draw: st.DrawFn,
    *,
    config: st.SearchStrategy[Config] | None = None,
    max_len: int = MAX_LEN,
    masks: bool = True,
    batched: bool | None = None,
) -> Case:
    """A whole-model example: configuration, sizes (batch None = unbatched), masks, causal hints, seed."""
    drawn: Config = draw(config if config is not None else configs(), label="config")
    if batched is None:
        batch = draw(st.one_of(st.none(), st.integers(1, 3)), label="batch")
    else:
        batch = draw(st.integers(1, 3), label="batch") if batched else None
    src_len = draw(st.integers(1, max_len), label="src_len")
    tgt_len = draw(st.integers(1, max_len), label="tgt_len")
    attn = st.sampled_from(ATTN_MASKS) if masks else st.just("none")
    pad = st.sampled_from(PADDING_MASKS) if masks else st.just("none")
    src_mask, tgt_mask, memory_mask = (draw(attn, label=n) for n in ("src_mask", "tgt_mask", "memory_mask"))
    return Case(
        config=drawn,
        batch=batch,
        src_len=src_len,
        tgt_len=tgt_len,
        src_mask=src_mask,
        tgt_mask=tgt_mask,
        memory_mask=memory_mask,
        src_key_padding_mask=draw(pad, label="src_key_padding_mask"),
        tgt_key_padding_mask=draw(pad, label="tgt_key_padding_mask"),
        memory_key_padding_mask=draw(pad, label="memory_key_padding_mask"),
        src_is_causal=_hint(draw, src_mask, "src_is_causal"),
        tgt_is_causal=_hint(draw, tgt_mask, "tgt_is_causal"),
        memory_is_causal=bool(_hint(draw, memory_mask, "memory_is_causal")),
        weight_scale=draw(st.sampled_from([1.0, 1.0, 1.0, 3.0]), label="weight_scale"),
        seed=draw(seeds(), label="seed"),
    )


def seeds() -> st.SearchStrategy[int]:
    """The integer that seeds every tensor of an example (weights, inputs, masks, cotangents)."""
    return st.integers(0, 2**32 - 1)


def dtypes(*, low_precision: bool = True) -> st.SearchStrategy[torch.dtype]:
    """A floating dtype: float64, float32 and (with ``low_precision``) bfloat16 and float16."""
    return st.sampled_from(DTYPES if low_precision else DTYPES[:2])


def devices() -> st.SearchStrategy[str]:
    """An available device: "cpu", and "cuda" when torch.cuda.is_available() (tests use the fixture instead)."""
    return st.sampled_from(["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])


@st.composite
def attention_cases(draw: st.DrawFn) -> AttentionCase:
    """nn.MultiheadAttention options (kdim/vdim, bias_kv, zero_attn), self or cross attention, masks, flags."""
    embed_dim, num_heads = draw(head_shapes())
    self_attention = draw(st.booleans(), label="self_attention")
    query_len = draw(st.integers(1, MAX_LEN), label="query_len")
    key_len = query_len if self_attention else draw(st.integers(1, MAX_LEN), label="key_len")
    kdim = vdim = None
    if not self_attention:
        kdim = draw(st.one_of(st.none(), st.integers(1, 12)), label="kdim")
        vdim = draw(st.one_of(st.none(), st.integers(1, 12)), label="vdim")
    attn_mask = draw(st.sampled_from(ATTN_MASKS), label="attn_mask")
    need_weights = draw(st.booleans(), label="need_weights")
    # the hint stands for a top-left causal mask; torch only honours it together with that mask
    is_causal = attn_mask in CAUSAL_KINDS and draw(st.booleans(), label="is_causal")
    return AttentionCase(
        embed_dim=embed_dim,
        num_heads=num_heads,
        bias=draw(st.booleans(), label="bias"),
        add_bias_kv=draw(st.booleans(), label="add_bias_kv"),
        add_zero_attn=draw(st.booleans(), label="add_zero_attn"),
        kdim=kdim,
        vdim=vdim,
        batch_first=draw(st.booleans(), label="batch_first"),
        dropout=draw(st.sampled_from([0.0, 0.5]), label="dropout"),
        batch=draw(st.one_of(st.none(), st.integers(1, 3)), label="batch"),
        query_len=query_len,
        key_len=key_len,
        self_attention=self_attention,
        attn_mask=attn_mask,
        key_padding_mask=draw(st.sampled_from(PADDING_MASKS), label="key_padding_mask"),
        need_weights=need_weights,
        average_attn_weights=draw(st.booleans(), label="average_attn_weights"),
        is_causal=is_causal,
        seed=draw(seeds(), label="seed"),
    )


@st.composite
def layer_norm_cases(draw: st.DrawFn) -> LayerNormCase:
    """nn.LayerNorm options (multi-dim normalized_shape, eps, affine, bias) and inputs with a large mean."""
    normalized_shape = tuple(draw(st.lists(st.integers(1, 12), min_size=1, max_size=2), label="normalized_shape"))
    return LayerNormCase(
        normalized_shape=normalized_shape,
        eps=draw(st.sampled_from([1e-5, 1e-6, 1e-3, 0.5]), label="eps"),
        elementwise_affine=draw(st.booleans(), label="elementwise_affine"),
        bias=draw(st.booleans(), label="bias"),
        lead_shape=tuple(draw(st.lists(st.integers(1, 4), max_size=2), label="lead_shape")),
        offset=draw(st.sampled_from([0.0, 0.0, 10.0, -100.0]), label="offset"),
        seed=draw(seeds(), label="seed"),
    )


@st.composite
def stack_cases(draw: st.DrawFn) -> StackCase:
    """A whole-model case (1-3 distinct layers each side) and whether the stack ends in a norm."""
    return StackCase(draw(cases(), label="case"), draw(st.booleans(), label="final_norm"))


@st.composite
def seq2seq_cases(draw: st.DrawFn) -> Seq2SeqCase:
    """Vocabulary sizes, a max_len at least the longest sequence, and a whole-model case (sizes, masks, seed)."""
    case = draw(cases(config=configs(max_layers=2)), label="case")
    return Seq2SeqCase(
        case=case,
        src_vocab=draw(st.integers(2, 20), label="src_vocab"),
        tgt_vocab=draw(st.integers(2, 20), label="tgt_vocab"),
        max_len=draw(st.integers(max(case.src_len, case.tgt_len), 40), label="max_len"),
    )


@st.composite
def positional_encoding_cases(draw: st.DrawFn) -> tuple[int, int, int]:
    """(d_model, max_len, sequence length <= max_len): odd and even d_model, positions up to 5000."""
    d_model = draw(st.integers(1, 64), label="d_model")
    max_len = draw(st.sampled_from([1, 7, 64, 5000]), label="max_len")
    length = draw(st.integers(1, min(max_len, 64)), label="length")
    return d_model, max_len, length
