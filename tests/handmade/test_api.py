"""The drop-in promise at the level of the API: signatures, mask helpers, factory arguments, verdict text.

handmade's modules take the built-in's constructor and forward arguments (names, order, kinds, defaults), so
code written for ``nn.Transformer`` runs unchanged; the mask helpers build what torch builds.
"""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import handmade
from handmade.embeddings import PositionalEncoding, sinusoidal_table
from handmade.masks import generate_square_subsequent_mask, padding_mask, subsequent_mask
from handmade.seq2seq import Seq2SeqTransformer
from reference.builtin.weights import copy_plan
from reference.verdict.tolerance import judge

PAIRS = ("Transformer", "TransformerEncoderLayer", "TransformerDecoderLayer", "TransformerEncoder",
         "TransformerDecoder", "MultiheadAttention", "LayerNorm")


def _params(fn) -> list[tuple[str, object, object]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


def _same_default(name: str, ours: object, theirs: object) -> bool:
    # torch's default activation is the function F.relu; handmade's is the string "relu" torch also accepts
    return ours == theirs or (name == "activation" and ours == "relu" and theirs is F.relu)


@pytest.mark.parametrize("name", PAIRS)
@pytest.mark.parametrize("method", ["__init__", "forward"])
def test_signatures_match_the_builtin(name: str, method: str):
    ours, theirs = _params(getattr(getattr(handmade, name), method)), _params(getattr(getattr(nn, name), method))
    assert [(n, k) for n, k, _ in ours] == [(n, k) for n, k, _ in theirs], f"{name}.{method}: names/order/kinds"
    for (n, _, d_ours), (_, _, d_theirs) in zip(ours, theirs, strict=True):
        assert _same_default(n, d_ours, d_theirs), f"{name}.{method}({n}=...): default {d_ours!r}, torch {d_theirs!r}"


@pytest.mark.parametrize("dtype", [None, torch.float64, torch.float16])
def test_generate_square_subsequent_mask_matches_torch(dtype):
    for sz in range(6):
        ours = handmade.Transformer.generate_square_subsequent_mask(sz, dtype=dtype)
        theirs = nn.Transformer.generate_square_subsequent_mask(sz, dtype=dtype)
        assert ours.dtype == theirs.dtype and torch.equal(ours, theirs), (sz, dtype)
        assert torch.equal(generate_square_subsequent_mask(sz, dtype=dtype), theirs)


def test_bool_mask_helpers_block_the_future_and_the_padding():
    for size in range(6):
        expected = nn.Transformer.generate_square_subsequent_mask(size).isinf()
        assert torch.equal(subsequent_mask(size), expected), size
    lengths = torch.tensor([3, 1, 4, 0])
    mask = padding_mask(lengths, max_len=5)
    expected = torch.tensor([[j >= n for j in range(5)] for n in lengths.tolist()])
    assert mask.dtype == torch.bool and torch.equal(mask, expected)
    assert padding_mask(lengths).shape == (4, 4)  # max_len defaults to the longest sequence
    with pytest.raises(ValueError, match="lengths must be 1-D"):
        padding_mask(lengths[None])
    with pytest.raises(ValueError, match="non-negative"):
        subsequent_mask(-1)


def test_seq2seq_defaults_follow_nn_transformer_and_factory_arguments_reach_every_parameter():
    ours = {p.name: p.default for p in inspect.signature(Seq2SeqTransformer.__init__).parameters.values()}
    theirs = {p.name: p.default for p in inspect.signature(nn.Transformer.__init__).parameters.values()}
    for name in set(ours) & set(theirs) - {"self"}:
        assert _same_default(name, ours[name], theirs[name]), name
    assert ours["max_len"] == 5000  # the course's (and the paper's code's) table length
    model = Seq2SeqTransformer(7, 9, d_model=8, nhead=2, num_encoder_layers=1, num_decoder_layers=1,
                               dim_feedforward=16, dtype=torch.float64)
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    assert {b.dtype for b in model.buffers() if b.is_floating_point()} <= {torch.float64}


def test_a_verdict_prints_its_numbers():
    oracle = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    text = str(judge("grad w", torch.tensor([1.0, 2.5, 3.0], dtype=torch.float64), oracle))
    assert text.startswith("[FAIL] grad w (float64): max abs err 0.5 (bound ")
    assert "PyTorch's own err 0" in text and "worst element (1,): candidate 2.5 vs oracle 2" in text
    assert str(judge("out", oracle.clone(), oracle)).startswith("[ok] out (float64): max abs err 0 ")


def test_default_arguments_build_the_builtins_default_model():
    """Built on the meta device (no memory): every default shape, rate and eps equals nn.Transformer()'s."""
    theirs = nn.Transformer(device="meta")
    for ours in (handmade.Transformer(device="meta"), Seq2SeqTransformer(7, 9, device="meta").transformer):
        copy_plan(theirs, ours)  # strict: every parameter paired once with the same shape
        for name, mod in ours.named_modules():
            if isinstance(mod, (handmade.TransformerEncoderLayer, handmade.TransformerDecoderLayer)):
                assert mod.norm_first is False, name
            if isinstance(mod, nn.Dropout):
                assert mod.p == 0.1, name
            if isinstance(mod, handmade.LayerNorm):
                assert mod.eps == 1e-5, name


def test_positional_encoding_defaults_to_sequence_first_and_takes_the_factory_dtype():
    pe = PositionalEncoding(6, dropout=0.0)
    assert pe.pe.dtype == torch.get_default_dtype() and pe.pe.shape[0] == 5000
    x = torch.zeros(4, 3, 6)  # (S, N, E): sequence first, as nn.Transformer's default
    assert torch.equal(pe(x), sinusoidal_table(4, 6).unsqueeze(1).expand(4, 3, 6))
    assert PositionalEncoding(6, dtype=torch.float16).pe.dtype == torch.float16


def test_layer_norm_defaults_match_the_builtin():
    ours, theirs = handmade.LayerNorm(6), nn.LayerNorm(6)
    assert (ours.eps, ours.normalized_shape) == (theirs.eps, theirs.normalized_shape)
    assert torch.equal(ours.weight, theirs.weight) and torch.equal(ours.bias, theirs.bias)


def test_extra_key_and_value_biases_start_at_torchs_scale():
    """add_bias_kv: torch draws bias_k and bias_v with xavier_normal_, std = embed_dim ** -0.5 for (1, 1, E)."""
    torch.manual_seed(0)
    attn = handmade.MultiheadAttention(4096, 8, add_bias_kv=True)
    for name in ("bias_k", "bias_v"):
        std = float(getattr(attn, name).detach().std())
        assert abs(std / 4096**-0.5 - 1) < 0.1, (name, std)


def test_causal_masks_are_detected_as_torch_detects_them():
    from torch.nn.modules.transformer import _detect_is_causal_mask

    from handmade.transformer import detect_is_causal

    causal = nn.Transformer.generate_square_subsequent_mask(5)
    for mask in (causal, causal.double(), causal.isinf(), causal.T.contiguous(), torch.zeros(5, 5), None):
        for hint in (None, True, False):
            assert detect_is_causal(mask, hint, 5) == _detect_is_causal_mask(mask, hint, 5), (mask, hint)


def test_mixed_bool_and_float_masks_warn_as_torch_warns():
    x = torch.randn(3, 2, 4)
    kpm, mask = torch.zeros(2, 3, dtype=torch.bool), torch.zeros(3, 3)
    with pytest.warns(UserWarning, match="Support for mismatched key_padding_mask and attn_mask is deprecated"):
        handmade.MultiheadAttention(4, 2)(x, x, x, key_padding_mask=kpm, attn_mask=mask)
    hint_error = r"^is_causal=True needs attn_mask: .* \(use generate_square_subsequent_mask\)$"
    with pytest.raises(ValueError, match=hint_error):
        handmade.MultiheadAttention(4, 2)(x, x, x, is_causal=True)


@pytest.mark.parametrize("name", ["TransformerEncoderLayer", "TransformerDecoderLayer"])
def test_the_attention_blocks_take_no_causal_hint_by_default_as_torchs_do(name):
    """The private sublayer blocks are called as torch's are (test_train_mode calls _ff_block): no hint, no mask."""
    from reference.builtin.weights import copy_torch_to_handmade
    from reference.verdict.engine import fastpath

    theirs = getattr(nn, name)(8, 2, 16, dropout=0.0, dtype=torch.float64).eval()
    ours = getattr(handmade, name)(8, 2, 16, dropout=0.0, dtype=torch.float64).eval()
    copy_torch_to_handmade(theirs, ours)
    x, mem = torch.randn(5, 2, 8, dtype=torch.float64), torch.randn(4, 2, 8, dtype=torch.float64)
    blocks = {"_sa_block": (x, None, None)} | ({"_mha_block": (x, mem, None, None)} if "Decoder" in name else {})
    for block, args in blocks.items():
        with fastpath(False):
            expected = getattr(theirs, block)(*args)
        verdict = judge(block, getattr(ours, block)(*args), expected)
        assert verdict.passed, verdict


def test_factory_arguments_reach_the_extra_key_and_value_biases():
    attn = handmade.MultiheadAttention(8, 2, add_bias_kv=True, device="meta", dtype=torch.float64)
    for name, p in attn.named_parameters():
        assert (p.dtype, p.device.type) == (torch.float64, "meta"), name
