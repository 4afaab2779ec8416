"""A target the harness could not resolve at all is UNRESOLVED, not a target that crashes.

Inference builds the target, pairs its weights with the built-in's and finds how to call it before anything
runs against the built-in. When that fails for every configuration (no map pairs, no constructor call works,
no call convention runs), every family fails with the resolver's message, which is not the target's own
failure: the target never ran against the built-in. So diagnosis asks the resolver itself (its discovery is
measured once and kept; ``prepare.unresolved``, which check asks too, so both say the same) and, when it
fails, says so with its reason instead of listing crashes.
"""

from __future__ import annotations

from reference.diagnose.report import Diagnosis
from reference.inference.prepare import unresolved
from reference.targets.contract import Target


def resolver_failure(d: Diagnosis, target: Target, level: str) -> str:
    """The resolver's reason when every family that ran crashed and the resolver itself fails; else ""."""
    verdicts = {f.verdict for f in d.families}
    if not d.kind.startswith("inferred") or "crashes" not in verdicts or not verdicts <= {"crashes", "not supported"}:
        return ""
    return "; ".join(why for _, why in unresolved(target, level))


def mark_unresolved(d: Diagnosis, target: Target, level: str) -> bool:
    """Set ``d`` UNRESOLVED with the resolver's reason when the target could not be resolved; True if so."""
    reason = resolver_failure(d, target, level)
    if not reason:
        return False
    d.verdict, d.unresolved = "unresolved", reason
    for f in d.families:
        if f.verdict == "crashes":
            f.verdict, f.detail = "unresolved", "not run: the target could not be resolved (see above)"
    d.not_localized = "nothing to localize: the target was never run against the built-in"
    d.reproducer_note = "none: the target was never run against the built-in"
    return True
