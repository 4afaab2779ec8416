"""The component registry: one record per level the harness compares, in the spirit of torch's ``ModuleInfo``.

A ``Level`` says everything the suite, the comparison engine, diagnosis and the benchmarks need to know
about one component: the built-in it is judged against and handmade's twin (both built from a drawn case),
how a case becomes inputs and masks, how the module is called, which strategy draws its cases, which
dtypes apply, whether low-precision gradients are comparable, and the edge cases that always run.

Cases are plain data with a ``seed`` (and a ``weight_scale``): the built-in's weights are drawn from the
seed by ``randomize_``, tensors from the seed by the level's ``inputs``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from hypothesis import strategies as st
from torch import Tensor, nn

import handmade
import reference.cases.pinned as pinned
import reference.cases.strategies as strat
from reference.builtin.config import Config, randomize_
from reference.cases.case import Case, draw_attn_mask, draw_padding_mask
from reference.cases.kinds import AttentionCase, LayerNormCase, StackCase
from reference.cases.strategies import DTYPES, is_smooth

Factory = dict[str, Any]  # {"device": ..., "dtype": ...}
Inputs = tuple[dict[str, Tensor], dict[str, Any]]  # (differentiable tensors, other arguments)


@dataclass(frozen=True, kw_only=True)
class Level:
    """One component under comparison: its built-in, handmade's twin, its inputs, call and strategy."""

    name: str
    builtin: str  # what the level is judged against, as a user would write it
    make_torch: Callable[[Any, Factory], nn.Module]
    make_handmade: Callable[[Any, Factory], nn.Module]
    inputs: Callable[[Any, torch.dtype], Inputs]
    call: Callable[..., Any]
    cases: Callable[[], st.SearchStrategy[Any]]
    smooth: Callable[[Any], bool] = lambda case: True  # gradients comparable in bf16/fp16 (no relu kink)
    dtypes: tuple[torch.dtype, ...] = DTYPES
    examples: float = 1.0  # weight of the profile's max_examples, per dtype
    pinned: tuple[tuple[Any, torch.dtype], ...] = field(default=(), repr=False)  # (case, dtype) that always run
    from_config: Callable[[Config], Any] = Case  # a default case of this level for an nn.Transformer config

    def build(self, which: str, case: Any, device: torch.device | str = "cpu",
              dtype: torch.dtype = torch.float64) -> nn.Module:
        """The ``which`` ("torch" or "handmade") module for ``case``, in eval mode."""
        make = {"torch": self.make_torch, "handmade": self.make_handmade}[which]
        with warnings.catch_warnings():  # "enable_nested_tensor is True, but ..." is noise here
            warnings.filterwarnings("ignore", message="enable_nested_tensor is True")
            return make(case, {"device": device, "dtype": dtype}).eval()

    def seeded_builtin(self, case: Any) -> nn.Module:
        """The built-in for ``case`` in float64 on the CPU, with random weights drawn from the case's seed."""
        model = self.build("torch", case)
        return randomize_(model, torch.Generator().manual_seed(case.seed), case.weight_scale)


def _sequence(g: torch.Generator, length: int, batch: int | None, features: int, batch_first: bool,
              dtype: torch.dtype) -> Tensor:
    """(length, N, E), (N, length, E) when batch-first, or (length, E) unbatched; drawn in float64, rounded."""
    x = torch.randn(length, batch or 1, features, generator=g, dtype=torch.float64)
    x = x[:, 0] if batch is None else (x.transpose(0, 1) if batch_first else x)
    return x.contiguous().to(dtype)


# -- attention -------------------------------------------------------------------------------------------------

def _attention(module: type[nn.Module]) -> Callable[[AttentionCase, Factory], nn.Module]:
    def make(c: AttentionCase, factory: Factory) -> nn.Module:
        return module(c.embed_dim, c.num_heads, c.dropout, bias=c.bias, add_bias_kv=c.add_bias_kv,
                      add_zero_attn=c.add_zero_attn, kdim=c.kdim, vdim=c.vdim, batch_first=c.batch_first, **factory)
    return make


def attention_inputs(c: AttentionCase, dtype: torch.dtype) -> Inputs:
    """(query, key, value) in the case's layout, masks and call flags: query, key and value three distinct tensors
    (keys of another length where the case says so), so that code mixing them up differs; query alone for
    self-attention, and no value (the keys are the values) when the case says ``key_is_value``."""
    if c.key_is_value and not c.self_attention and (c.kdim or c.embed_dim) != (c.vdim or c.embed_dim):
        raise ValueError(f"key_is_value passes one tensor as key and value, so kdim and vdim must be equal, "
                         f"got kdim={c.kdim} and vdim={c.vdim}")
    g = torch.Generator().manual_seed(c.seed + 7)
    seq = lambda length, features: _sequence(g, length, c.batch, features, c.batch_first, dtype)  # noqa: E731
    inputs = {"query": seq(c.query_len, c.embed_dim)}
    keys = c.query_len if c.self_attention or c.equal_lengths else c.key_len
    if not c.self_attention:
        inputs["key"] = seq(keys, c.kdim or c.embed_dim)
        if not c.key_is_value:
            inputs["value"] = seq(keys, c.vdim or c.embed_dim)
    kwargs = {
        "attn_mask": draw_attn_mask(c.attn_mask, c.query_len, keys, c.batch, c.num_heads, dtype, g),
        "key_padding_mask": draw_padding_mask(c.key_padding_mask, c.batch, keys, dtype, g),
        "need_weights": c.need_weights, "average_attn_weights": c.average_attn_weights, "is_causal": c.is_causal,
    }
    return inputs, kwargs


def call_attention(module: nn.Module, query: Tensor, key: Tensor | None = None, value: Tensor | None = None,
                   **kwargs: object) -> dict[str, Tensor | None]:
    """Self-attention passes one tensor as query, key and value, as the layers do; a cross-attention given no
    value takes its values from the keys, as a decoder's cross-attention does from its memory."""
    key = query if key is None else key
    out, weights = module(query, key, key if value is None else value, **kwargs)
    return {"output": out, "weights": weights}


# -- layer norm ------------------------------------------------------------------------------------------------

def _layer_norm(module: type[nn.Module]) -> Callable[[LayerNormCase, Factory], nn.Module]:
    return lambda c, factory: module(c.normalized_shape, eps=c.eps, elementwise_affine=c.elementwise_affine,
                                     bias=c.bias, **factory)


def layer_norm_inputs(c: LayerNormCase, dtype: torch.dtype) -> Inputs:
    g = torch.Generator().manual_seed(c.seed + 7)
    x = c.offset + torch.randn(*c.lead_shape, *c.normalized_shape, generator=g, dtype=torch.float64)
    return {"input": x.to(dtype)}, {}


# -- feed-forward, layers, stacks, the whole model: drawn as whole-model cases ---------------------------------

def _layer(module: type[nn.Module]) -> Callable[[Case, Factory], nn.Module]:
    return lambda c, factory: module(**c.config.layer_kwargs(), **factory)


def _stack(lib: Any, kind: str) -> Callable[[StackCase, Factory], nn.Module]:
    def make(c: StackCase, factory: Factory) -> nn.Module:
        cfg = c.case.config
        layer = getattr(lib, f"Transformer{kind}Layer")(**cfg.layer_kwargs(), **factory)
        norm = lib.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps, bias=cfg.bias, **factory) if c.final_norm else None
        layers = cfg.num_encoder_layers if kind == "Encoder" else cfg.num_decoder_layers
        extra = {"enable_nested_tensor": False} if kind == "Encoder" else {}
        return getattr(lib, f"Transformer{kind}")(layer, layers, norm, **extra)
    return make


def _transformer(module: type[nn.Module]) -> Callable[[Case, Factory], nn.Module]:
    return lambda c, factory: module(**c.config.kwargs(), **factory)


def present(kwargs: dict[str, object]) -> dict[str, object]:
    """Only the arguments a case sets: no None masks or hints, no False memory_is_causal (torch's default)."""
    return {k: v for k, v in kwargs.items() if v is not None and not (k == "memory_is_causal" and v is False)}


def feed_forward_inputs(c: Case, dtype: torch.dtype) -> Inputs:
    return {"x": c.tensors(dtype)[0]}, {}


def encoder_layer_inputs(c: Case, dtype: torch.dtype) -> Inputs:
    src, _, kw = c.tensors(dtype)
    return {"src": src}, {"src_mask": kw["src_mask"], "src_key_padding_mask": kw["src_key_padding_mask"],
                          "is_causal": bool(kw["src_is_causal"])}


DECODER_KWARGS = ("tgt_mask", "memory_mask", "tgt_key_padding_mask", "memory_key_padding_mask", "memory_is_causal")


def decoder_layer_inputs(c: Case, dtype: torch.dtype) -> Inputs:
    src, tgt, kw = c.tensors(dtype)
    kwargs = {**{k: kw[k] for k in DECODER_KWARGS}, "tgt_is_causal": bool(kw["tgt_is_causal"])}
    return {"tgt": tgt, "memory": src}, kwargs


def encoder_inputs(c: StackCase, dtype: torch.dtype) -> Inputs:
    src, _, kw = c.case.tensors(dtype)
    return {"src": src}, {"mask": kw["src_mask"], "src_key_padding_mask": kw["src_key_padding_mask"],
                          "is_causal": kw["src_is_causal"]}


def decoder_inputs(c: StackCase, dtype: torch.dtype) -> Inputs:
    src, tgt, kw = c.case.tensors(dtype)
    return {"tgt": tgt, "memory": src}, {k: kw[k] for k in (*DECODER_KWARGS, "tgt_is_causal")}


def transformer_inputs(c: Case, dtype: torch.dtype) -> Inputs:
    src, tgt, kw = c.tensors(dtype)
    return {"src": src, "tgt": tgt}, present(kw)


def decoder_only_inputs(c: StackCase, dtype: torch.dtype) -> Inputs:
    """A GPT's input: one sequence and the causal mask (float, -inf above the diagonal) with its hint."""
    src = c.case.tensors(dtype)[0]
    causal = torch.zeros(c.case.src_len, c.case.src_len, dtype=dtype).masked_fill(
        torch.ones(c.case.src_len, c.case.src_len, dtype=torch.bool).triu(1), float("-inf"))
    return {"src": src}, {"mask": causal, "is_causal": True}


def _layer_cases() -> st.SearchStrategy[Case]:
    return strat.cases(config=strat.configs(max_layers=1))


def _smooth(c: Case | StackCase) -> bool:
    return is_smooth(c.config)


F64, F32 = torch.float64, torch.float32
LEVELS: dict[str, Level] = {level.name: level for level in (
    Level(name="attention", builtin="nn.MultiheadAttention",
          make_torch=_attention(nn.MultiheadAttention), make_handmade=_attention(handmade.MultiheadAttention),
          inputs=attention_inputs, call=call_attention, cases=strat.attention_cases, examples=0.5,
          pinned=pinned.ATTENTION,
          from_config=lambda c: AttentionCase(embed_dim=c.d_model, num_heads=c.nhead, bias=c.bias,
                                              batch_first=c.batch_first,
                                              dropout=c.dropout)),
    Level(name="layer_norm", builtin="nn.LayerNorm",
          make_torch=_layer_norm(nn.LayerNorm), make_handmade=_layer_norm(handmade.LayerNorm),
          inputs=layer_norm_inputs, call=lambda m, input: m(input), cases=strat.layer_norm_cases, examples=0.4,
          pinned=pinned.LAYER_NORM, from_config=lambda c: LayerNormCase(normalized_shape=(c.d_model,),
                                                                        eps=c.layer_norm_eps, bias=c.bias)),
    Level(name="feed_forward", builtin="nn.TransformerEncoderLayer._ff_block",
          make_torch=_layer(nn.TransformerEncoderLayer), make_handmade=_layer(handmade.TransformerEncoderLayer),
          inputs=feed_forward_inputs, call=lambda m, x: m._ff_block(x), cases=_layer_cases, smooth=_smooth,
          examples=0.25),
    Level(name="encoder_layer", builtin="nn.TransformerEncoderLayer",
          make_torch=_layer(nn.TransformerEncoderLayer), make_handmade=_layer(handmade.TransformerEncoderLayer),
          inputs=encoder_layer_inputs, call=lambda m, src, **kw: m(src, **kw), cases=_layer_cases, smooth=_smooth,
          examples=0.4, pinned=pinned.ENCODER_LAYER),
    Level(name="decoder_layer", builtin="nn.TransformerDecoderLayer",
          make_torch=_layer(nn.TransformerDecoderLayer), make_handmade=_layer(handmade.TransformerDecoderLayer),
          inputs=decoder_layer_inputs, call=lambda m, tgt, memory, **kw: m(tgt, memory, **kw), cases=_layer_cases,
          smooth=_smooth, examples=0.4, pinned=pinned.DECODER_LAYER),
    Level(name="encoder", builtin="nn.TransformerEncoder",
          make_torch=_stack(nn, "Encoder"), make_handmade=_stack(handmade, "Encoder"),
          inputs=encoder_inputs, call=lambda m, src, **kw: m(src, **kw), cases=strat.stack_cases, smooth=_smooth,
          examples=0.25, pinned=pinned.ENCODER, from_config=lambda c: StackCase(Case(c))),
    Level(name="decoder", builtin="nn.TransformerDecoder",
          make_torch=_stack(nn, "Decoder"), make_handmade=_stack(handmade, "Decoder"),
          inputs=decoder_inputs, call=lambda m, tgt, memory, **kw: m(tgt, memory, **kw), cases=strat.stack_cases,
          smooth=_smooth, examples=0.25, pinned=pinned.DECODER, from_config=lambda c: StackCase(Case(c))),
    Level(name="decoder_only", builtin="nn.TransformerEncoder with a causal mask",
          make_torch=_stack(nn, "Encoder"), make_handmade=_stack(handmade, "Encoder"),
          inputs=decoder_only_inputs, call=lambda m, src, **kw: m(src, **kw), cases=strat.stack_cases,
          smooth=_smooth, examples=0.25, pinned=pinned.DECODER_ONLY, from_config=lambda c: StackCase(Case(c))),
    Level(name="transformer", builtin="nn.Transformer",
          make_torch=_transformer(nn.Transformer), make_handmade=_transformer(handmade.Transformer),
          inputs=transformer_inputs, call=lambda m, src, tgt, **kw: m(src, tgt, **kw), cases=strat.cases,
          smooth=_smooth, examples=1.0, pinned=pinned.TRANSFORMER),
)}
COMPONENTS = tuple(LEVELS)


def level(name: str) -> Level:
    """The registry entry ``name``; a clear error naming the levels otherwise."""
    try:
        return LEVELS[name]
    except KeyError:
        raise ValueError(f"level must be one of {', '.join(LEVELS)}, got level={name!r}") from None
