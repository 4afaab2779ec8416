"""The notebook API (reference/api.py) and `--as LEVEL`: a target object or spec in, a report that prints out."""

from __future__ import annotations

import pytest
from torch import nn

from reference import api


class Scaled(nn.Transformer):
    """The built-in with its output scaled by 1.01: a plain class defined where no import can find it."""

    def forward(self, *args, **kwargs):
        return 1.01 * super().forward(*args, **kwargs)


def test_check_takes_handmade_at_one_level_and_its_report_prints_the_table() -> None:
    report = api.check("reference.targets.contract:handmade", level="layer_norm", profile="ci", device="cpu")
    text = repr(report)
    assert report.passed, text
    assert "layer_norm" in text and "float64" in text and "tests: 4 passed" in text
    assert "attention" not in text and "transformer" not in text  # only the level asked for ran


def test_check_takes_an_unimportable_class_and_names_what_failed() -> None:
    report = api.check(Scaled, profile="ci", device="cpu", exitfirst=True, pytest_args=("-k", "float64"))
    assert not report.passed
    assert report.failures and "transformer [float64, cpu]" in report.failures[0]["message"]
    assert "Scaled" in report.report["impl"]


def test_diagnose_takes_an_unimportable_class_and_prints_its_verdict() -> None:
    found = api.diagnose(Scaled, families=("default",))
    assert found.verdict == "divergent"
    assert "DIVERGENT" in repr(found)


def test_an_unknown_level_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    from reference.check import main

    with pytest.raises(SystemExit):
        main(["--as", "gpt"])
    assert "invalid choice: 'gpt'" in capsys.readouterr().err


def test_diagnose_takes_a_level_like_the_command() -> None:
    from examples.learner_attention import MergeWithoutTranspose

    found = api.diagnose(MergeWithoutTranspose, level="attention", keep_masks=True, families=("default",))
    assert found.verdict == "divergent"
    assert [c.key for c in found.diagnosis.causes] == ["head_merge_without_transpose"]
    assert "--as attention" in repr(found)
    with pytest.raises(ValueError, match="level must be one of"):
        api.diagnose(MergeWithoutTranspose, level="gpt")
