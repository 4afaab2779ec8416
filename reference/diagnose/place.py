"""Causes measured at the place that differs: the localized submodule probed in isolation, at its own level.

Localization (localize.py) records, in isolated mode, the exact call the built-in's submodule received and
the output the target's module gives for that same input. Two kinds of probe then run *there* alone:

- the **catalogue at the place**: handmade at the target's level, loaded with the same weights, carries
  candidate deviations from the bug catalogue (planted as everywhere else: ``Deviation.apply``) and its
  submodule of the same name is called exactly as the built-in's was; the search keeps the deviations that
  bring it closest to the target's module (probes.search);
- **fits** (fits.py): the component's formula with one thing changed and its numbers fitted (a LayerNorm's
  eps, the attention's score scale, the activation between the two linears, ...).

Every finding carries its evidence by one rule (``kept``): the error at the place before and after, against
the place's tolerance; a finding that does not at least halve an error above the tolerance is dropped.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

import reference.diagnose.fits as fits
import reference.diagnose.sums as sums
from reference.catalogue import BY_KEY, Deviation, apply_all
from reference.diagnose.hooks import _first_tensor
from reference.diagnose.localize import Localization, Replay, SubmoduleError
from reference.diagnose.mapping import GROUP, members
from reference.diagnose.probes import VARIANTS, candidate, fresh_modules, search, shows
from reference.diagnose.runs import Observation, bound_for, config_of, max_err
from reference.diagnose.sources import fed_source, unpaired_norms


@dataclass(kw_only=True)
class Finding:
    """A cause measured at one place: what it is, and the error there before and after accounting for it."""

    place: str
    target_module: str
    what: str
    key: str | None
    fix: str
    before: float
    after: float
    bound: float
    probe: str  # "catalogue at the place" | "fit"
    cause: str = ""  # what kind of cause a measured finding is (a catalogue key's deviation says its own)

    @property
    def explains(self) -> bool:
        return self.after <= self.bound


def kept(before: float, after: float, bound: float) -> bool:
    """The one evidence rule: the error was above the tolerance and the finding removes at least half of it."""
    return before > bound and math.isfinite(after) and after <= before / 2  # NaN where the built-in is finite: inf


class PlaceScorer:
    """probes.search's scorer, for one place: handmade's submodule replayed with the built-in's call."""

    def __init__(self, obs: Observation, name: str, call: tuple[tuple, dict], got: Tensor, bound: float) -> None:
        self.obs, self.name, self.call, self.got, self.bound = [obs], name, call, got, bound
        self.base = candidate(obs)
        self.memo: dict[frozenset[str], float] = {}

    def ratio(self, i: int, deviations: Sequence[Deviation]) -> float:
        key = frozenset(d.key for d in deviations)
        if key not in self.memo:
            try:
                model = apply_all(fresh_modules(self.base), config_of(self.obs[0].case), deviations)
                module = model.get_submodule(self.name) if self.name else model
                args, kwargs = self.call
                with torch.no_grad():
                    out = _first_tensor(module(*args, **kwargs))
                self.memo[key] = math.inf if out is None else max_err(self.got, out) / self.bound
            except Exception:
                self.memo[key] = math.inf
        return self.memo[key]

    def score(self, i: int, deviations: Sequence[Deviation]) -> float:
        r = self.ratio(i, deviations)
        return 30.0 if not math.isfinite(r) else math.log10(max(r, 1.0))


def _catalogue(obs: Observation, row: SubmoduleError, replay: Replay) -> list[Finding]:
    got, expected = replay.got[row.name], replay.expected[row.name]
    bound = bound_for(expected)
    scorer = PlaceScorer(obs, row.name, replay.calls[row.name], got, bound)
    pool = [d for d in VARIANTS if shows(d, obs.case)]
    chosen = search(scorer, pool, max_steps=3)  # type: ignore[arg-type]
    before = scorer.ratio(0, []) * bound
    out = []
    for dev in chosen:
        after = scorer.ratio(0, chosen) * bound
        without = scorer.ratio(0, [d for d in chosen if d is not dev]) * bound
        if kept(without, after, bound):
            out.append(Finding(place=row.name, target_module=row.target_module, what=f"it {dev.does}", key=dev.key,
                               fix=dev.fix, before=before, after=after, bound=bound,
                               probe="catalogue at the place"))
    return out


def _fits(row: SubmoduleError, replay: Replay) -> list[Finding]:
    got, expected = replay.got[row.name], replay.expected[row.name]
    bound = bound_for(expected)
    args, kwargs = replay.calls[row.name]
    try:
        found = fits.fit_component(replay.modules[row.name], args, kwargs, expected, got)
    except Exception:  # a fit that cannot run on this module's call says nothing: the other probes still do
        return []
    module = replay.modules[row.name]
    return [Finding(place=row.name, target_module=row.target_module, what=f.what, key=f.key, fix=f.fix, before=f.before,
                    after=f.after, bound=bound, probe="fit", cause=_kind(module, f))
            for f in found if kept(f.before, f.after, bound)]


def _kind(module: torch.nn.Module, fit: fits.Fit) -> str:
    """What kind of cause a fit is: its catalogue entry's, else the component's formula it changes."""
    if fit.key in BY_KEY:
        return BY_KEY[fit.key].cause
    if isinstance(module, torch.nn.LayerNorm):
        return "layer-norm formula"
    if isinstance(module, torch.nn.MultiheadAttention):
        if fit.what.startswith("heads"):
            return "head merge order"
        return "attention scale" if fit.what.startswith("scores scaled") else "attention formula"
    return "linear layer" if isinstance(module, torch.nn.Linear) else ""


def _activation(row: SubmoduleError, replay: Replay) -> list[Finding]:
    """The function between linear1 and linear2, when the input the target gives linear2 differs."""
    sibling = re.sub(r"linear2$", "linear1", row.name)
    if sibling == row.name or sibling not in replay.expected or row.name not in replay.fed:
        return []
    pre, post = replay.expected[sibling], replay.fed[row.name]
    reference = replay.calls[row.name][0][0] if replay.calls[row.name][0] else None
    if not isinstance(reference, Tensor) or pre.shape != post.shape:
        return []
    bound = bound_for(reference)
    try:
        found = sums.fit_activation(pre, post)
    except Exception:  # as above
        return []
    return [Finding(place=row.name, target_module=row.target_module,
                    what=f"between linear1 and linear2 it applies {f.what}", key=f.key, fix="",
                    before=f.before, after=f.after, bound=bound, probe="fit") for f in found if kept(f.before, f.after,
                                                                                                     bound)]


def _measured(row: SubmoduleError, found: list[sums.Measured], bound: float) -> list[Finding]:
    return [Finding(place=row.name, target_module=row.target_module, what=m.what, key=m.key, fix=m.fix,
                    before=m.before, after=m.after, bound=bound, probe="fit", cause=m.cause)
            for m in found]


def _paired(reference: Tensor | None, observed: Tensor | None) -> tuple[Tensor, Tensor, float] | None:
    """(the built-in's tensor, the target's, the bound) when both are there with one shape; else None."""
    if reference is None or observed is None or reference.shape != observed.shape:
        return None
    return reference, observed, bound_for(reference)


def _fed(row: SubmoduleError, replay: Replay) -> tuple[Tensor, Tensor, float] | None:
    """What the target feeds the place, against the input the built-in gave it (``_paired``)."""
    reference = sums._first(replay.calls[row.name][0]) if row.name in replay.calls else None
    return _paired(reference, replay.fed.get(row.name))


def _residual(obs: Observation, row: SubmoduleError, replay: Replay, fed: bool) -> list[Finding]:
    """The residual sum the target gives a place: as its input (fed) or, for a layer, as its output."""
    pair = _fed(row, replay) if fed else _paired(replay.expected.get(row.name), replay.got.get(row.name))
    if pair is None:
        return []
    reference, observed, bound = pair
    found = sums.residual(row.name, obs.entry.builtin.split(" with ")[0], reference, observed, replay.calls,
                          replay.expected, bound, obs.builtin)
    return _measured(row, found, bound)


def _placement(obs: Observation, row: SubmoduleError, replay: Replay) -> list[Finding]:
    """A norm fed x + f(x) where the built-in (pre-norm) feeds it x: the target normalizes after the residual."""
    pair = _fed(row, replay)
    if pair is None:
        return []
    reference, observed, bound = pair
    return _measured(row, sums.placement(row.name, obs.builtin, reference, observed, replay.calls, replay.expected,
                                         bound, replay.fed), bound)


def _source(obs: Observation, row: SubmoduleError, replay: Replay) -> list[Finding]:
    """A place fed another tensor of the layer, or one through a norm of the target's own (sources.py)."""
    pair = _fed(row, replay)
    if pair is None:
        return []
    reference, observed, bound = pair
    norms = unpaired_norms(obs.model, {id(m) for n, m in replay.targets.items() if n in replay.calls})
    return _measured(row, fed_source(row.name, obs.entry.builtin.split(" with ")[0], reference, observed,
                                     replay.calls, replay.expected, bound, norms), bound)


def _group(obs: Observation, row: SubmoduleError, replay: Replay) -> list[Finding]:
    """A site standing for linear1 and linear2 together: the activation between them."""
    parts = members(row.name)
    x = sums._first(replay.calls[row.name][0]) if row.name in replay.calls else None
    if [p.rpartition(".")[2] for p in parts] != ["linear1", "linear2"] or x is None:
        return []
    expected, got = replay.expected[row.name], replay.got[row.name]
    bound = bound_for(expected)
    linear1, linear2 = (obs.builtin.get_submodule(p) for p in parts)
    return _measured(row, sums.feed_forward(linear1, linear2, x, expected, got, bound), bound)


def probe_places(obs: Observation, tables: list[Localization], replay: Replay | None,
                 limit: int = 2) -> list[Finding]:
    """Findings at the first places that differ in isolated mode (own computation first, then fed inputs)."""
    isolated = next((t for t in tables if t.mode == "isolated" and t.rows), None)
    if isolated is None or replay is None:
        return []
    findings: list[Finding] = []
    own = [r for r in isolated.rows if not r.passed and r.name in replay.got][:limit]
    fed = [r for r in isolated.rows if r.passed and not r.fed_passed][:limit]
    fed_found = [f for row in fed for f in _activation(row, replay)  # a placement found is not a residual bug too
                 + (_placement(obs, row, replay) or _residual(obs, row, replay, fed=True)
                    or _source(obs, row, replay))]
    for row in own:
        if GROUP in row.name:
            found = _group(obs, row, replay)
        else:
            found = _catalogue(obs, row, replay) + _fits(row, replay) + _residual(obs, row, replay, fed=False)
        found = _best(sorted(found, key=lambda f: (f.after, f.probe != "catalogue at the place")))
        inside = next((r.name for r in fed if r.name.startswith(f"{row.name}.")), None)
        if any(f.explains and f.place == inside for f in fed_found):  # a layer's own code: the sums between its
            found = [f for f in found if f.explains]  # parts, which the first fed place inside it measures
        findings += found
    return _dedupe(findings + fed_found)


def _best(findings: list[Finding]) -> list[Finding]:
    """At one place: the findings that remove the whole error there, when any does; else every one kept (none
    alone explains the place, so each may be a part of it). A fit that only lessens an error another removes
    entirely is that one's shadow, not a second cause."""
    exact = [f for f in findings if f.explains]
    return exact or findings


def _dedupe(findings: list[Finding]) -> list[Finding]:
    """One finding per (place, key); a fit naming a key already found there by the catalogue goes."""
    seen: set[tuple[str, Any]] = set()
    out = []
    for f in findings:
        mark = (f.place, f.key or f.what)
        if mark not in seen:
            seen.add(mark)
            out.append(f)
    return out
