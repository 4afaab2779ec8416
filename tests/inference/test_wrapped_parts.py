"""Parts handed to a wrapper and a list of layers named like a count (tests/targets/wrapped_parts_targets.py): the
harness builds the layer's sub-modules and the stack's list from the user's own classes, and checks them."""

from __future__ import annotations

import pytest

import tests.targets.wrapped_parts_targets as T
from reference.check import main as check_main
from reference.inference import uses
from reference.inference.construct import build
from reference.inference.parts import MEASURE, measured

M = "tests.targets.wrapped_parts_targets"


def test_a_part_handed_to_a_wrapper_is_a_module_parameter() -> None:
    assert list(uses.module_parameters(T.Block)) == ["mixer", "channel"]  # in the order the layer uses them


def test_a_list_named_like_a_count_is_built_as_layers() -> None:
    built = build(T.Trunk, {**MEASURE, "num_layers": 3}, "encoder")
    assert isinstance(built.model.blocks, T.nn.ModuleList) and len(built.model.blocks) == 3
    assert all(isinstance(b, T.Block) for b in built.model.blocks)


def test_a_pre_norm_layer_measures_as_mixing_positions() -> None:
    block = build(T.Block, dict(MEASURE), "encoder_layer").model
    assert measured(block, MEASURE["d_model"]) == "layer"


@pytest.mark.slow
@pytest.mark.parametrize(("obj", "lvl", "buggy"), [("Block", "encoder_layer", False), ("Trunk", "encoder", False),
                                                   ("TrunkBug", "encoder", True)])
def test_parity_check_runs_them(obj: str, lvl: str, buggy: bool, capsys: pytest.CaptureFixture[str]) -> None:
    code = check_main([f"{M}:{obj}", "--as", lvl, "--profile", "kill" if buggy else "ci", "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == (1 if buggy else 0), out[-3000:]
    assert ("max abs err" in out) if buggy else ("norm_first=True" in out and "FAILED" not in out), out[-3000:]
