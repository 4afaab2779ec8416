"""Bad input: handmade rejects what nn.Transformer rejects, with a ValueError/TypeError that names the argument.

The built-in may raise anything (AssertionError, RuntimeError, IndexError); handmade raises ValueError or
TypeError with one sentence naming what, the rule and the values. Where a property draws the input, it also
checks the converse: what the built-in accepts, handmade accepts, with the same result.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn

import handmade
from reference.builtin.config import Config, randomize_
from reference.builtin.weights import WeightMapError, copy_torch_to_handmade
from reference.cases.strategies import configs, seeds
from reference.inference.prepare import fastpath
from reference.levels.pairs import build_pair, build_torch
from reference.verdict.assertions import Context, assert_parity, examples
from reference.verdict.tolerance import judge

D, H, S, T, N = 8, 2, 5, 4, 2
F64 = torch.float64
KW = {"d_model": D, "nhead": H, "num_encoder_layers": 1, "num_decoder_layers": 1, "dim_feedforward": 16}


def models(dtype: torch.dtype = F64) -> tuple[nn.Module, nn.Module]:
    """A small nn.Transformer and handmade.Transformer with the same weights, in eval mode."""
    return build_pair("transformer", Config(**KW), seed=0, dtype=dtype)


def rand(*shape: int, dtype: torch.dtype = F64) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)), dtype=dtype)


SRC, TGT = rand(S, N, D), rand(T, N, D)
BOOL = torch.bool

# name -> (call with the model, regex the handmade message must match: it names the offending argument)
BAD_CALLS: dict[str, tuple[Callable[[nn.Module], object], str]] = {
    "src_4d": (lambda m: m(SRC[None], TGT), r"src .*tgt|3-D"),
    "src_and_tgt_1d": (lambda m: m(SRC[0, 0], TGT[0, 0]), r"src .*tgt"),
    "src_3d_tgt_2d": (lambda m: m(SRC, TGT[:, 0]), r"src .*tgt"),
    "batch_mismatch": (lambda m: m(SRC, TGT[:, :1]), r"batch size"),
    "src_d_model": (lambda m: m(rand(S, N, D + 1), TGT), r"d_model=8"),
    "tgt_d_model": (lambda m: m(SRC, rand(T, N, D - 1)), r"d_model=8"),
    "src_mask_wrong_2d_shape": (lambda m: m(SRC, TGT, src_mask=torch.zeros(S + 1, S, dtype=F64)), r"^src_mask.*shape"),
    "src_mask_3d_batch_not_times_heads": (lambda m: m(SRC, TGT, src_mask=torch.zeros(N, S, S, dtype=BOOL)),
                                          r"^src_mask.*N\*num_heads"),
    "src_mask_4d": (lambda m: m(SRC, TGT, src_mask=torch.zeros(1, 1, S, S, dtype=BOOL)), r"^src_mask.*shape"),
    "tgt_mask_int": (lambda m: m(SRC, TGT, tgt_mask=torch.zeros(T, T, dtype=torch.int64)), r"^tgt_mask.*bool"),
    "memory_mask_transposed": (lambda m: m(SRC, TGT, memory_mask=torch.zeros(S, T, dtype=BOOL)),
                               r"^memory_mask.*\(4, 5\)"),
    "src_key_padding_mask_transposed": (lambda m: m(SRC, TGT, src_key_padding_mask=torch.zeros(S, N, dtype=BOOL)),
                                        r"^src_key_padding_mask.*\(2, 5\)"),
    "tgt_key_padding_mask_3d": (lambda m: m(SRC, TGT, tgt_key_padding_mask=torch.zeros(N, 1, T, dtype=BOOL)),
                                r"^tgt_key_padding_mask.*shape"),
    "memory_key_padding_mask_target_length": (
        lambda m: m(SRC, TGT, memory_key_padding_mask=torch.zeros(N, T, dtype=BOOL)),
        r"^memory_key_padding_mask.*\(2, 5\)"),
    "memory_key_padding_mask_uint8": (
        lambda m: m(SRC, TGT, memory_key_padding_mask=torch.zeros(N, S, dtype=torch.uint8)),
        r"^memory_key_padding_mask.*bool.*uint8"),
    "src_mask_float16_for_float64": (lambda m: m(SRC, TGT, src_mask=torch.zeros(S, S, dtype=torch.float16)),
                                     r"src_mask.*dtype.*float16"),
    "input_dtype_differs_from_parameters": (lambda m: m(SRC.float(), TGT.float()), r"dtype.*float32.*float64"),
    "src_is_causal_without_mask": (lambda m: m(SRC, TGT, src_is_causal=True), r"^src_is_causal=True needs src_mask"),
    "tgt_is_causal_without_mask": (lambda m: m(SRC, TGT, tgt_is_causal=True), r"^tgt_is_causal=True needs tgt_mask"),
    "memory_is_causal_without_mask": (lambda m: m(SRC, TGT, memory_is_causal=True),
                                      r"^memory_is_causal=True needs memory_mask"),
}


@pytest.mark.parametrize("name", sorted(BAD_CALLS))
def test_handmade_rejects_bad_forward_input_that_torch_rejects(name):
    call, names_it = BAD_CALLS[name]
    reference, twin = models()
    with warnings.catch_warnings(), fastpath(False):
        warnings.simplefilter("ignore")
        with pytest.raises(Exception):  # noqa: B017 - the built-in raises whatever it raises
            call(reference)
        with pytest.raises((ValueError, TypeError)) as info:
            call(twin)
    assert re.search(names_it, str(info.value)), f"handmade's message does not name the problem: {info.value}"


BAD_CONSTRUCTIONS: dict[str, tuple[dict, str]] = {
    "nhead_does_not_divide_d_model": ({"d_model": 8, "nhead": 3},
                                      r"^d_model must be divisible by nhead, got d_model=8 and nhead=3$"),
    "unknown_activation": ({"activation": "tanh"}, r"activation.*'tanh'"),
    "zero_d_model": ({"d_model": 0, "nhead": 1}, r"^d_model and nhead must be greater than 0, got d_model=0"),
    "zero_nhead": ({"nhead": 0}, r"^d_model and nhead must be greater than 0, got d_model=8 and nhead=0$"),
    "dropout_above_one": ({"dropout": 1.5}, r"dropout.*1\.5"),
    "negative_dropout": ({"dropout": -0.1}, r"dropout.*-0\.1"),
}


@pytest.mark.parametrize("name", sorted(BAD_CONSTRUCTIONS))
def test_handmade_rejects_bad_constructor_arguments_that_torch_rejects(name):
    changes, names_it = BAD_CONSTRUCTIONS[name]
    kwargs = {**KW, **changes}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(Exception):  # noqa: B017
            nn.Transformer(**kwargs)
    with pytest.raises((ValueError, TypeError)) as info:
        handmade.Transformer(**kwargs)
    assert re.search(names_it, str(info.value)), f"handmade's message does not name the problem: {info.value}"


@examples(1.0)
@given(embed_dim=st.integers(2, 64), num_heads=st.integers(2, 16))
def test_handmade_rejects_every_num_heads_that_does_not_divide_embed_dim(embed_dim, num_heads):
    """Exactly the (embed_dim, num_heads) the built-in rejects; the message names both, as the caller does.

    MultiheadAttention takes embed_dim and num_heads, the layers d_model and nhead: each names its own.
    """
    try:
        nn.MultiheadAttention(embed_dim, num_heads)
        torch_rejects = False
    except Exception:
        torch_rejects = True
    messages = []
    for build, names in ((lambda: handmade.MultiheadAttention(embed_dim, num_heads), ("embed_dim", "num_heads")),
                         (lambda: handmade.TransformerEncoderLayer(embed_dim, num_heads), ("d_model", "nhead"))):
        try:
            build()
        except ValueError as exc:
            messages.append((str(exc), names))
    assert torch_rejects == bool(messages), f"embed_dim={embed_dim} num_heads={num_heads}: torch {torch_rejects}"
    assert torch_rejects == (len(messages) == 2), messages
    for message, (e, h) in messages:
        assert message == f"{e} must be divisible by {h}, got {e}={embed_dim} and {h}={num_heads}", message


def test_multihead_attention_names_embed_dim_and_num_heads():
    with pytest.raises(ValueError) as info:
        handmade.MultiheadAttention(embed_dim=5, num_heads=2)
    assert str(info.value) == "embed_dim must be divisible by num_heads, got embed_dim=5 and num_heads=2"


@pytest.mark.parametrize("name", ["TransformerEncoderLayer", "TransformerDecoderLayer", "Transformer"])
def test_layers_and_transformer_name_d_model_and_nhead(name):
    with pytest.raises(ValueError) as info:
        getattr(handmade, name)(d_model=5, nhead=2)
    assert str(info.value) == "d_model must be divisible by nhead, got d_model=5 and nhead=2"


LAYER_KW = {"d_model": D, "nhead": H, "dim_feedforward": 16, "dtype": F64}
ENCODER_MASKS = {"src_mask": (S, S), "src_key_padding_mask": (N, S)}
DECODER_MASKS = {"tgt_mask": (T, T), "memory_mask": (T, S), "tgt_key_padding_mask": (N, T),
                 "memory_key_padding_mask": (N, S)}
DECODER_HINTS = {"tgt_is_causal": "tgt_mask", "memory_is_causal": "memory_mask"}


def entry_points() -> dict[str, tuple[Callable[..., object], dict[str, tuple[int, ...]], dict[str, str]]]:
    """Public module -> (call with mask keywords, its mask arguments and valid shapes, its hints -> their masks)."""
    mha = handmade.MultiheadAttention(D, H, dtype=F64)
    enc, dec = handmade.TransformerEncoderLayer(**LAYER_KW), handmade.TransformerDecoderLayer(**LAYER_KW)
    model = handmade.Transformer(**KW, dtype=F64)
    return {
        "MultiheadAttention": (lambda **kw: mha(TGT, SRC, SRC, **kw),
                               {"attn_mask": (T, S), "key_padding_mask": (N, S)}, {"is_causal": "attn_mask"}),
        "TransformerEncoderLayer": (lambda **kw: enc(SRC, **kw), ENCODER_MASKS, {"is_causal": "src_mask"}),
        "TransformerEncoder": (lambda **kw: handmade.TransformerEncoder(enc, 2)(SRC, **kw),
                               {"mask": (S, S), "src_key_padding_mask": (N, S)}, {"is_causal": "mask"}),
        "TransformerDecoderLayer": (lambda **kw: dec(TGT, SRC, **kw), DECODER_MASKS, DECODER_HINTS),
        "TransformerDecoder": (lambda **kw: handmade.TransformerDecoder(dec, 2)(TGT, SRC, **kw), DECODER_MASKS,
                               DECODER_HINTS),
        "Transformer": (lambda **kw: model(SRC, TGT, **kw), {**ENCODER_MASKS, **DECODER_MASKS},
                        {"src_is_causal": "src_mask", **DECODER_HINTS}),
    }


MASK_CASES = [(entry, arg) for entry, (_, masks, _) in entry_points().items() for arg in masks]
HINT_CASES = [(entry, hint) for entry, (_, _, hints) in entry_points().items() for hint in hints]


@pytest.mark.parametrize(("entry", "argument"), MASK_CASES)
def test_a_bad_mask_is_named_as_the_caller_named_it(entry, argument):
    """An int mask and a mask of a wrong shape: the message starts with the argument the caller passed."""
    call, masks, _ = entry_points()[entry]
    shape = masks[argument]
    int_message = rf"^{argument} must be a bool or floating point tensor, got dtype torch.int64$"
    with pytest.raises(TypeError, match=int_message):
        call(**{argument: torch.zeros(shape, dtype=torch.int64)})
    with pytest.raises(ValueError, match=rf"^{argument} must have shape .*, got \({shape[1]}, {shape[0]}, 1\)$"):
        call(**{argument: torch.zeros(shape[1], shape[0], 1, dtype=BOOL)})


@pytest.mark.parametrize(("entry", "hint"), HINT_CASES)
def test_a_causal_hint_without_its_mask_is_named_as_the_caller_named_it(entry, hint):
    call, _, hints = entry_points()[entry]
    with pytest.raises(ValueError, match=rf"^{hint}=True needs {hints[hint]}: "):
        call(**{hint: True})


def test_mixed_bool_and_float_masks_warn_with_the_callers_names():
    call, _, _ = entry_points()["TransformerDecoderLayer"]
    kpm, mask = torch.zeros(N, T, dtype=BOOL), torch.zeros(T, T, dtype=F64)
    with pytest.warns(UserWarning, match="^Support for mismatched tgt_key_padding_mask and tgt_mask is deprecated"):
        call(tgt_mask=mask, tgt_key_padding_mask=kpm)


MASK_ARGS = {  # argument -> (valid shape, the length of its query side, of its key side)
    "src_mask": ((S, S), S, S),
    "tgt_mask": ((T, T), T, T),
    "memory_mask": ((T, S), T, S),
    "src_key_padding_mask": ((N, S), None, S),
    "tgt_key_padding_mask": ((N, T), None, T),
    "memory_key_padding_mask": ((N, S), None, S),
}


@st.composite
def mask_shapes(draw: st.DrawFn) -> tuple[str, tuple[int, ...]]:
    """A mask argument and a shape near its valid ones: right, transposed, per head, a dim off by one, extra dims."""
    name = draw(st.sampled_from(sorted(MASK_ARGS)), label="argument")
    valid, _, _ = MASK_ARGS[name]
    near = sorted({*valid, 1, N, N * H, S, T, S + 1})
    rank = draw(st.integers(1, 4), label="rank")
    shape = tuple(draw(st.lists(st.sampled_from(near), min_size=rank, max_size=rank), label="shape"))
    shape = draw(st.sampled_from([shape, valid, valid if "key_padding" in name else (N * H, *valid)]),
                 label="choice")
    return name, shape


def outcome(call: Callable[[], Tensor]) -> tuple[Tensor | None, BaseException | None]:
    try:
        return call(), None
    except Exception as exc:
        return None, exc


@pytest.mark.slow
@examples(2.0)
@given(mask=mask_shapes(), kind=st.sampled_from(["bool", "float64", "float32", "float16", "int64", "uint8"]),
       seed=seeds())
def test_handmade_accepts_exactly_the_masks_torch_accepts(mask, kind, seed):
    """Mask shapes and dtypes: both reject (handmade naming the mask), or both accept and agree."""
    name, shape = mask
    reference, twin = models()
    g = torch.Generator().manual_seed(seed)
    blocked = torch.rand(shape, generator=g) < 0.3
    if len(shape) >= 1:
        blocked[..., 0] = False  # never a fully masked row: that is the path policy's business
    value = blocked if kind == "bool" else (-2.0 * blocked).to(getattr(torch, kind))
    with warnings.catch_warnings(), fastpath(False):
        warnings.simplefilter("ignore")
        expected, torch_error = outcome(lambda: reference(SRC, TGT, **{name: value}))
        got, handmade_error = outcome(lambda: twin(SRC, TGT, **{name: value}))
    context = Context("errors", F64, "cpu", f"{name} of shape {shape} and dtype {value.dtype}")
    if torch_error is not None:
        assert handmade_error is not None, f"torch rejects ({torch_error}) but handmade accepts: {context}"
        assert isinstance(handmade_error, (ValueError, TypeError)), f"{type(handmade_error)}: {handmade_error}"
        assert "mask" in str(handmade_error), f"the message does not name the mask: {handmade_error}"
    else:
        assert handmade_error is None, f"torch accepts but handmade raises {handmade_error!r}: {context}"
        assert_parity([judge("output", got, expected, None)], context)


DIFFERENCES: dict[str, Callable[[Config], dict]] = {  # changes that change the parameters (others are not weights)
    "d_model": lambda c: {"d_model": 2 * c.d_model},
    "dim_feedforward": lambda c: {"dim_feedforward": c.dim_feedforward + 1},
    "num_encoder_layers": lambda c: {"num_encoder_layers": c.num_encoder_layers + 1},
    "num_decoder_layers": lambda c: {"num_decoder_layers": c.num_decoder_layers + 1},
    "bias": lambda c: {"bias": not c.bias},
}


@examples(1.0)
@given(config=configs(max_layers=2), difference=st.sampled_from(sorted(DIFFERENCES)))
def test_copying_weights_between_differently_configured_models_fails_clearly(config, difference):
    """torch's load_state_dict refuses; so does the weight map, naming a tensor and what is wrong with it."""
    other = Config(**{**config.kwargs(), **DIFFERENCES[difference](config)})
    source = randomize_(build_torch("transformer", config), torch.Generator().manual_seed(0))
    with pytest.raises(RuntimeError):
        build_torch("transformer", other).load_state_dict(source.state_dict())
    destination = handmade.Transformer(**other.kwargs(), dtype=F64)
    with pytest.raises(WeightMapError) as info:
        copy_torch_to_handmade(source, destination)
    assert re.search(r"(torch|handmade) [\w.]+", str(info.value)), str(info.value)


def test_layer_norm_names_the_shape_it_expected_and_the_shape_it_got():
    with pytest.raises(RuntimeError):
        nn.LayerNorm(6)(torch.zeros(2, 5))
    with pytest.raises(ValueError) as info:
        handmade.LayerNorm(6)(torch.zeros(2, 5))
    assert str(info.value) == "input's last dims must be normalized_shape=(6,), got shape (2, 5)"


def test_a_value_with_the_wrong_features_is_named_value():
    attn = handmade.MultiheadAttention(4, 2, kdim=3, vdim=5)
    q, k = torch.zeros(2, 1, 4), torch.zeros(2, 1, 3)
    with pytest.raises(ValueError) as info:
        attn(q, k, torch.zeros(2, 1, 6))
    assert str(info.value) == "value must have 5 features (last dim), got shape (2, 1, 6)"


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("mask_dtype", [F64, torch.float32, torch.float16])
def test_a_causal_hint_is_trusted_over_its_masks_values_and_dtype_as_torch_trusts_it(mask_dtype, norm_first):
    """The three causal hints: torch takes their masks to be causal (top-left), whatever they hold and dtype."""
    reference, twin = build_pair("transformer", Config(**KW, norm_first=norm_first), seed=0, dtype=F64)
    kwargs = {"src_mask": torch.zeros(S, S, dtype=mask_dtype), "tgt_mask": torch.zeros(T, T, dtype=mask_dtype),
              "memory_mask": torch.zeros(T, S, dtype=mask_dtype),
              "src_is_causal": True, "tgt_is_causal": True, "memory_is_causal": True}
    with fastpath(False):
        expected = reference(SRC, TGT, **kwargs)
        unmasked = reference(SRC, TGT)
    got = twin(SRC, TGT, **kwargs)
    assert not judge("output", unmasked, expected).passed, "the hint should change the result"
    verdict = judge("output", got, expected)
    assert verdict.passed, verdict


def test_the_decoder_layer_names_a_tgt_of_the_wrong_rank_tgt():
    layer = handmade.TransformerDecoderLayer(**LAYER_KW)
    with pytest.raises(ValueError) as info:
        layer(TGT[None], SRC)
    expected = f"tgt must be 2-D (L, E) unbatched or 3-D batched, got a 4-D tensor of shape {(1, T, N, D)}"
    assert str(info.value) == expected
