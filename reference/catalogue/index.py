"""The catalogue in order and by key, and planting several deviations at once (``apply_all``)."""


from __future__ import annotations

from collections.abc import Iterable, Mapping

from torch import nn

import reference.catalogue.attention_inputs as attention_inputs
import reference.catalogue.attention_math as attention_math
import reference.catalogue.feed_forward as feed_forward
import reference.catalogue.heads as heads
import reference.catalogue.masks as masks
import reference.catalogue.norms as norms
import reference.catalogue.wiring as wiring
from reference.catalogue._base import Deviation

# Catalogue order is also the order deviations are planted in (apply_all): a skipped norm is planted after
# the LayerNorm formula bugs, so that it wins on the final norms.
CATALOGUE: tuple[Deviation, ...] = (
    *wiring.CATALOGUE, *norms.CATALOGUE, *attention_math.CATALOGUE, *heads.CATALOGUE, *masks.CATALOGUE,
    *feed_forward.CATALOGUE, *attention_inputs.CATALOGUE,
)
BY_KEY: dict[str, Deviation] = {d.key: d for d in CATALOGUE}
ORDER = {d.key: i for i, d in enumerate(CATALOGUE)}
if len(BY_KEY) != len(CATALOGUE):
    raise RuntimeError("two catalogue deviations share a key")


def claims_of(deviations: Iterable[Deviation]) -> dict[str, object] | None:
    """The slots the deviations change, with their values; None when two of them claim one slot differently."""
    out: dict[str, object] = {}
    for d in deviations:
        for slot, value in d.claims:
            if out.setdefault(slot, value) != value:
                return None
    return out


def extends(chosen: Iterable[Deviation], candidate: Deviation) -> bool:
    """Whether ``candidate`` holds together with ``chosen`` and changes something they do not."""
    held = claims_of(chosen)
    if held is None or claims_of([*chosen, candidate]) is None:
        return False
    return any(held.get(slot, _ABSENT) != value for slot, value in candidate.claims)


_ABSENT = object()


def apply_all(model: nn.Module, config: Mapping[str, object], deviations: Iterable[Deviation]) -> nn.Module:
    """Plant ``deviations`` (in catalogue order) into ``model``; returns it."""
    for d in sorted(deviations, key=lambda d: ORDER.get(d.key, len(ORDER))):
        d.apply(model, config)
    return model
