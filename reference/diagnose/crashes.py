"""Crashes as findings: each crashing family with its message, where it starts, and a deviation crashing alike."""

from __future__ import annotations

import math

import torch

from reference.diagnose.localize import Localization, localize, where_raised
from reference.diagnose.probes import Cause, same_crash
from reference.diagnose.report import CrashFinding, Diagnosis
from reference.diagnose.runs import Observation
from reference.targets.contract import Target


def crash_causes(d: Diagnosis, by_name: dict[str, Observation], target: Target, device: torch.device | str,
                  level: str) -> list[Cause]:
    """Each crashing family as a finding (its place and message), and a deviation crashing the same way."""
    found: list[Cause] = []
    for f in d.families:
        obs = f.crash_obs
        if f.verdict != "crashes" or obs is None:
            continue
        where, place = crash_place(obs)
        d.crashes.append(CrashFinding(f.name, f.detail, where, place))
        cause = same_crash(obs)
        if cause is not None and cause.key not in {c.key for c in [*d.causes, *found]}:
            found.append(cause)
    return found


def crash_place(obs: Observation) -> tuple[str, str]:
    """Where a crash starts, in words, and the built-in submodule there: the module that raised, or the first
    submodule with NaN/inf."""
    if obs.error is not None:
        return where_raised(obs)
    try:
        tables: list[Localization] = localize(obs)[0]
    except Exception:
        return "", ""
    for t in tables:
        row = next((r for r in t.rows if "NaN" in r.note or not math.isfinite(r.max_abs)), None)
        if t.mode == "propagated" and row is not None:
            return (f"first NaN/inf at {row.name or 'the module itself'}"
                    + (f" (the target's {row.target_module})" if row.target_module else "")), row.name
    return "", ""
