"""Hunt one entry's bug in-process: a fixed panel of discriminating cases, then cases the suite's strategy draws.

Fast enough for CI (``test_zoo.py``) and the fallback engine of ``parity zoo``; the thorough report runs the
whole pytest suite per entry instead (``reference/zoo.py``).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass

from hypothesis import HealthCheck, Phase, given, settings

from reference import strategies
from reference.build import Config
from reference.cases import Case
from reference.compare import whole_model
from reference.targets import Target, TargetError

# Between them, these three cases touch every option and mask kind a zoo bug hides behind.
PANEL = (
    Case(Config(16, 4, 2, 2, 32, 0.5, "gelu", 1e-3, batch_first=False, norm_first=False), batch=3, src_len=5,
         tgt_len=4, tgt_mask="causal_float", memory_mask="additive", src_key_padding_mask="bool",
         memory_key_padding_mask="float_finite", seed=1),
    Case(Config(16, 4, 2, 1, 32, 0.1, "relu", 1e-6, batch_first=True, norm_first=True), batch=2, src_len=6,
         tgt_len=6, src_mask="per_head_additive", tgt_mask="per_head_bool", memory_mask="random_inf",
         src_key_padding_mask="float_inf", tgt_key_padding_mask="bool", memory_key_padding_mask="bool", seed=2),
    Case(Config(12, 3, 1, 2, 16, 0.0, "gelu", 0.5, norm_first=True, bias=False), batch=None, src_len=4, tgt_len=5,
         src_mask="random_bool", tgt_mask="causal_bool", tgt_is_causal=True, seed=3),
)


@dataclass(frozen=True)
class Catch:
    """How a case exposed the target: the first failing verdict, or the target's crash."""

    case: Case
    index: int
    what: str
    detail: str
    crashed: bool


def drawn_cases(count: int, seed_label: str = "zoo") -> list[Case]:
    """``count`` cases from ``strategies.cases()``, the same ones every run (derandomized, no database)."""
    out: list[Case] = []

    @settings(max_examples=count, derandomize=True, database=None, phases=[Phase.generate], deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(strategies.cases())
    def collect(case: Case) -> None:
        out.append(case)

    collect()
    return out[:count]


def first_catch(target: Target, cases: Iterable[Case]) -> Catch | None:
    """The first case on which ``target`` fails a float64 whole-model comparison, or None if it passes all."""
    for index, case in enumerate(cases):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                verdicts = whole_model(target, case)
        except TargetError as exc:
            return Catch(case, index, "crash", str(exc).splitlines()[0][:160], True)
        failed = [v for v in verdicts if not v.passed]
        if failed:
            return Catch(case, index, failed[0].what, str(failed[0]), False)
    return None
