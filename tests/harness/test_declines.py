"""A property run stops drawing in a dtype other than float64 after DECLINE_STREAK declines, or DECLINE_RATIO
per judged case (reference/verdict/assertions.py ``Declines``); float64 draws on, and a failure turns it off
(hypothesis shrinks it: a stop would hide it)."""

from __future__ import annotations

import pytest
import torch
from _pytest.outcomes import Skipped

from reference.verdict.assertions import DECLINE_RATIO, DECLINE_STREAK, Declines


def test_a_low_precision_stops_after_the_streak_with_its_reason() -> None:
    declines = Declines()
    for _ in range(DECLINE_STREAK - 1):
        declines.declined(torch.bfloat16, "raises")
    with pytest.raises(Skipped, match=rf"none of the first {DECLINE_STREAK} configurations drawn in bfloat16.*raises"):
        declines.declined(torch.bfloat16, "raises")


def test_float64_and_a_run_with_a_failure_never_stop() -> None:
    oracle, failing = Declines(), Declines(failed=True)
    try:
        for _ in range(3 * DECLINE_STREAK):
            oracle.declined(torch.float64, "per-head masks")
            failing.declined(torch.float16, "per-head masks")
    except Skipped as stopped:  # a skip here would pass the test as skipped: it is the failure
        pytest.fail(f"stopped drawing: {stopped}")
    assert oracle.count == 0 and failing.count == 0


def test_judged_cases_raise_the_bar_by_the_ratio() -> None:
    declines = Declines(judged=8)
    try:
        for _ in range(DECLINE_RATIO * 8 - 1):
            declines.declined(torch.float16, "overflow")
    except Skipped as stopped:  # too early: as a skip it would pass unseen
        pytest.fail(f"stopped after {declines.count}: {stopped}")
    with pytest.raises(Skipped, match=rf"{DECLINE_RATIO * 8} configurations drawn in float16 were declined for 8 "
                                      "judged"):
        declines.declined(torch.float16, "overflow")
