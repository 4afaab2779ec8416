"""Causes, each backed by a probe run on the target: never guessed from names.

The main probe compares the target's outputs with handmade loaded with the same weights and carrying
candidate deviations from the bug catalogue (reference/catalogue), planted the way the bug zoo plants them.
A greedy search adds, one at a time, the deviation that brings the candidate closest to the target (in
orders of magnitude of error, summed over the probe cases) until it matches the target within the tolerance
or no deviation helps. Every deviation kept is a cause, reported with its numbers: the error against
nn.Transformer, against the candidate with every cause found, and against that candidate without this one.
Deviations whose outputs are random (dropout in eval) cannot be matched: their probe runs the target twice.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from reference.builtin.weights import copy_torch_to_handmade
from reference.catalogue import BY_KEY, CATALOGUE, Deviation, apply_all, extends
from reference.catalogue._base import inputs_apart
from reference.diagnose.runs import Observation, as_case, config_of, observe
from reference.targets.contract import NotSupportedError, Target
from reference.verdict.engine import outputs

MIN_GAIN = 0.3  # log10 units summed over cases: a deviation must at least halve one case's error
CRASHED = 30.0  # the score of a candidate that cannot run on a case
VARIANTS = tuple(d for d in CATALOGUE if d.probe == "variant")
TWICE = tuple(d for d in CATALOGUE if d.probe == "twice in eval")


def shows(dev: Deviation, case: object) -> bool:
    """Whether ``dev`` can show on ``case`` (any level's case, read as a whole-model one; the attention inputs it
    needs apart, apart on it)."""
    return dev.shows_on(as_case(case)) and inputs_apart(case, dev.distinct)


@dataclass(kw_only=True)
class Cause:
    """A cause whose probe fired, with the probe's numbers (max abs errors over the cases where it shows)."""

    key: str
    cause: str
    does: str
    fix: str
    sites: tuple[str, ...]
    shows_on: list[str]
    err_vs_builtin: float
    err_vs_explanation: float
    err_without_it: float
    probe: str = "variant"
    alternatives: list[str] = field(default_factory=list)  # other deviations these cases cannot tell apart
    place: str = ""  # the built-in submodule where it was measured in isolation (place.py), if it was
    place_module: str = ""  # the target's module there
    place_before: float = math.nan  # the error there, before and after accounting for it
    place_after: float = math.nan
    place_explains: bool = False  # the target's module there equals the built-in's with this change


@dataclass(kw_only=True)
class Explanation:
    """The causes found and how much of the difference they account for."""

    causes: list[Cause] = field(default_factory=list)
    explained: bool = True
    residual: float = 0.0  # max abs err of the target against the variant with every cause
    unexplained: list[str] = field(default_factory=list)  # case labels the causes do not account for
    keys: list[str] = field(default_factory=list)  # the catalogue keys of the causes, in the order found


def candidate(obs: Observation, deviations: Sequence[Deviation] = ()) -> nn.Module:
    """handmade at ``obs``'s level with the built-in's weights (float64, eval) and ``deviations`` planted."""
    model = obs.entry.build("handmade", obs.case)
    copy_torch_to_handmade(obs.builtin, model)
    return apply_all(model.eval(), config_of(obs.case), deviations)


def run_candidate(obs: Observation, model: nn.Module) -> dict[str, torch.Tensor]:
    """A candidate's outputs on ``obs``'s inputs, called the way the level calls its built-in."""
    with torch.no_grad():
        return outputs(obs.entry.call(model, **obs.inputs, **obs.kwargs))


def fresh_modules(module: nn.Module, memo: dict[int, nn.Module] | None = None) -> nn.Module:
    """A copy of ``module``'s tree of modules that shares its parameters and buffers (a deviation plants by
    changing modules, never tensors); shared modules stay shared. Several times faster than a deepcopy."""
    memo = {} if memo is None else memo
    if id(module) not in memo:
        new = copy.copy(module)
        memo[id(module)] = new
        new._modules = {k: None if m is None else fresh_modules(m, memo) for k, m in module._modules.items()}
        new._parameters, new._buffers = dict(module._parameters), dict(module._buffers)
    return memo[id(module)]


class Scorer:
    """Scores candidates against the target's outputs, memoized; each observation's loaded handmade is reused."""

    def __init__(self, observations: Sequence[Observation]) -> None:
        self.obs = [o for o in observations if o.got is not None]
        self.memo: dict[tuple[int, frozenset[str]], float] = {}
        self.bases: dict[int, nn.Module] = {}

    def ratio(self, i: int, deviations: Sequence[Deviation]) -> float:
        """max |target - candidate| / bound on observation ``i``."""
        key = (i, frozenset(d.key for d in deviations))
        if key not in self.memo:
            o = self.obs[i]
            try:
                if i not in self.bases:
                    self.bases[i] = candidate(o)
                model = apply_all(fresh_modules(self.bases[i]), config_of(o.case), deviations)
                self.memo[key] = o.ratio(run_candidate(o, model))
            except Exception:
                self.memo[key] = math.inf
        return self.memo[key]

    def score(self, i: int, deviations: Sequence[Deviation]) -> float:
        """Orders of magnitude above the tolerance (0 = matches)."""
        r = self.ratio(i, deviations)
        return CRASHED if not math.isfinite(r) else math.log10(max(r, 1.0))


def search(scorer: Scorer, catalogue: Sequence[Deviation] = VARIANTS, max_steps: int = 12) -> list[Deviation]:
    """Greedy: add the deviation that lowers the summed score most, until it is 0 or nothing helps.

    Lazy evaluation: a candidate is re-scored only while its last known gain could beat the best gain
    found in this step; before stopping, every candidate is re-scored once (a deviation can be hidden
    by larger ones early on and show once they are explained).
    """
    n = len(scorer.obs)
    chosen: list[Deviation] = []
    current = [scorer.score(i, chosen) for i in range(n)]
    stale = {d.key: math.inf for d in catalogue}
    while sum(current) > 0 and len(chosen) < max_steps:
        best: tuple[float, Deviation, list[float]] | None = None
        for full_sweep in (False, True):
            if full_sweep:
                if best is not None and best[0] >= MIN_GAIN:
                    break
                stale = dict.fromkeys(stale, math.inf)
            for dev in sorted(catalogue, key=lambda d: -stale[d.key]):
                if best is not None and stale[dev.key] <= best[0]:
                    break
                if not extends(chosen, dev):
                    stale[dev.key] = -math.inf
                    continue
                trial = [*chosen, dev]
                new = [scorer.score(i, trial) if shows(dev, scorer.obs[i].case) else current[i] for i in range(n)]
                gain = sum(current) - sum(new)
                stale[dev.key] = gain
                if best is None or gain > best[0]:
                    best = (gain, dev, new)
        if best is None or best[0] < MIN_GAIN:
            break
        _, dev, current = best
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


def _total(scorer: Scorer, devs: Sequence[Deviation]) -> float:
    return sum(scorer.score(i, devs) for i in range(len(scorer.obs)))


def explain(observations: Sequence[Observation], labels: Sequence[str], probe_count: int | None = None) -> Explanation:
    """Search on the first ``probe_count`` observations, then check the explanation on all of them."""
    probe_count = len(observations) if probe_count is None else probe_count
    searched = Scorer(observations[:probe_count])
    chosen = search(searched)
    scorer = Scorer(observations)
    scorer.bases.update(searched.bases)  # same observations first: reuse their loaded handmade
    label_of = [labels[i] for i, o in enumerate(observations) if o.got is not None]
    result = Explanation(keys=[d.key for d in chosen])
    for i, o in enumerate(scorer.obs):
        r = scorer.ratio(i, chosen)
        result.residual = max(result.residual, r * o.bound)
        if r > 1.0:
            result.explained = False
            result.unexplained.append(label_of[i])
    for dev in chosen:
        without = [d for d in chosen if d is not dev]
        where = [i for i, o in enumerate(scorer.obs) if shows(dev, o.case)
                 and scorer.ratio(i, without) > max(1.0, 2 * scorer.ratio(i, chosen))]
        if not where:  # no case where it removes at least half the error: no evidence, so no cause
            continue

        def worst(devs: Sequence[Deviation], where: list[int] = where) -> float:
            return max((scorer.ratio(i, devs) * scorer.obs[i].bound for i in where), default=0.0)

        result.causes.append(Cause(
            key=dev.key, cause=dev.cause, does=dev.does, fix=dev.fix, sites=dev.sites,
            shows_on=[label_of[i] for i in where],
            err_vs_builtin=worst([]), err_vs_explanation=worst(chosen), err_without_it=worst(without),
            alternatives=_twins(scorer, chosen, dev),
        ))
    return result


def _twins(scorer: Scorer, chosen: list[Deviation], dev: Deviation) -> list[str]:
    """Deviations of the same cause that explain these cases exactly as well as ``dev``."""
    others = [d for d in chosen if d is not dev]
    best = _total(scorer, chosen)
    twins = []
    for alt in VARIANTS:
        if alt is dev or alt.cause != dev.cause or not extends(others, alt):
            continue
        if _total(scorer, [*others, alt]) <= best:
            twins.append(alt.does)
    return twins


def dropout_in_eval(target: Target, first: Observation, device: torch.device | str = "cpu") -> Cause | None:
    """Run the target twice in eval mode on a case: different outputs mean dropout is active (whatever the case's
    dropout: a p written into the code is active too).

    Which dropout: the catalogue deviation (probe "twice in eval") whose sites hold the first submodule whose
    output differs between the two runs (the target's submodules() map); the feed-forward one without a map.
    """
    if first.got is None:
        return None
    try:
        again = observe(target, first.case, device, first.level)
    except NotSupportedError:
        return None
    if again.got is None:
        return None
    ratio = first.ratio(again.got)
    if ratio <= 1.0:
        return None
    spread = ratio * first.bound
    moving = _first_varying(first)
    dev = next((d for d in TWICE if moving and any(re.search(s, moving) for s in d.sites)), BY_KEY["dropout_in_eval"])
    where = f"; {moving} is the first submodule whose output varies" if moving else ""
    return Cause(
        key=dev.key, cause=dev.cause,
        does=f"gives a different output each run in eval mode (two runs on the same input differ by "
        f"{spread:.3g}{where}): it {dev.does}", fix=dev.fix, sites=dev.sites, shows_on=[str(first.case.describe())],
        err_vs_builtin=first.max_abs, err_vs_explanation=spread,
        err_without_it=spread, probe="twice in eval",
    )


def varies(obs: Observation) -> float:
    """How far the target's output moves between two runs of the same model on the same input, over the
    tolerance (0 for a deterministic target; random ones: dropout active in eval, whatever p is configured)."""
    if obs.got is None or obs.candidate is None or obs.model is None:
        return 0.0
    try:
        with torch.no_grad():
            again = outputs(obs.candidate.call(obs.model, obs.entry.call, {k: v.clone() for k, v in obs.inputs.items()},
                                               dict(obs.kwargs)))
    except Exception:
        return 0.0
    return obs.ratio({k: v.detach().to("cpu", torch.float64) for k, v in again.items()})


def _first_varying(obs: Observation) -> str:
    """The first mapped submodule (in completion order) whose output differs between two runs; "" if unknown."""
    from reference.diagnose.hooks import _Recorder
    from reference.diagnose.localize import _run
    from reference.diagnose.mapping import target_map, tracked

    names = tracked(obs.builtin)
    mapping, _ = target_map(obs, names)
    if not mapping:
        return ""
    runs = []
    for _ in range(2):
        rec = _Recorder(mapping, {n: i for i, n in enumerate(names)})
        if _run(obs, rec) is not None:
            return ""
        runs.append(rec)
    a, b = runs
    for name in a.order:
        x, y = a.outputs[name], b.outputs.get(name)
        if y is None or x.shape != y.shape or not torch.equal(x.nan_to_num(), y.nan_to_num()):
            return name
    return ""


def same_crash(obs: Observation) -> Cause | None:
    """The catalogue deviation with which handmade crashes exactly as the target did (same exception, same message).

    A crash has no output to compare, so the variant search cannot see it; a deviation that makes handmade fail
    in the very same way on the same case is the probe's candidate explanation.
    """
    if obs.got is not None or not obs.error or " raised " not in obs.error:
        return None
    wanted = obs.error.split(" raised ", 1)[1]
    for dev in VARIANTS:
        if not shows(dev, obs.case):
            continue
        try:
            run_candidate(obs, candidate(obs, [dev]))
        except Exception as exc:
            if f"{type(exc).__name__}: {exc}" == wanted:
                return Cause(key=dev.key, cause=dev.cause, does=dev.does, fix=dev.fix, sites=dev.sites,
                             shows_on=[str(obs.case.describe())], err_vs_builtin=math.inf,
                             err_vs_explanation=0.0, err_without_it=math.inf, probe="same crash")
    return None
