"""Sharper inputs and a report that leads with the answer.

- The attention level gives query, key and value tensors of their own (keys of another length): an attention
  that swaps key and value at its call site, or keys its queries against themselves, fails ``parity check``
  at level attention while its corrected twin passes (tests/targets/attention_input_targets.py, written unlike
  handmade: einsum over one packed tensor; F.linear over a [W_k; W_v] tensor with bmm).
- A target the harness cannot resolve says so in the first lines of ``parity check``, without a hypothesis
  traceback, quickly; ``pytest --impl`` runs nothing for it and its report says why.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from reference.check import main as check_main
from reference.pytest_plugin import suite_dir

T = "tests.targets.attention_input_targets"
CHECK = ("--as", "attention", "--device", "cpu", "--", "-k", "float64")


@pytest.mark.slow
@pytest.mark.parametrize(("correct", "buggy"), [("EinsumAttention", "SwappedEinsumAttention"),
                                                 ("ContextAttention", "QueryKeyedAttention")])
def test_an_attention_mixing_up_its_inputs_fails_and_its_twin_passes(correct: str, buggy: str,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert check_main([f"{T}:{correct}", "--profile", "ci", *CHECK]) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    assert "tests: 1 passed" in out, out
    assert check_main([f"{T}:{buggy}", "--profile", "kill", *CHECK]) == 1  # kill: ci without shrinking
    out = capsys.readouterr().out
    assert "FAILED equivalence_tests/test_components.py::test_attention_matches_torch[cpu-float64]" in out, out
    assert "tensors differ from the float64 oracle beyond the tolerance" in out, out


def test_keys_and_values_from_one_input_are_checked_apart_from_the_queries(capsys: pytest.CaptureFixture[str]
                                                                          ) -> None:
    """forward(x, context) is checked as cross-attention (keys and values one tensor), not as self-attention."""
    assert check_main([f"{T}:ContextAttention", "--as", "attention", "--show-map"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.endswith("equals nn.MultiheadAttention(bias=False) with keys and values from one input"), first


UNRESOLVABLE = "tests.targets.unresolvable_targets:CheckpointedSeq2Seq"


def test_a_target_that_cannot_be_resolved_says_so_first(capsys: pytest.CaptureFixture[str]) -> None:
    start = time.perf_counter()
    code = check_main([UNRESOLVABLE, "--profile", "ci", "--device", "cpu"])
    seconds = time.perf_counter() - start
    captured = capsys.readouterr()
    text = captured.out + captured.err
    lines = text.strip().splitlines()
    assert code == 1, text
    assert lines[0].startswith(f"parity check: {UNRESOLVABLE} could not be resolved at transformer"), lines[:3]
    assert "nothing was checked" in lines[0], lines[0]
    why = " ".join(lines[1:])
    assert "checkpoint" in why, why  # the parameter it cannot give (a Tokenizer of the user's class it builds)
    assert "Traceback" not in text and "FlakyFailure" not in text, text[:2000]
    assert "component" not in text, "an empty table printed for a target that never ran"
    assert seconds <= 15, f"saying it took {seconds:.1f} s"


def test_pytest_runs_nothing_for_a_target_it_cannot_resolve_and_its_report_says_why(tmp_path: Path) -> None:
    report = tmp_path / "parity.json"
    code = pytest.main([suite_dir(), "-p", "no:cacheprovider", "-q", f"--impl={UNRESOLVABLE}",
                        f"--parity-report={report}", "--hypothesis-profile=ci", "--parity-device=cpu"])
    found = json.loads(report.read_text())
    assert int(code) == 1
    assert found["tests"] == [] and found["verdicts"] == [], found["tests"][:3]
    assert [u["level"] for u in found["unresolved"]] == ["transformer"], found["unresolved"]
    assert "checkpoint" in found["unresolved"][0]["reason"], found["unresolved"][0]["reason"]
