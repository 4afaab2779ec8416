"""A packed q/k/v projection laid out per head, with a bug after it (tests/targets/fused_layout_targets.py):
the bug keeps every layout from verifying, the layout is measured with the value rows zeroed
(reference/inference/layouts.py), and diagnosis names the bug, not the layout. The correct one is equivalent."""

from __future__ import annotations

import pytest

from reference.diagnose.pipeline import diagnose
from reference.diagnose.runs import one_thread
from reference.targets.contract import load_target

TARGETS = "tests.targets.fused_layout_targets"


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


def run(name: str):
    return diagnose(load_target(f"{TARGETS}:{name}"), out_dir=None, family_names=("default",), reproduce=False,
                    level="attention")


def test_the_correct_per_head_layout_is_equivalent() -> None:
    d = run("Fused")
    assert d.verdict == "equivalent" and not d.causes, [(f.name, f.verdict, f.detail) for f in d.families]


@pytest.mark.parametrize(("name", "key"), [("FusedMergeBug", "head_merge_without_transpose"),
                                           ("FusedScaleBug", "scale_by_d_model")])
def test_a_bug_after_a_per_head_projection_is_named(name: str, key: str) -> None:
    d = run(name)
    assert d.verdict == "divergent"
    assert [c.key for c in d.causes] == [key], [(c.key, c.does) for c in d.causes]
    assert d.explained and not d.unexplained
    assert not any("laid out" in note for note in d.notes), d.notes
