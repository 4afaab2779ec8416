"""handmade.MultiheadAttention equals nn.MultiheadAttention: outputs, returned weights and gradients."""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given
from torch import Tensor, nn

import handmade
from reference.assertions import Context, assert_matches, compare_pair, examples, skip_unless_dtype_runs
from reference.strategies import AttentionCase, attention_cases, dtypes
from reference.build import randomize_
from reference.cases import attn_mask, padding_mask
from reference.weights import copy_torch_to_handmade

pytestmark = pytest.mark.handmade


def attention_pair(case: AttentionCase) -> tuple[nn.Module, nn.Module]:
    """nn.MultiheadAttention with random weights (float64, eval) and its handmade twin."""
    options = {
        "dropout": case.dropout, "bias": case.bias, "add_bias_kv": case.add_bias_kv,
        "add_zero_attn": case.add_zero_attn, "kdim": case.kdim, "vdim": case.vdim, "batch_first": case.batch_first,
        "dtype": torch.float64,
    }
    reference = nn.MultiheadAttention(case.embed_dim, case.num_heads, **options).eval()
    randomize_(reference, torch.Generator().manual_seed(case.seed))
    twin = handmade.MultiheadAttention(case.embed_dim, case.num_heads, **options).eval()
    copy_torch_to_handmade(reference, twin)
    return reference, twin


def attention_inputs(case: AttentionCase, dtype: torch.dtype) -> tuple[dict[str, Tensor], dict[str, object]]:
    """(query, key, value) in the case's layout, masks and call flags, drawn from the case's seed."""
    g = torch.Generator().manual_seed(case.seed + 7)
    n = case.batch

    def sequence(length: int, features: int) -> Tensor:
        x = torch.randn(length, n or 1, features, generator=g, dtype=torch.float64)
        x = x[:, 0] if n is None else (x.transpose(0, 1) if case.batch_first else x)
        return x.contiguous().to(dtype)

    if case.self_attention:
        inputs = {"query": sequence(case.query_len, case.embed_dim)}
    else:
        inputs = {
            "query": sequence(case.query_len, case.embed_dim),
            "key": sequence(case.key_len, case.kdim or case.embed_dim),
            "value": sequence(case.key_len, case.vdim or case.embed_dim),
        }
    kwargs = {
        "attn_mask": attn_mask(case.attn_mask, case.query_len, case.key_len, n, case.num_heads, dtype, g),
        "key_padding_mask": padding_mask(case.key_padding_mask, n, case.key_len, dtype, g),
        "need_weights": case.need_weights,
        "average_attn_weights": case.average_attn_weights,
        "is_causal": case.is_causal,
    }
    return inputs, kwargs


def call_attention(module: nn.Module, query: Tensor, key: Tensor | None = None, value: Tensor | None = None,
                   **kwargs: object) -> dict[str, Tensor | None]:
    """Self-attention passes one tensor as query, key and value, as the layers do."""
    key = query if key is None else key
    value = query if value is None else value
    out, weights = module(query, key, value, **kwargs)
    return {"output": out, "weights": weights}


@examples(2.0)
@given(case=attention_cases(), dtype=dtypes())
@example(case=AttentionCase(), dtype=torch.float64)
@example(case=AttentionCase(embed_dim=3, num_heads=3, batch=None, query_len=1, key_len=1), dtype=torch.float64)
@example(case=AttentionCase(embed_dim=6, num_heads=1, kdim=4, vdim=2, add_bias_kv=True, add_zero_attn=True,
                            attn_mask="per_head_additive", key_padding_mask="float_finite", batch_first=True),
         dtype=torch.float64)
@example(case=AttentionCase(self_attention=True, query_len=4, key_len=4, attn_mask="causal_bool",
                            key_padding_mask="bool", need_weights=False, is_causal=True, dropout=0.5),
         dtype=torch.float64)
@example(case=AttentionCase(self_attention=True, query_len=3, key_len=3, attn_mask="causal_bool", is_causal=True,
                            need_weights=False, add_bias_kv=True), dtype=torch.float64)  # the hint hides bias_k
@example(case=AttentionCase(embed_dim=12, num_heads=4, average_attn_weights=False, attn_mask="random_bool",
                            key_padding_mask="bool", batch=3), dtype=torch.float32)
def test_attention_matches_torch_multihead_attention(device, case, dtype):
    """Every constructor option and call flag; the returned weights (averaged or per head) as well."""
    skip_unless_dtype_runs(dtype, device)
    reference, twin = attention_pair(case)
    inputs, kwargs = attention_inputs(case, dtype)
    triples = compare_pair(reference, twin, call_attention, inputs, kwargs, dtype=dtype, device=device,
                           grads=True, seed=case.seed)
    assert_matches(triples, Context("attention", dtype, device, case.describe()))
