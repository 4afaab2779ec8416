"""Causes, each backed by a probe run on the target: never guessed from names.

The main probe compares the target's outputs with *variants* of nn.Transformer (variants.py), each with
known deviations (deviations.py), all driven by the same weights. A greedy search adds, one at a time, the
deviation that brings the variant closest to the target (in orders of magnitude of error, summed over the
probe cases) until the variant matches the target within the tolerance or no deviation helps. Every
deviation kept is a cause, reported with its numbers: the error against nn.Transformer, against the variant
with every cause found, and against that variant without this one. Probes that are experiments rather than
variants (dropout in eval) run the target again.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from reference.diagnose.deviations import CATALOGUE, Deviation
from reference.diagnose.runs import Observation, observe
from reference.diagnose.variants import VariantError, forward
from reference.targets import NotSupportedError, Target

MIN_GAIN = 0.3  # log10 units summed over cases: a deviation must at least halve one case's error
CRASHED = 30.0  # the score of a variant that cannot run on a case


@dataclass
class Cause:
    """A cause whose probe fired, with the probe's numbers (max abs errors over the cases where it shows)."""

    key: str
    cause: str
    does: str
    fix: str
    sites: tuple[str, ...]
    shows_on: list[str]
    err_vs_reference: float
    err_vs_explanation: float
    err_without_it: float
    probe: str = "variant"
    alternatives: list[str] = field(default_factory=list)  # other deviations these cases cannot tell apart


@dataclass
class Explanation:
    """The causes found and how much of the difference they account for."""

    causes: list[Cause] = field(default_factory=list)
    explained: bool = True
    residual: float = 0.0  # max abs err of the target against the variant with every cause
    unexplained: list[str] = field(default_factory=list)  # case labels the causes do not account for
    changes: dict[str, object] = field(default_factory=dict)


class Scorer:
    """Scores variants against the target's outputs, memoized (a variant run costs a few milliseconds)."""

    def __init__(self, observations: Sequence[Observation]) -> None:
        self.obs = [o for o in observations if o.got is not None]
        self.memo: dict[tuple[int, tuple], float] = {}

    def ratio(self, i: int, devs: dict[str, object]) -> float:
        """max |target - variant| / bound on observation ``i``."""
        key = (i, tuple(sorted(devs.items(), key=lambda kv: kv[0])))
        if key not in self.memo:
            o = self.obs[i]
            try:
                with torch.no_grad():
                    out = forward(o.state, o.case.config, o.src, o.tgt, o.kwargs, devs)
                self.memo[key] = o.ratio(out)
            except (VariantError, RuntimeError, ValueError):
                self.memo[key] = math.inf
        return self.memo[key]

    def score(self, i: int, devs: dict[str, object]) -> float:
        """Orders of magnitude above the tolerance (0 = matches)."""
        r = self.ratio(i, devs)
        return CRASHED if not math.isfinite(r) else math.log10(max(r, 1.0))


def _merge(devs: dict[str, object], dev: Deviation) -> dict[str, object] | None:
    """``devs`` plus ``dev``'s switches; None when they conflict or ``dev`` adds nothing."""
    if any(k in devs and devs[k] != v for k, v in dev.changes.items()):
        return None
    if all(devs.get(k) == v for k, v in dev.changes.items()):
        return None
    return {**devs, **dev.changes}


def search(scorer: Scorer, catalogue: Sequence[Deviation] = CATALOGUE, max_steps: int = 12) -> list[Deviation]:
    """Greedy: add the deviation that lowers the summed score most, until it is 0 or nothing helps.

    Lazy evaluation: a candidate is re-scored only while its last known gain could beat the best gain
    found in this step; before stopping, every candidate is re-scored once (a deviation can be hidden
    by larger ones early on and show once they are explained).
    """
    n = len(scorer.obs)
    chosen: list[Deviation] = []
    devs: dict[str, object] = {}
    current = [scorer.score(i, devs) for i in range(n)]
    stale = {d.key: math.inf for d in catalogue}
    while sum(current) > 0 and len(chosen) < max_steps:
        best: tuple[float, Deviation, list[float], dict] | None = None
        for full_sweep in (False, True):
            if full_sweep:
                if best is not None and best[0] >= MIN_GAIN:
                    break
                stale = dict.fromkeys(stale, math.inf)
            for dev in sorted(catalogue, key=lambda d: -stale[d.key]):
                if best is not None and stale[dev.key] <= best[0]:
                    break
                trial = _merge(devs, dev)
                if trial is None:
                    stale[dev.key] = -math.inf
                    continue
                new = [scorer.score(i, trial) if dev.shows_on(scorer.obs[i].case) else current[i] for i in range(n)]
                gain = sum(current) - sum(new)
                stale[dev.key] = gain
                if best is None or gain > best[0]:
                    best = (gain, dev, new, trial)
        if best is None or best[0] < MIN_GAIN:
            break
        _, dev, current, devs = best
        chosen.append(dev)
    return _prune(scorer, chosen)


def _prune(scorer: Scorer, chosen: list[Deviation]) -> list[Deviation]:
    """Drop a chosen deviation when the others explain as much without it."""
    kept = list(chosen)
    for dev in list(reversed(chosen)):
        others = [d for d in kept if d is not dev]
        if _total(scorer, others) <= _total(scorer, kept):
            kept = others
    return kept


def _switches(devs: Sequence[Deviation]) -> dict[str, object]:
    out: dict[str, object] = {}
    for d in devs:
        out.update(d.changes)
    return out


def _total(scorer: Scorer, devs: Sequence[Deviation]) -> float:
    switches = _switches(devs)
    return sum(scorer.score(i, switches) for i in range(len(scorer.obs)))


def explain(observations: Sequence[Observation], labels: Sequence[str], probe_count: int | None = None) -> Explanation:
    """Search on the first ``probe_count`` observations, then check the explanation on all of them."""
    probe_count = len(observations) if probe_count is None else probe_count
    searched = Scorer(observations[:probe_count])
    chosen = search(searched)
    scorer = Scorer(observations)
    label_of = [labels[i] for i, o in enumerate(observations) if o.got is not None]
    all_switches = _switches(chosen)
    result = Explanation(changes=all_switches)
    for i, o in enumerate(scorer.obs):
        r = scorer.ratio(i, all_switches)
        result.residual = max(result.residual, r * o.bound)
        if r > 1.0:
            result.explained = False
            result.unexplained.append(label_of[i])
    for dev in chosen:
        without = _switches([d for d in chosen if d is not dev])
        where = [i for i, o in enumerate(scorer.obs) if dev.shows_on(o.case)
                 and scorer.ratio(i, without) > max(1.0, 2 * scorer.ratio(i, all_switches))]
        def worst(devs: dict[str, object], where: list[int] = where) -> float:
            return max((scorer.ratio(i, devs) * scorer.obs[i].bound for i in where), default=0.0)
        result.causes.append(Cause(
            dev.key, dev.cause, dev.does, dev.fix, dev.sites, [label_of[i] for i in where],
            worst({}), worst(all_switches), worst(without), alternatives=_twins(scorer, chosen, dev),
        ))
    return result


def _twins(scorer: Scorer, chosen: list[Deviation], dev: Deviation) -> list[str]:
    """Deviations of the same cause that explain these cases exactly as well as ``dev``."""
    others = [d for d in chosen if d is not dev]
    best = _total(scorer, chosen)
    twins = []
    for alt in CATALOGUE:
        if alt is dev or alt.cause != dev.cause or _merge(_switches(others), alt) is None:
            continue
        if _total(scorer, [*others, alt]) <= best:
            twins.append(alt.does)
    return twins


def dropout_in_eval(target: Target, first: Observation, device: torch.device | str = "cpu") -> Cause | None:
    """Run the target twice in eval mode on a dropout > 0 case: different outputs mean dropout is active."""
    if first.got is None or first.case.config.dropout == 0:
        return None
    try:
        again = observe(target, first.case, device)
    except NotSupportedError:
        return None
    if again.got is None:
        return None
    ratio = first.ratio(again.got)
    if ratio <= 1.0:
        return None
    spread = ratio * first.bound
    return Cause(
        "dropout_in_eval", "dropout active in eval", "gives a different output each run in eval mode "
        f"(two runs on the same input differ by {spread:.3g}): dropout is applied although model.eval() was called",
        "use nn.Dropout modules (or F.dropout(x, p, training=self.training)), never training=True",
        (), [first.case.describe()], first.max_abs, spread, spread, probe="twice in eval",
    )
