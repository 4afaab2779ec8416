"""The diagnosis as data, as text a learner can act on, and as JSON for machines."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import cast

from torch import Tensor

from reference.diagnose.families import Family
from reference.diagnose.localize import Localization
from reference.diagnose.probes import Cause, Explanation
from reference.diagnose.reproducer import Reproducer


@dataclass
class CrashFinding:
    """A family where the target crashes (raises, or NaN/inf where the built-in is finite): where and how."""

    family: str
    message: str
    where: str
    place: str = ""  # the built-in submodule where it starts, when known


@dataclass(kw_only=True)
class Diagnosis:
    """Everything ``parity diagnose`` found about one target."""

    target: str
    kind: str
    torch: str
    device: str
    level: str = "transformer"
    builtin: str = "nn.Transformer"
    verdict: str = "equivalent"  # equivalent | divergent | crashes | not supported | unresolved
    unresolved: str = ""  # the resolver's reason, when the target could not be resolved at all
    base: str = "default"  # the configuration the families vary from
    base_tried: list[str] = field(default_factory=list)  # the bases declined or crashing before it
    families: list[Family] = field(default_factory=list)
    crashes: list[CrashFinding] = field(default_factory=list)
    unexplained: str = ""  # the place no catalogue deviation or fit accounts for, with its evidence
    notes: list[str] = field(default_factory=list)  # what diagnosis measured about the target before judging
    best_match: str = ""
    localization: list[Localization] = field(default_factory=list)
    localized_family: str = ""  # the family whose first case was localized
    not_localized: str = ""
    explanation: Explanation | None = None
    extra_causes: list[Cause] = field(default_factory=list)
    reproducer: Reproducer | None = None
    reproducer_note: str = ""
    # the first submodule whose own output differs, fed the built-in's input: (name, built-in's, target's), 2-D
    maps: tuple[str, Tensor, Tensor] | None = field(default=None, metadata={"json": False})

    @property
    def explained(self) -> bool:
        """Whether the causes account for every difference: on every case, or (found only at the place that
        differs) there."""
        if self.unexplained or not self.causes:
            return False
        if self.explanation is not None and self.explanation.causes:
            return self.explanation.explained
        return all(c.place_explains for c in self.causes if not math.isnan(c.place_before))

    @property
    def causes(self) -> list[Cause]:
        return (self.explanation.causes if self.explanation else []) + self.extra_causes


def builtin_of(d: Diagnosis) -> str:
    """The built-in module compared against: "nn.TransformerEncoder with a causal mask" -> nn.TransformerEncoder."""
    return d.builtin.split(" with ")[0]


def headline(d: Diagnosis) -> str:
    """The verdict in one sentence or three: what it is, how many causes, whether they explain it all."""
    b = builtin_of(d)
    line = {"equivalent": f"EQUIVALENT: it matches {b} in every family tried.",
            "not supported": "NOT SUPPORTED: the target declined every configuration tried.",
            "crashes": f"CRASHES: it crashes where {b} computes an output.",
            "divergent": f"DIVERGENT: it differs from {b}.",
            "unresolved": f"UNRESOLVED: {d.unresolved}"}[d.verdict]
    if d.causes:
        line += f" {len(d.causes)} cause(s) found"
        line += (", and together they explain every difference." if d.explained
                 else "; they do not explain every difference (see 3).")
    crashed = [f.name for f in d.families if f.verdict == "crashes"]
    if crashed and d.verdict != "crashes":
        line += f" It also crashes on: {', '.join(crashed)} (see 3)."
    return line


def _plain(value: object) -> object:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if hasattr(value, "describe") and hasattr(value, "config"):  # a Case: its one-line description
            return value.describe()
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)
                if f.metadata.get("json", True)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def to_json(d: Diagnosis) -> str:
    """The diagnosis as JSON (non-finite numbers as the strings "inf" / "-inf", NaN as null)."""
    data = cast(dict[str, object], _plain(d))  # a dataclass: _plain makes it a dict of its fields
    data["causes"] = _plain(d.causes)
    data["first_diverging"] = {loc.mode: _plain(loc.first) for loc in d.localization}
    return json.dumps(data, indent=1)
