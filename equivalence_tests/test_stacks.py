"""The handmade stacks equal nn.TransformerEncoder and nn.TransformerDecoder: 1-3 distinct layers, final norm."""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st
from torch import Tensor, nn

import handmade
from reference.assertions import (
    Context,
    assert_matches,
    compare_pair,
    examples,
    low_precision_grads_comparable,
    skip_unless_dtype_runs,
)
from reference.strategies import cases, dtypes, is_smooth
from reference.build import Config, build_pair, randomize_
from reference.cases import Case
from reference.weights import copy_torch_to_handmade

pytestmark = pytest.mark.handmade


def call_encoder(stack: nn.Module, src: Tensor, **kwargs: object) -> Tensor:
    return stack(src, **kwargs)


def call_decoder(stack: nn.Module, tgt: Tensor, memory: Tensor, **kwargs: object) -> Tensor:
    return stack(tgt, memory, **kwargs)


def check_stack(component: str, case: Case, dtype: torch.dtype, device: str, final_norm: bool) -> None:
    """Build the stack pair from the case's seed (optionally without its final norm) and assert they match."""
    skip_unless_dtype_runs(dtype, device)
    reference, twin = build_pair(component, case.config, case.seed, weight_scale=case.weight_scale)
    if not final_norm:
        reference.norm = twin.norm = None
    src, tgt, kw = case.tensors(dtype)
    if component == "encoder":
        call, inputs = call_encoder, {"src": src}
        kwargs = {"mask": kw["src_mask"], "src_key_padding_mask": kw["src_key_padding_mask"],
                  "is_causal": kw["src_is_causal"]}
    else:
        call, inputs = call_decoder, {"tgt": tgt, "memory": src}
        kwargs = {name: kw[name] for name in ("tgt_mask", "memory_mask", "tgt_key_padding_mask",
                                              "memory_key_padding_mask", "tgt_is_causal", "memory_is_causal")}
    grads = low_precision_grads_comparable(dtype, is_smooth(case.config))
    triples = compare_pair(reference, twin, call, inputs, kwargs, dtype=dtype, device=device, grads=grads,
                           seed=case.seed)
    norm = "" if final_norm else " (no final norm)"
    assert_matches(triples, Context(component, dtype, device, case.describe() + norm))


@examples(1.0)
@given(case=cases(), dtype=dtypes(), final_norm=st.booleans())
@example(case=Case(Config(num_encoder_layers=3), src_mask="causal_float", src_is_causal=None,
                   src_key_padding_mask="bool"), dtype=torch.float64, final_norm=True)
@example(case=Case(Config(num_encoder_layers=2, norm_first=True), src_mask="causal_bool", src_is_causal=True),
         dtype=torch.float64, final_norm=False)
def test_encoder_stack_matches_torch_transformer_encoder(device, case, dtype, final_norm):
    """Layers hold different weights; the causal hint is detected from the mask when None, as torch does."""
    check_stack("encoder", case, dtype, device, final_norm)


@examples(1.0)
@given(case=cases(), dtype=dtypes(), final_norm=st.booleans())
@example(case=Case(Config(num_decoder_layers=3), tgt_mask="causal_float", memory_key_padding_mask="bool"),
         dtype=torch.float64, final_norm=True)
@example(case=Case(Config(num_decoder_layers=2, batch_first=True), tgt_mask="causal_bool", tgt_is_causal=True,
                   memory_mask="causal_float", memory_is_causal=True), dtype=torch.float64, final_norm=False)
def test_decoder_stack_matches_torch_transformer_decoder(device, case, dtype, final_norm):
    """Every layer attends to the same memory with the same memory masks."""
    check_stack("decoder", case, dtype, device, final_norm)


@examples(0.25)
@given(case=cases(masks=False), dtype=dtypes(low_precision=False), custom=st.sampled_from(["encoder", "decoder",
                                                                                           "both"]))
def test_transformer_with_custom_encoder_or_decoder_matches_torch(device, case, dtype, custom):
    """nn.Transformer's custom_encoder / custom_decoder options, given each side's own stack."""
    cfg = case.config
    torch_parts, handmade_parts = {}, {}
    for part in ("encoder", "decoder"):
        if custom in (part, "both"):
            torch_parts[f"custom_{part}"], handmade_parts[f"custom_{part}"] = build_pair(part, cfg, case.seed)
    reference = nn.Transformer(**cfg.kwargs(), **torch_parts, dtype=torch.float64).eval()
    twin = handmade.Transformer(**cfg.kwargs(), **handmade_parts, dtype=torch.float64).eval()
    randomize_(reference, torch.Generator().manual_seed(case.seed), case.weight_scale)
    copy_torch_to_handmade(reference, twin)
    src, tgt, _ = case.tensors(dtype)
    triples = compare_pair(reference, twin, lambda m, src, tgt: m(src, tgt), {"src": src, "tgt": tgt},
                           dtype=dtype, device=device, seed=case.seed)
    assert_matches(triples, Context("transformer (custom stacks)", dtype, device, f"{case.describe()} {custom}"))
