"""handmade.Transformer's custom_encoder / custom_decoder options equal nn.Transformer's, given each side's stack."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import handmade
from reference.builtin.config import randomize_
from reference.builtin.weights import copy_torch_to_handmade
from reference.cases.strategies import cases, dtypes
from reference.levels.pairs import build_pair
from reference.verdict.assertions import Context, assert_parity, examples
from reference.verdict.engine import compare_pair


@examples(0.25)
@given(case=cases(masks=False), dtype=dtypes(low_precision=False),
       custom=st.sampled_from(["encoder", "decoder", "both"]))
def test_transformer_with_custom_encoder_or_decoder_matches_torch(device, case, dtype, custom):
    """Each custom stack holds its own random weights; the rest of the model is built by the Transformer."""
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
    verdicts = compare_pair(reference, twin, lambda m, src, tgt: m(src, tgt), {"src": src, "tgt": tgt},
                            dtype=dtype, device=device, seed=case.seed)
    assert_parity(verdicts, Context("transformer (custom stacks)", dtype, device, f"{case.describe()} {custom}"))
