"""A property run stops drawing in a dtype other than float64 after DECLINE_STREAK declines with none supported
(reference/verdict/assertions.py ``Declines``); float64 draws on, and one supported case turns the count off."""

from __future__ import annotations

import pytest
import torch
from _pytest.outcomes import Skipped

from reference.verdict.assertions import DECLINE_STREAK, Declines


def test_a_low_precision_stops_after_the_streak_with_its_reason() -> None:
    declines = Declines()
    for _ in range(DECLINE_STREAK - 1):
        declines.declined(torch.bfloat16, "raises")
    with pytest.raises(Skipped, match=rf"none of the first {DECLINE_STREAK} configurations drawn in bfloat16.*raises"):
        declines.declined(torch.bfloat16, "raises")


def test_float64_and_a_run_that_supported_a_case_never_stop() -> None:
    oracle, supported = Declines(), Declines(supported=True)
    try:
        for _ in range(3 * DECLINE_STREAK):
            oracle.declined(torch.float64, "per-head masks")
            supported.declined(torch.float16, "per-head masks")
    except Skipped as stopped:  # a skip here would pass the test as skipped: it is the failure
        pytest.fail(f"stopped drawing: {stopped}")
    assert oracle.count == 0 and supported.count == 0
