"""Sub-modules a constructor takes as instances (reference/inference/parts.py), on tests/targets/ctor_targets.py:
which parameters want a module is read from the source, what plays each part is measured among the user's own
classes; the correct targets pass a check and the one-bug twin fails (``slow``)."""

from __future__ import annotations

import pytest
from torch import Tensor, nn

import reference.inference.uses as uses
import tests.targets.ctor_targets as T
from reference import api
from reference.builtin.config import Config
from reference.inference.construct import ConstructionError, build
from reference.inference.parts import measured, wanted
from reference.levels.registry import LEVELS


def options(level: str, **changes: object) -> dict:
    return {**(LEVELS[level].from_config(Config())).options(), **changes}


def test_the_source_says_which_parameters_are_modules_and_in_what_order_they_run() -> None:
    assert list(uses.module_parameters(T.Cell)) == ["attend", "transform"]  # as forward uses them
    assert wanted(T.Cell, "encoder_layer", set()) == {"attend": "attention", "transform": "feed_forward"}
    assert list(uses.module_parameters(T.Tower)) == ["template"]  # handed to a helper that deep-copies it
    assert wanted(T.Column, "encoder", set()) == {"floors": "layers"}  # annotated nn.ModuleList
    assert uses.module_parameters(T.TwoMatrix) == {}


def test_each_class_is_measured_as_what_it_is() -> None:
    assert measured(T.EinsumAttention(12, 3), 12) == "attention"
    assert measured(T.TwoMatrix(12, 24), 12) == "feed_forward"
    assert measured(T.RowNorm(12), 12) == "other"  # position-wise too, but no matrix: not a feed-forward
    assert measured(T.Cell(12, T.TwoMatrix(12, 24), T.EinsumAttention(12, 3)), 12) == "layer"


def test_a_layers_parts_are_built_at_the_levels_sizes_and_reported() -> None:
    built = build(T.Cell, options("encoder_layer", d_model=12, nhead=3, dim_feedforward=24), "encoder_layer")
    model = built.model
    assert isinstance(model.attend, T.EinsumAttention) and model.attend.heads == 3
    assert isinstance(model.transform, T.TwoMatrix) and model.transform.widen.weight.shape == (24, 12)
    assert built.plan.taken["nhead"] == "attend.heads"
    assert "attend: built EinsumAttention(width=12, heads=3) as its attention" in built.plan.describe()


def test_a_stack_gets_copies_of_a_layer_it_is_given_or_a_list_of_them() -> None:
    tower = build(T.Tower, options("encoder", d_model=12, nhead=3, num_encoder_layers=3), "encoder")
    assert len(tower.model.storeys) == 3 and isinstance(tower.model.storeys[0], T.Cell)
    assert tower.plan.trials == {"count": 3}  # a count no table names: the level's layer count
    column = build(T.Column, options("encoder", d_model=12, nhead=3, num_encoder_layers=2), "encoder")
    assert len(column.model.floors) == 2 and column.plan.taken["num_layers"] == "floors"
    assert column.model.floors[0] is not column.model.floors[1]


@pytest.mark.slow
@pytest.mark.parametrize(("spec", "level"), [("Cell", "encoder_layer"), ("Tower", "encoder"),
                                             ("Column", "encoder"), ("Deck", "decoder_layer")])
def test_targets_built_from_parts_pass(spec: str, level: str) -> None:
    report = api.check(f"tests.targets.ctor_targets:{spec}", level=level, profile="ci", device="cpu",
                       pytest_args=("-k", "float64"))
    assert report.passed, report


@pytest.mark.slow
def test_the_one_bug_twin_fails_with_the_divergence_shown() -> None:
    report = api.check("tests.targets.ctor_targets:CellBug", level="encoder_layer", profile="kill", device="cpu",
                       pytest_args=("-k", "float64"))
    assert not report.passed and report.failures, report
    assert "max abs err" in report.failures[0]["message"] or "differ" in report.failures[0]["message"]


def test_a_decoder_layers_attentions_are_told_apart_by_how_it_calls_them() -> None:
    assert uses.call_arities(T.Deck) == {"own": 1, "other": 2, "transform": 1}
    built = build(T.Deck, options("decoder_layer", d_model=12, nhead=3, dim_feedforward=24), "decoder_layer")
    model = built.model
    assert isinstance(model.own, T.EinsumAttention) and isinstance(model.other, T.CrossEinsum)
    assert isinstance(model.transform, T.TwoMatrix)


def test_a_module_parameter_nothing_can_play_is_one_paragraph_naming_it() -> None:
    class Lonely(nn.Module):  # defined here: this test module has no attention class of its own
        def __init__(self, width, mixer) -> None:  # type: ignore[no-untyped-def]
            super().__init__()
            self.mixer, self.norm = mixer, nn.LayerNorm(width)

        def forward(self, x: Tensor) -> Tensor:
            return self.norm(x + self.mixer(x, x))

    with pytest.raises(ConstructionError) as caught:
        build(Lonely, options("encoder_layer"), "encoder_layer")
    text = str(caught.value)
    assert "\n" not in text and "mixer (as its feed_forward)" in text and "functools.partial(" in text


def test_a_class_that_does_not_build_is_tried_once_per_set_of_options() -> None:
    import tests.targets.parts_cache_targets as PC

    options = LEVELS["encoder_layer"].from_config(Config(d_model=8, nhead=2, dim_feedforward=16)).options()
    first = build(PC.Wrapper, options, "encoder_layer")
    assert isinstance(first.model.block, PC.Mlp) and isinstance(first.model.mixer, PC.Mixer)
    tried = PC.Broken.calls
    assert tried >= 1
    for width in (8, 12, 16):
        build(PC.Wrapper, {**options, "d_model": width}, "encoder_layer")
    assert PC.Broken.calls == tried
