"""How the suite runs: in process, under the profile it is given; under xdist, one share of the cores per worker.

In-process runs of the suite (the notebook API, the harness's own tests) run under the profile they are given.

The suite's tests take their hypothesis settings when their module is imported; a second run in one process
once reused the first run's modules, and with them its profile: ``kill`` shrank like ``ci`` (most of the
time of the buggy-target tests), ``thorough`` drew ci's number of examples. And the run's profile stayed
loaded for whatever ran next in the process.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch
from hypothesis import settings

import reference.verdict.assertions as assertions
from reference.check import run_suite
from reference.pytest_plugin import share_cores

BUGGY = "tests.targets.attention_input_targets:SwappedEinsumAttention"  # keys and values change places


def _judged(profile: str, monkeypatch: pytest.MonkeyPatch) -> int:
    """How many cases the suite's float64 attention test judges on BUGGY under ``profile``."""
    calls = {"n": 0}
    real = assertions.check

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(assertions, "check", counted)
    before = settings.get_current_profile_name()
    status, _ = run_suite(BUGGY, level="attention", profile=profile, device="cpu",
                          extra=("-k", "attention_matches_torch and float64"))
    assert status == 1  # the bug is caught under every profile
    assert settings.get_current_profile_name() == before  # the caller's profile is back
    return calls["n"]


def test_each_in_process_run_uses_its_own_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    alone = _judged("kill", monkeypatch)
    shrunk = _judged("ci", monkeypatch)
    assert shrunk > alone  # ci shrinks the failure, kill stops at it
    assert _judged("kill", monkeypatch) == alone  # after a ci run, kill still does not shrink


def test_xdist_workers_share_the_cores_instead_of_each_taking_all(monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    try:
        monkeypatch.setattr("os.cpu_count", lambda: 8)
        monkeypatch.setenv("OMP_NUM_THREADS", "8")  # set back when the test ends
        share_cores(4)
        assert torch.get_num_threads() == 2 and os.environ["OMP_NUM_THREADS"] == "2"  # and what it starts
        share_cores(16)  # more workers than cores: one thread each, never zero
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
