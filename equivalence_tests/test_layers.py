"""Each handmade layer equals its built-in: TransformerEncoderLayer and TransformerDecoderLayer, with every mask."""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given
from torch import Tensor, nn

from reference.assertions import (
    Context,
    assert_matches,
    compare_pair,
    examples,
    low_precision_grads_comparable,
    skip_unless_dtype_runs,
)
from reference.strategies import cases, configs, dtypes, is_smooth
from reference.build import Config, build_pair
from reference.cases import Case

pytestmark = pytest.mark.handmade

layer_configs = configs(max_layers=1)


def call_encoder_layer(layer: nn.Module, src: Tensor, **kwargs: object) -> Tensor:
    return layer(src, **kwargs)


def call_decoder_layer(layer: nn.Module, tgt: Tensor, memory: Tensor, **kwargs: object) -> Tensor:
    return layer(tgt, memory, **kwargs)


def check_layer(component: str, case: Case, dtype, device: str) -> None:
    """Build the layer pair from the case's seed, run both on the case's tensors, assert they match."""
    skip_unless_dtype_runs(dtype, device)
    reference, twin = build_pair(component, case.config, case.seed, weight_scale=case.weight_scale)
    src, tgt, kw = case.tensors(dtype)
    if component == "encoder_layer":
        call, inputs = call_encoder_layer, {"src": src}
        kwargs = {"src_mask": kw["src_mask"], "src_key_padding_mask": kw["src_key_padding_mask"],
                  "is_causal": bool(kw["src_is_causal"])}
    else:
        call, inputs = call_decoder_layer, {"tgt": tgt, "memory": src}
        kwargs = {name: kw[name] for name in ("tgt_mask", "memory_mask", "tgt_key_padding_mask",
                                              "memory_key_padding_mask", "memory_is_causal")}
        kwargs["tgt_is_causal"] = bool(kw["tgt_is_causal"])
    grads = low_precision_grads_comparable(dtype, is_smooth(case.config))
    triples = compare_pair(reference, twin, call, inputs, kwargs, dtype=dtype, device=device, grads=grads,
                           seed=case.seed)
    assert_matches(triples, Context(component, dtype, device, case.describe()))


@examples(1.5)
@given(case=cases(config=layer_configs), dtype=dtypes())
@example(case=Case(Config(), src_mask="causal_bool", src_is_causal=True, src_key_padding_mask="bool"),
         dtype=torch.float64)
@example(case=Case(Config(d_model=9, nhead=3, norm_first=True, bias=False, activation="gelu"), batch=None,
                   src_len=1, src_mask="additive", src_key_padding_mask="float_finite"),
         dtype=torch.float64)
def test_encoder_layer_matches_torch_with_any_masks_and_options(device, case, dtype):
    check_layer("encoder_layer", case, dtype, device)


@examples(1.5)
@given(case=cases(config=layer_configs), dtype=dtypes())
@example(case=Case(Config(), tgt_mask="causal_float", tgt_is_causal=True, tgt_key_padding_mask="bool",
                   memory_key_padding_mask="bool"), dtype=torch.float64)
@example(case=Case(Config(d_model=6, nhead=3, batch_first=True, norm_first=True), batch=3, src_len=7, tgt_len=2,
                   memory_mask="per_head_bool", memory_key_padding_mask="float_inf", tgt_mask="per_head_additive"),
         dtype=torch.float64)
def test_decoder_layer_matches_torch_with_padding_masks_and_options(device, case, dtype):
    check_layer("decoder_layer", case, dtype, device)
