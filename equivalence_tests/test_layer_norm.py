"""handmade.LayerNorm equals nn.LayerNorm: biased variance, eps inside the root, affine options, gradients."""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given
from torch import nn

import handmade
from reference.assertions import Context, assert_matches, compare_pair, examples, skip_unless_dtype_runs
from reference.strategies import LayerNormCase, dtypes, layer_norm_cases
from reference.build import randomize_
from reference.weights import copy_torch_to_handmade

pytestmark = pytest.mark.handmade


@examples(1.5)
@given(case=layer_norm_cases(), dtype=dtypes())
@example(case=LayerNormCase(), dtype=torch.float64)
@example(case=LayerNormCase(normalized_shape=(2,), lead_shape=(), eps=1e-6), dtype=torch.float64)
@example(case=LayerNormCase(normalized_shape=(3, 4), lead_shape=(2, 2), bias=False), dtype=torch.float64)
@example(case=LayerNormCase(normalized_shape=(1,), elementwise_affine=False), dtype=torch.float64)
@example(case=LayerNormCase(normalized_shape=(16,), offset=-100.0, eps=0.5), dtype=torch.float32)
def test_layer_norm_matches_torch_layer_norm(device, case, dtype):
    """Multi-dimensional normalized_shape, every eps, with and without weight and bias, inputs far from 0."""
    skip_unless_dtype_runs(dtype, device)
    options = {"eps": case.eps, "elementwise_affine": case.elementwise_affine, "bias": case.bias,
               "dtype": torch.float64}
    reference = randomize_(nn.LayerNorm(case.normalized_shape, **options), torch.Generator().manual_seed(case.seed))
    twin = handmade.LayerNorm(case.normalized_shape, **options)
    copy_torch_to_handmade(reference, twin)
    g = torch.Generator().manual_seed(case.seed + 7)
    x = case.offset + torch.randn(*case.lead_shape, *case.normalized_shape, generator=g, dtype=torch.float64)
    triples = compare_pair(reference, twin, lambda m, x: m(x), {"x": x.to(dtype)}, dtype=dtype, device=device,
                           seed=case.seed)
    assert_matches(triples, Context("layer_norm", dtype, device, case.describe()))
