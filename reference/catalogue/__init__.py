"""The bug catalogue: every known way a hand-written Transformer differs from nn.Transformer, one key per bug.

Each entry is a ``Deviation`` (``_base.py``): what the code does wrong, the fix, the cause family, the
nn.Transformer submodules where it shows, which cases can reveal it, and ``apply(model, config)``, which
plants it into a handmade model by swapping modules for faulty subclasses. Modules, one per family:

- attention_math.py  equation 1: scale, softmax, masking step, attention dropout
- masks.py           mask polarity, float masks, padding, causal hints, per-head layout, ignored masks
- heads.py           head split and merge, q/k/v rows of the weight port, the output projection
- norms.py           the LayerNorm formula, its eps, final norms skipped
- wiring.py          norm placement, residuals, shared layers and attentions, cross-attention inputs
- feed_forward.py    activation, its place, feed-forward dropout
- attention_inputs.py  query, key and value passed in each other's places (hunted at the attention level)

Two consumers: the bug zoo (``zoo.py``: handmade with one deviation, a target each, ``parity zoo``) and
``parity diagnose``, whose probes compare a target with handmade carrying candidate deviations.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from torch import nn

from reference.catalogue import attention_inputs, attention_math, feed_forward, heads, masks, norms, wiring
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


__all__ = ["BY_KEY", "CATALOGUE", "Deviation", "apply_all", "claims_of", "extends", "zoo"]


def __getattr__(name: str) -> object:
    if name == "zoo":  # imported on use: reference.catalogue:zoo.<key> names a zoo entry
        import importlib

        return importlib.import_module("reference.catalogue.zoo")
    raise AttributeError(name)
