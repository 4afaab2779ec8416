"""The path policy: where nn.Transformer's answer depends on the path it takes, and what handmade does.

handmade has one path, the built-in's slow path (eval, fast path off), which the core properties compare
against. These ``edge`` tests pin down the rest (``-m "not edge"`` runs only the core properties):

- Fast path and nested tensors (eval + no_grad + batch_first, ...): equal to handmade at every position
  whose query is not padded; at padded positions the nested-tensor path writes 0 (then the final norm's
  bias), while handmade, like the slow path, computes ordinary values there. nn.Transformer agrees with
  handmade everywhere once memory_key_padding_mask = src_key_padding_mask.
- Fully masked query rows (every key blocked): inside the layers both the slow path and handmade give an
  attention output of 0 (so out_proj.bias); handmade's bare attention does the same, where the bare
  nn.MultiheadAttention with need_weights=True returns NaN (pytorch#41508, #160064) and the layer fast path
  returns NaN as well.
- A causal hint that contradicts the mask is undefined by the docs; handmade does what the slow path does:
  without a key padding mask the hint wins (a causal mask replaces the given one), with one the mask wins.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn

import handmade
from reference.builtin.config import Config, randomize_
from reference.builtin.weights import copy_torch_to_handmade
from reference.cases.case import Case
from reference.cases.strategies import configs, seeds
from reference.inference.prepare import fastpath, whole_model
from reference.levels.pairs import build_pair
from reference.targets.contract import load_target
from reference.verdict.assertions import Context, assert_parity, compare_pair, examples
from reference.verdict.tolerance import judge

pytestmark = pytest.mark.edge
F64 = torch.float64

fast_path_configs = (  # what the fast path needs: batch-first, even heads, biases, post-norm, relu or gelu
    configs(activations=("relu", "gelu"), batch_first=True, max_layers=2)
    .map(lambda c: dataclasses.replace(c, bias=True, norm_first=False))
    .filter(lambda c: c.nhead % 2 == 0)
)


@st.composite
def right_padded(draw: st.DrawFn, *, batch: int, length: int) -> Tensor:
    """A bool key padding mask (N, S) with padding at the end only (what the nested path needs)."""
    lengths = draw(st.lists(st.integers(1, length), min_size=batch, max_size=batch), label="lengths")
    return torch.arange(length).unsqueeze(0) >= torch.tensor(lengths).unsqueeze(1)


@examples(1.0)
@given(config=fast_path_configs, batch=st.integers(1, 3), length=st.integers(1, 8), seed=seeds(), data=st.data())
def test_nested_tensor_path_equals_handmade_except_at_padded_positions(config, batch, length, seed, data):
    """nn.TransformerEncoder's nested-tensor path: padded rows become exactly 0; every other row equals handmade."""
    kpm = data.draw(right_padded(batch=batch, length=length), label="src_key_padding_mask")
    reference, twin = build_pair("encoder", config, seed)
    reference.norm = twin.norm = None  # look at the rows before the final norm
    layer = copy.deepcopy(reference.layers[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nested = nn.TransformerEncoder(layer, config.num_encoder_layers, enable_nested_tensor=True).eval()
    nested.load_state_dict(reference.state_dict())
    x = torch.randn(batch, length, config.d_model, generator=torch.Generator().manual_seed(seed), dtype=F64)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with fastpath(True):
            fast = nested(x, src_key_padding_mask=kpm)
        with fastpath(False):
            slow = reference(x, src_key_padding_mask=kpm)
        ours = twin(x, src_key_padding_mask=kpm)
    context = Context("encoder (nested path)", F64, "cpu", f"{config} N={batch} S={length} kpm={kpm.tolist()}")
    keep = ~kpm
    assert_parity([judge("unpadded rows", ours[keep], fast[keep], None)], context)
    assert torch.equal(fast[kpm], torch.zeros_like(fast[kpm])), f"the nested path no longer writes 0: {context}"
    assert_parity([judge("padded rows (slow path)", ours[kpm], slow[kpm], None)], context)


@examples(0.5)
@given(config=fast_path_configs, batch=st.integers(1, 3), src_len=st.integers(1, 8), tgt_len=st.integers(1, 8),
       seed=seeds(), data=st.data())
def test_transformer_fast_path_equals_handmade_when_memory_padding_mask_is_the_source_one(
        config, batch, src_len, tgt_len, seed, data):
    """With memory_key_padding_mask = src_key_padding_mask nobody reads the padded memory rows: all equal."""
    kpm = data.draw(right_padded(batch=batch, length=src_len), label="src_key_padding_mask")
    reference, twin = build_pair("transformer", config, seed)
    g = torch.Generator().manual_seed(seed)
    src = torch.randn(batch, src_len, config.d_model, generator=g, dtype=F64)
    tgt = torch.randn(batch, tgt_len, config.d_model, generator=g, dtype=F64)
    causal = torch.ones(tgt_len, tgt_len, dtype=torch.bool).triu(1)
    kwargs = {"tgt_mask": causal, "src_key_padding_mask": kpm, "memory_key_padding_mask": kpm}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference.encoder.use_nested_tensor = True  # nn.Transformer's encoder allows the nested path
        with fastpath(True):
            fast = reference(src, tgt, **kwargs)
        ours = twin(src, tgt, **kwargs)
    context = Context("transformer (fast path)", F64, "cpu", f"{config} N={batch} S={src_len} T={tgt_len}")
    assert_parity([judge("output", ours, fast, None)], context)


def _all_padded_first(n: int, length: int, left: int = 0) -> Tensor:
    mask = torch.zeros(n, length, dtype=torch.bool)
    mask[0] = True  # batch item 0: every key padded
    mask[1, :left] = True  # batch item 1: left padding (with a causal mask, its first rows see nothing)
    return mask


@pytest.mark.slow
@examples(0.5)
@given(config=configs(max_layers=2), seed=seeds())
def test_fully_masked_rows_give_zero_attention_in_handmade_layers_as_in_torch(config, seed):
    """Encoder and decoder layers with every key of a sequence padded, and causal + left padding: finite, equal."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randn(5, 2, config.d_model, generator=g, dtype=F64)
    tgt = torch.randn(4, 2, config.d_model, generator=g, dtype=F64)
    if config.batch_first:
        src, tgt = src.transpose(0, 1).contiguous(), tgt.transpose(0, 1).contiguous()
    causal = torch.ones(4, 4, dtype=torch.bool).triu(1)
    for component, call, inputs, kwargs in (
        ("encoder_layer", lambda m, src, **kw: m(src, **kw), {"src": src},
         {"src_key_padding_mask": _all_padded_first(2, 5)}),
        ("decoder_layer", lambda m, tgt, memory, **kw: m(tgt, memory, **kw), {"tgt": tgt, "memory": src},
         {"tgt_mask": causal, "tgt_key_padding_mask": _all_padded_first(2, 4, left=2),
          "memory_key_padding_mask": _all_padded_first(2, 5)}),
    ):
        reference, twin = build_pair(component, config, seed)
        with fastpath(False):
            out = call(reference, **inputs, **kwargs)
        assert torch.isfinite(out).all(), f"torch's slow path is no longer finite here: {component}"
        verdicts = compare_pair(reference, twin, call, inputs, kwargs, dtype=F64, device="cpu", seed=seed)
        assert_parity(verdicts, Context(component, F64, "cpu", f"{config} fully masked rows"))


@pytest.mark.slow
@examples(0.5)
@given(config=configs(max_layers=2), seed=seeds())
def test_transformer_with_a_fully_padded_sequence_matches_torch(config, seed):
    """Whole model: one batch item's source fully padded (memory too), the other's target left-padded."""
    case = Case(config, batch=2, src_len=5, tgt_len=4, tgt_mask="causal_bool", seed=seed)
    src, tgt, kw = case.tensors(F64)
    masks = {"src_key_padding_mask": _all_padded_first(2, 5), "memory_key_padding_mask": _all_padded_first(2, 5),
             "tgt_key_padding_mask": _all_padded_first(2, 4, left=2), "tgt_mask": kw["tgt_mask"]}
    reference, twin = build_pair("transformer", config, seed)
    call = lambda m, src, tgt, **k: m(src, tgt, **k)  # noqa: E731
    verdicts = compare_pair(reference, twin, call, {"src": src, "tgt": tgt}, masks, dtype=F64, device="cpu",
                           seed=seed)
    assert_parity(verdicts, Context("transformer", F64, "cpu", f"{config} fully padded sequence"))


@pytest.mark.parametrize("batch_first", [False, True])
def test_bare_attention_gives_zero_for_fully_masked_rows_where_torch_gives_nan(batch_first):
    """need_weights=True: torch's rows are NaN, handmade's output is out_proj.bias and its weights 0."""
    torch_mha = randomize_(nn.MultiheadAttention(8, 2, batch_first=batch_first, dtype=F64).eval(),
                           torch.Generator().manual_seed(0))
    ours = handmade.MultiheadAttention(8, 2, batch_first=batch_first, dtype=F64).eval()
    copy_torch_to_handmade(torch_mha, ours)
    x = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(1), dtype=F64)
    x = x if batch_first else x.transpose(0, 1)
    kpm = _all_padded_first(2, 5)
    t_out, t_w = torch_mha(x, x, x, key_padding_mask=kpm, need_weights=True)
    o_out, o_w = ours(x, x, x, key_padding_mask=kpm, need_weights=True)
    item = (lambda t: t[0]) if batch_first else (lambda t: t[:, 0])
    other = (lambda t: t[1]) if batch_first else (lambda t: t[:, 1])
    assert torch.isnan(item(t_out)).all() and torch.isnan(t_w[0]).all(), "torch no longer gives NaN here"
    assert torch.equal(item(o_out), torch_mha.out_proj.bias.detach().expand_as(item(o_out)))
    assert torch.equal(o_w[0], torch.zeros_like(o_w[0]))
    context = Context("attention", F64, "cpu", "fully padded batch item 0, need_weights=True")
    assert_parity([judge("output (other item)", other(o_out), other(t_out), None),
                    judge("weights (other item)", o_w[1], t_w[1], None)], context)
    t_out_sdpa, _ = torch_mha(x, x, x, key_padding_mask=kpm, need_weights=False)
    o_out_sdpa, _ = ours(x, x, x, key_padding_mask=kpm, need_weights=False)
    assert_parity([judge("output, need_weights=False", o_out_sdpa, t_out_sdpa, None)], context)


def test_layer_fast_path_gives_nan_for_fully_masked_rows_which_handmade_keeps_finite():
    """Why fully masked rows are excluded from every fast-path comparison."""
    cfg = Config(d_model=8, nhead=2, batch_first=True)
    reference, twin = build_pair("encoder_layer", cfg, seed=0)
    x = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(1), dtype=F64)
    kpm = _all_padded_first(2, 5)
    with torch.no_grad(), fastpath(True):
        fast = reference(x, src_key_padding_mask=kpm)
    ours = twin(x, src_key_padding_mask=kpm)
    assert torch.isnan(fast[0]).all(), "the layer fast path no longer gives NaN for a fully padded sequence"
    assert torch.isfinite(ours).all()


@pytest.mark.slow
@examples(0.75)
@given(config=configs(max_layers=2), seed=seeds(), padded=st.booleans(),
       where=st.sampled_from(["src", "tgt", "memory"]))
def test_a_causal_hint_contradicting_the_mask_is_followed_as_the_slow_path_does(config, seed, padded, where):
    """Without a padding mask a True hint replaces the (non-causal) mask by a causal one; with one, the mask wins."""
    pad = "bool" if padded else "none"
    fields = {f"{where}_mask": "random_bool", f"{where}_is_causal": True}
    fields["src_key_padding_mask" if where == "src" else f"{where}_key_padding_mask"] = pad
    case = Case(config, batch=2, src_len=5, tgt_len=5 if where != "memory" else 4, seed=seed, **fields)
    verdicts = whole_model(load_target(), case, "cpu", F64, grads=False)
    assert_parity(verdicts, Context("transformer", F64, "cpu", case.describe() + " (contradicting hint)"))
