"""Diagnose names the tensor a place is fed when it is exactly one the built-in computed in the layer, or one
through a norm of the target's own; a blend it never computed stays Unexplained (tests/targets/diag2_targets.py)."""

from __future__ import annotations

import pytest

from reference.diagnose.pipeline import diagnose
from reference.diagnose.runs import one_thread
from reference.targets.contract import load_target

TARGETS = "tests.targets.diag2_targets"


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


def run(name: str, level: str):
    return diagnose(load_target(f"{TARGETS}:{name}"), out_dir=None, family_names=("default",), reproduce=False,
                    level=level)


@pytest.mark.parametrize("name, level, cause, words", [
    ("SquashedPerceptron", "feed_forward", "extra module", "LayerNorm squash applied to the input of linear1"),
    ("BlockFFReadsSource", "encoder_layer", "wrong input", "linear1 is fed the input of self_attn"),
])
def test_the_tensor_a_place_is_fed_is_named(name, level, cause, words):
    d = run(name, level)
    assert [(c.cause, c.place) for c in d.causes] == [(cause, "linear1")], [(c.cause, c.does) for c in d.causes]
    assert words in d.causes[0].does, d.causes[0].does
    assert d.causes[0].place_after <= 1e-9 < d.causes[0].place_before and not d.unexplained


def test_a_tensor_the_built_in_never_computed_is_not_named():
    d = run("BlockFFReadsBlend", "encoder_layer")
    assert d.verdict == "divergent" and not [c for c in d.causes if c.cause in ("wrong input", "extra module")]
    assert d.unexplained.startswith("linear1"), d.unexplained


def test_a_missing_activation_is_not_also_called_a_wrong_input():
    """What the second matrix should read (the activation's output) is recorded nowhere: no 'feed linear2 the
    input of linear2'."""
    d = run("StraightPerceptron", "feed_forward")
    assert d.verdict == "divergent" and d.causes, d.unexplained
    assert not [c for c in d.causes if c.cause == "wrong input"], [(c.cause, c.does) for c in d.causes]


def test_a_norm_of_another_width_is_not_applied_where_it_cannot_be():
    """Every family: one where the hidden width differs from the model's had crashed the harness."""
    d = diagnose(load_target(f"{TARGETS}:PrenormedGeluPerceptron"), out_dir=None, reproduce=False,
                 level="feed_forward")
    assert [(c.cause, c.place) for c in d.causes] == [("extra module", "linear1")], [c.does for c in d.causes]
