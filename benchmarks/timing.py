"""Interleaved rounds of ``torch.utils.benchmark.Timer`` and the statistics drawn from them.

Every implementation is timed once per round, in an order that rotates from round to round, so a slow
spell on a shared machine hits all of them alike; a ratio is taken per round, between measurements made
seconds apart. On CUDA the Timer synchronizes around each block of calls.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

from torch.utils.benchmark import Measurement, Timer
from torch.utils.benchmark.utils.timer import timer

CLOCKS = {"wall": timer, "cpu": time.process_time}


def make_timer(
    step: Callable[[], object], label: str, sub_label: str, description: str, threads: int, clock: str = "wall"
) -> Timer:
    """A Timer of ``step()``; Compare titles the table ``label``, the row ``sub_label``, the column ``description``.

    ``clock`` "wall" is torch's default timer (it synchronizes CUDA); "cpu" is this process's CPU time, which
    a shared machine's other processes do not inflate while they hold the core (CPU and one thread only).
    """
    return Timer(
        "step()", globals={"step": step}, label=label, sub_label=sub_label, description=description,
        num_threads=threads, timer=CLOCKS[clock],
    )


def run_rounds(
    timers: dict[str, Timer],
    rounds: int,
    min_run_time: float,
    progress: Callable[[str], None] | None = None,
) -> dict[str, list[Measurement]]:
    """``rounds`` blocked_autorange measurements of each timer, interleaved; the order rotates every round."""
    names = list(timers)
    results: dict[str, list[Measurement]] = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            results[name].append(timers[name].blocked_autorange(min_run_time=min_run_time))
        if progress is not None:
            progress(f"round {r + 1}/{rounds}")
    return results


@dataclass(frozen=True)
class Stats:
    """Median seconds per call over every block of every round, and how much they spread."""

    median: float
    iqr: float  # interquartile range of the block times, seconds
    round_medians: tuple[float, ...]

    @property
    def spread(self) -> float:
        """IQR relative to the median."""
        return self.iqr / self.median


def summarize(measurements: list[Measurement]) -> Stats:
    """Merge one implementation's rounds into one sample."""
    (merged,) = Measurement.merge(measurements)
    return Stats(merged.median, merged.iqr, tuple(m.median for m in measurements))


@dataclass(frozen=True)
class Ratio:
    """Time of one implementation over another's, per round: the median and the extremes."""

    median: float
    low: float
    high: float
    rounds: tuple[float, ...]


def round_ratios(numerator: list[Measurement], denominator: list[Measurement]) -> Ratio:
    """median(numerator round r) / median(denominator round r) for every round r."""
    ratios = tuple(a.median / b.median for a, b in zip(numerator, denominator, strict=True))
    return Ratio(statistics.median(ratios), min(ratios), max(ratios), ratios)
