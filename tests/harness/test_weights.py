"""The weight map pairs every parameter of both models exactly once, and copying round-trips both ways."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import handmade
from reference.builtin.config import Config, randomize_
from reference.builtin.weights import WeightMapError, copy_handmade_to_torch, copy_plan, copy_torch_to_handmade
from reference.cases.strategies import configs, seeds
from reference.levels.pairs import build_handmade, build_pair, build_torch
from reference.levels.registry import COMPONENTS
from reference.verdict.assertions import examples

components = st.sampled_from(COMPONENTS)


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys(), f"keys differ: {sorted(set(sa) ^ set(sb))}"
    for key in sa:
        assert torch.equal(sa[key], sb[key]), f"{key} differs after the round trip"


@examples(1.0)
@given(component=components, config=configs(), seed=seeds())
def test_weight_map_uses_every_tensor_of_both_models_exactly_once(component, config, seed):
    reference, twin = build_pair(component, config, seed)
    links = copy_plan(reference, twin)
    torch_keys = {link.torch_key for link in links}
    handmade_keys = [link.handmade_key for link in links]
    assert torch_keys == set(reference.state_dict()), "a torch tensor is not mapped"
    assert sorted(handmade_keys) == sorted(twin.state_dict()), "a handmade tensor is mapped twice or not at all"
    packed = [link for link in links if link.chunk is not None]
    assert all(link.torch_key.endswith(("in_proj_weight", "in_proj_bias")) for link in packed)
    assert len(packed) % 3 == 0, "q, k and v come in threes"


@examples(1.0)
@given(component=components, config=configs(), seed=seeds())
def test_weights_round_trip_torch_to_handmade_to_torch(component, config, seed):
    reference, twin = build_pair(component, config, seed)
    back = build_torch(component, config)
    copy_handmade_to_torch(twin, back)
    assert_same_state(reference, back)


@examples(1.0)
@given(component=components, config=configs(), seed=seeds())
def test_weights_round_trip_handmade_to_torch_to_handmade(component, config, seed):
    twin = randomize_(build_handmade(component, config), torch.Generator().manual_seed(seed))
    reference = build_torch(component, config)
    copy_handmade_to_torch(twin, reference)
    again = build_handmade(component, config)
    copy_torch_to_handmade(reference, again)
    assert_same_state(twin, again)


def test_copied_attention_splits_in_proj_into_q_k_v_in_row_order():
    reference, twin = build_pair("attention", Config(), seed=3)
    d = twin.embed_dim
    packed = reference.in_proj_weight
    for i, proj in enumerate((twin.q_proj, twin.k_proj, twin.v_proj)):
        assert torch.equal(proj.weight, packed[i * d:(i + 1) * d]), f"chunk {i} is not {proj}"
        assert torch.equal(proj.bias, reference.in_proj_bias[i * d:(i + 1) * d])


def test_weight_map_reports_an_unmatched_handmade_tensor():
    reference = build_torch("attention", Config())
    twin = handmade.MultiheadAttention(16, 2, add_bias_kv=True, dtype=torch.float64)
    with pytest.raises(WeightMapError, match=r"handmade bias_k has no torch counterpart"):
        copy_plan(reference, twin)


def test_weight_map_reports_a_handmade_tensor_that_two_torch_tensors_map_to():
    """torch's q_proj_weight and a q_proj.weight both name handmade's q_proj.weight: one too many."""
    reference = nn.Module()
    reference.q_proj_weight = nn.Parameter(torch.zeros(2, 2))
    reference.q_proj = nn.Linear(2, 2, bias=False)
    twin = nn.Module()
    twin.q_proj = nn.Linear(2, 2, bias=False)
    with pytest.raises(WeightMapError, match=r"handmade q_proj\.weight is the target of two torch tensors"):
        copy_plan(reference, twin)
