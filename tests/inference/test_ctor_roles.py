"""What a constructor's parameter stands for when no table spells it (reference/inference/roles.py, source.py),
config fields taken only when read, a declined option value, and a feed-forward as wide as the model, on
tests/targets/ctor_role_targets.py; the correct targets pass a check, the one-bug twin fails (``slow``)."""

from __future__ import annotations

import pytest
from torch import nn

import reference.inference.sizes as fixed_sizes
import reference.inference.uses as uses
import tests.targets.ctor_role_targets as R
from reference import api
from reference.builtin.config import Config
from reference.cases.strategies import tanh_gelu
from reference.inference.construct import DeclinedError, build
from reference.inference.roles import option_of, role_of
from reference.levels.registry import LEVELS


def options(level: str, **changes: object) -> dict:
    return {**(LEVELS[level].from_config(Config())).options(), **changes}


@pytest.mark.parametrize(("name", "option"), [
    ("number_of_heads", "nhead"), ("count_heads", "nhead"), ("n_heads", "nhead"), ("number_of_layers", "num_layers"),
    ("n_layer", "num_layers"), ("encoder_layer_count", "num_encoder_layers"), ("num_dec_blocks", "num_decoder_layers"),
    ("n_state", None), ("span", None)])
def test_counts_are_read_word_by_word(name: str, option: str | None) -> None:
    assert option_of(name) == option


@pytest.mark.parametrize(("name", "role"), [
    ("head_dim", "head_size"), ("dim_per_head", "head_size"), ("d_k", "head_size"), ("d_queries", "head_size"),
    ("widen_ratio", "ratio"), ("mlp_expansion", "ratio"), ("device", "device"), ("n_attn", "count"),
    ("span", "size"), ("number_of_things", "count")])
def test_roles_by_the_words_of_a_name(name: str, role: str) -> None:
    assert role_of(name) == role


def test_an_unnamed_width_a_count_a_flag_and_a_ratio_get_values_the_built_in_can_have() -> None:
    assert uses.flag_parameters(R.Gate) == {"masked"}  # tested for truth, as the attribute it is stored in
    assert uses.flag_parameters(R.Squeeze) == set()  # ``inner or width`` picks a value: no flag
    built = build(R.Gate, options("encoder_layer", d_model=18, nhead=3, dim_feedforward=72), "encoder_layer")
    assert built.plan.taken["nhead"] == "number_of_heads" and built.model.attend.num_heads == 3
    assert built.plan.trials == {"span": 18, "masked": False, "widen_ratio": 4}
    wanted = fixed_sizes.not_given("encoder_layer", built.not_taken)
    assert fixed_sizes.read_sizes(built.model, "encoder_layer", wanted) == {"d_model": 18, "dim_feedforward": 72}


def test_a_per_head_width_is_the_width_over_the_heads() -> None:
    built = build(R.PerHead, options("attention", embed_dim=24, num_heads=4), "attention")
    assert built.plan.trials == {"model_width": 24, "dim_per_head": 6} and built.model.count_heads == 4


def test_a_config_field_the_block_never_reads_is_not_taken() -> None:
    built = build(R.Knobbed, options("decoder_only", d_model=12, nhead=3, num_encoder_layers=3), "decoder_only")
    assert built.plan.taken == {"d_model": "width", "nhead": "n_heads"}  # not num_layers as stack_height
    assert "num_layers" in built.not_taken
    wanted = fixed_sizes.not_given("decoder_only", built.not_taken)
    assert fixed_sizes.read_sizes(built.model, "decoder_only", wanted)["num_encoder_layers"] == 1
    assert type(built.plan.config) is R.Knobs  # the recording class is undone


def test_a_value_the_constructor_rejects_while_taking_the_default_is_declined() -> None:
    with pytest.raises(DeclinedError, match=r"declines activation=tanh_gelu \(it constructs with 'relu'\).*KeyError"):
        build(R.NamedOnly, options("encoder_layer", activation=tanh_gelu), "encoder_layer")
    with pytest.raises(KeyError):  # a constructor that raises whatever it is given is not declining a value
        build(R.NamedOnly, options("encoder_layer", activation=tanh_gelu, d_model=-1), "encoder_layer")


def test_a_feed_forward_as_wide_as_the_model_is_read() -> None:
    model = R.Squeeze(10)
    assert fixed_sizes.read_sizes(model, "feed_forward", ("d_model", "dim_feedforward")) == {
        "d_model": 10, "nhead": 1, "dim_feedforward": 10}


@pytest.mark.slow
@pytest.mark.parametrize(("spec", "level"), [("Gate", "encoder_layer"), ("Knobbed", "decoder_only"),
                                             ("NamedOnly", "encoder_layer"), ("Squeeze", "feed_forward"),
                                             ("PerHead", "attention")])
def test_the_correct_target_passes(spec: str, level: str) -> None:
    report = api.check(f"tests.targets.ctor_role_targets:{spec}", level=level, profile="ci", device="cpu",
                       pytest_args=("-k", "float64"))
    assert report.passed, report


@pytest.mark.slow
def test_the_inverted_flag_is_measured_and_reported_as_causal() -> None:
    """What ``masked`` means is not knowable; built with the flag False, GateBug is causal though it takes no
    mask, so it is checked, and said to be, always causal (a GPT block checked as an encoder layer is the same
    thing), not failed as a non-causal layer."""
    report = api.check("tests.targets.ctor_role_targets:GateBug", level="encoder_layer", profile="kill", device="cpu",
                       pytest_args=("-k", "float64"))
    assert report.passed, report
    assert "masked=False" in str(report) and "with a causal mask" in str(report), report


def test_when_trial_values_fail_other_assignments_of_the_sizes_are_tried() -> None:
    class Slots(nn.Module):  # its count must be at least its width: not the first guess
        def __init__(self, across, n_slots) -> None:  # type: ignore[no-untyped-def]
            super().__init__()
            if n_slots < across:
                raise ValueError("n_slots must be at least across")
            self.proj = nn.Linear(across, n_slots)

    built = build(Slots, options("encoder_layer", d_model=8, nhead=2, dim_feedforward=16), "encoder_layer")
    assert built.plan.trials["n_slots"] >= built.plan.trials["across"]
    assert "n_slots=" in built.plan.describe()
