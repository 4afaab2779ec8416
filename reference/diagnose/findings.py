"""From the families' verdicts to the causes: the observations, randomness in eval, localization, the merge.

- ``observe_families``: every family that ran, observed again for the probes (first cases searched, second
  ones checking); crashing families keep their first observation for crash findings;
- ``random_in_eval``: an observation whose output changes between two runs of the same model is random
  (dropout active in eval, whatever the configuration says): named once, kept out of the variant search;
- ``localize_some``: the first family where the map reaches: the divergent families (deterministic first),
  then those making NaN; each one the map cannot reach is tried in turn, and when none can be localized the
  reason for each is given (never an empty section);
- ``merge``: the causes measured at the place join the whole-output causes (evidence for them, or new causes
  where the whole outputs left a gap); a whole-output cause that an exact measurement at the place
  contradicts (another deviation of the same kind explains the place entirely) is dropped.
"""

from __future__ import annotations

import math
import re

import torch

import reference.diagnose.families as fam
from reference.catalogue import BY_KEY
from reference.diagnose.gradients import gradient_table, norm_fits
from reference.diagnose.localize import Localization, Replay, localize
from reference.diagnose.place import Finding, probe_places
from reference.diagnose.plot import maps_of
from reference.diagnose.probes import Cause, dropout_in_eval, varies
from reference.diagnose.report import Diagnosis
from reference.diagnose.runs import Observation, observe
from reference.targets.contract import NotSupportedError, Target

MAX_TRIES = 6  # families tried for localization before giving up


def observe_families(target: Target, families: list[fam.Family], device: torch.device | str,
                     level: str) -> list[tuple[str, Observation, bool]]:
    """The probe observations of every family that ran: (label, observation, is it the family's first case)."""
    observed = []
    for f in families:
        if f.verdict == "not supported":
            continue
        for j, case in enumerate(f.cases):
            try:
                obs = observe(target, case, device, level)
            except NotSupportedError:
                continue
            if f.verdict == "crashes" and j == 0:
                f.crash_obs = obs
            if f.verdict != "crashes":
                observed.append((f.name if j == 0 else f"{f.name} (2nd)", obs, j == 0))
    return observed


def random_in_eval(d: Diagnosis, observed: list[tuple[str, Observation, bool]], target: Target,
                   device: torch.device | str) -> set[str]:
    """The labels whose outputs vary between two runs in eval mode; the cause (once), when any does."""
    random = {label for label, o, _ in observed if varies(o) > 1.0}
    first = [(label, o) for label, o, is_first in observed if is_first and label in random]
    first.sort(key=lambda item: not item[0].startswith("dropout"))  # the dropout family's, when it has one
    for _, o in first:
        cause = dropout_in_eval(target, o, device)
        if cause is not None:
            d.extra_causes.append(cause)
            break
    return random


def localize_some(d: Diagnosis, by_name: dict[str, Observation], random: set[str]) -> None:
    """Localize the first family the map reaches (deterministic divergent ones, random ones, then NaN ones) and
    measure causes at its place; when none, say why for each family tried."""
    divergent = [f for f in d.families if f.verdict == "divergent" and f.name in by_name]
    divergent.sort(key=lambda f: f.name in random)
    nan = [f for f in d.families if f.verdict == "crashes" and f.crash_obs is not None and f.crash_obs.got is not None]
    if not divergent and not nan:
        crashed = [c for c in d.crashes if c.where]
        d.not_localized = ("no family diverges with finite outputs; the crashes are localized in 3" if crashed else
                           "no family diverges with finite outputs, and the crashes could not be localized")
        return
    reasons = []
    for family in [*divergent, *nan][:MAX_TRIES]:
        obs = by_name[family.name] if family.verdict == "divergent" else family.crash_obs
        assert obs is not None
        try:
            tables, note, replay = localize(obs)
        except Exception as exc:  # hooks on the target's modules failed: say so, try another family
            reasons.append(f"{family.name}: localization failed on the target: {type(exc).__name__}: {exc}")
            continue
        if not any(t.rows for t in tables):
            why = note or next((t.note for t in tables if t.note), "") or (
                "the map pairs modules, but none of them was called" if tables else "nothing was compared")
            reasons.append(f"{family.name}: {why}")
            continue
        d.localized_family, d.localization = family.name, tables
        d.maps = maps_of(tables, replay, obs.case)
        if reasons:
            d.notes.append("localized on " + family.name + ", where the map reaches; not on " + "; ".join(reasons))
        merge(d, probe_places(obs, tables, replay), family.name, family.name in random)
        if replay is not None and family.verdict == "divergent":
            _gradients_only(d, tables, replay, family.name)
        return
    d.not_localized = "no family tried could be localized: " + "; ".join(reasons)


def _gradients_only(d: Diagnosis, tables: list[Localization], replay: Replay, family: str) -> None:
    """Every mapped submodule's output agrees: the place is where the input gradients first differ."""
    isolated = next((t for t in tables if t.mode == "isolated" and t.rows), None)
    if isolated is None or isolated.first is not None:
        return
    table, grads = gradient_table(replay, isolated)
    d.localization.append(table)
    row = table.first
    if row is None:
        return
    findings = norm_fits(replay, row, grads[row.name])
    merge(d, findings, family)
    if not findings:
        d.unexplained = (f"{row.name or 'the module itself'} (the target's {row.target_module}): its input gradient "
                         f"differs by {row.max_abs:.3g} (tolerance {row.bound:.3g}) on {family}, its output does not; "
                         "no fit accounts for it")


def merge(d: Diagnosis, findings: list[Finding], family: str, random: bool = False) -> None:
    """Place findings: evidence for causes already found; new causes only where the whole outputs left a gap."""
    by_key = {c.key: c for c in d.causes}
    explained = d.explanation is not None and d.explanation.explained and bool(d.causes)
    for f in findings:
        cause = by_key.get(f.key or f.what)
        if cause is not None:
            cause.fix = f.fix or cause.fix  # measured at the place, in the layout its data had there
            if not cause.place_module and math.isnan(cause.place_before):
                cause.place, cause.place_module, cause.place_before, cause.place_after = (
                    f.place, f.target_module, f.before, f.after)
                cause.place_explains = f.explains
            continue
        if explained:
            continue
        dev = BY_KEY.get(f.key or "")
        what = f.what.removeprefix("it ")
        fix = f.fix or (dev.fix if dev else "")
        d.extra_causes.append(Cause(
            key=f.key or "measured", cause=dev.cause if dev else f.cause or "measured at the place", does=what,
            fix=fix, sites=(f.place,),
            shows_on=[family], err_vs_builtin=f.before, err_vs_explanation=f.after, err_without_it=f.before,
            probe=f.probe, place=f.place, place_module=f.target_module,
            place_before=f.before, place_after=f.after, place_explains=f.explains))
        by_key[f.key or f.what] = d.extra_causes[-1]
    if not explained:
        _drop_contradicted(d, findings)
    isolated = next((t for t in d.localization if t.mode == "isolated" and t.rows), None)
    if explained or isolated is None or (random and any(c.probe == "twice in eval" for c in d.causes)):
        return  # a random family's place is where the randomness shows, which its cause names
    row = isolated.first
    if row is None:  # every mapped submodule agrees: ``after_the_last`` says so once every cause is in
        return
    inside = [r.name for r in isolated.rows if r.name.startswith(f"{row.name}.") and r.passed and not r.fed_passed]
    if not any(f.explains and (f.place == row.name or (not row.passed and inside and f.place == inside[0]))
               for f in findings):  # a layer's own code is the sums between its parts: the first fed one says it
        before = [r.name for r in isolated.rows[:isolated.rows.index(row)] if r.name.rsplit(".", 1)[0]
                  == row.name.rsplit(".", 1)[0]]
        between = f" (the code between {before[-1]} and it: residuals, norm placement, activation)" if before else ""
        own = f"its own output differs by {row.max_abs:.3g} (tolerance {row.bound:.3g})" if not row.passed else \
            f"the input the target gives it differs by {row.fed_max_abs:.3g}{between}"
        d.unexplained = (f"{row.name or 'the module itself'}" + (f" (the target's {row.target_module})"
                         if row.target_module else "") + f": {own} on {family}; no catalogue deviation or fit "
                         "accounts for it")


def after_the_last(d: Diagnosis) -> None:
    """A divergent target with no cause, nothing unexplained, and an isolated table where every mapped submodule
    agrees (and no gradient table places it): the place is the code after the last of them."""
    isolated = next((t for t in d.localization if t.mode == "isolated" and t.rows), None)
    placed = any(t.first is not None for t in d.localization)
    if d.verdict != "divergent" or d.causes or d.unexplained or isolated is None or placed:
        return
    last = isolated.rows[-1]
    if last.name:
        d.unexplained = (f"after {last.name}" + (f" (the target's {last.target_module})" if last.target_module
                         else "") + ": every mapped submodule agrees, yet the output differs: the code after the "
                         "last of them (an activation, a norm, a sum) does; no catalogue deviation or fit accounts "
                         "for it")


def _drop_contradicted(d: Diagnosis, findings: list[Finding]) -> None:
    """Whole-output causes a place measurement contradicts: one of the same kind explains that place entirely,
    and they were never confirmed at a place (the whole-output search settled for the nearest deviation)."""
    exact = [f for f in findings if f.explains]
    if d.explanation is None or not exact:
        return
    keys = {f.key for f in exact}

    def contradicted(c: Cause) -> bool:
        return math.isnan(c.place_before) and c.key not in keys and any(
            (BY_KEY[f.key].cause if f.key in BY_KEY else f.cause) == c.cause
            and any(re.search(site, f".{f.place}") or re.search(site, f.place) for site in c.sites)
            for f in exact)  # sites: ".norm1$", ...; "^$" the module itself

    d.explanation.causes = [c for c in d.explanation.causes if not contradicted(c)]


def best_match(families: list[fam.Family]) -> str:
    """One line on the built-in configuration the target follows when it matches none asked for."""
    asked = families[0] if families else None
    if asked is None or asked.verdict != "divergent" or not asked.closest:
        return ""
    if asked.closest_matches:
        return f"matches {asked.closest}, not the configuration asked for ({asked.name})"
    return (f"matches no configuration asked for; closest configuration: {asked.closest} "
            f"(the other causes below account for the rest)")


# Claims of deviations that only read the weights in another order (a permutation of rows, the same on the way out):
# the packed q/k/v rows in any order, each head's features by a stride. (A split without the transpose mixes
# positions: a bug whatever the weights.)
def _reorders(slot: str, value: object) -> bool:
    return slot == "qkv.rows" or (slot, value) == ("heads.split", "interleaved")


def weight_layouts(d: Diagnosis) -> None:
    """An inferred target's weight map is measured, not given: a deviation that only reads the weights in another
    order (the packed q/k/v rows, the features of each head) is a layout its own weights may have, which a bug kept
    the map from verifying: a note, never a cause (a per-head packed q/k/v projection is valid code)."""
    def layout(c: Cause) -> bool:
        dev = BY_KEY.get(c.key)
        return dev is not None and bool(dev.claims) and all(_reorders(slot, value) for slot, value in dev.claims)

    moved = [c for c in d.causes if layout(c)]
    if d.explanation is not None:
        d.explanation.causes = [c for c in d.explanation.causes if not layout(c)]
    d.extra_causes = [c for c in d.extra_causes if not layout(c)]
    d.notes += [f"its weights are laid out so that it {c.does} (measured as a whole-model variant); the weight map "
                "could not verify that layout, since the difference below hid it: a layout of its weights, not a "
                "cause" for c in moved]
