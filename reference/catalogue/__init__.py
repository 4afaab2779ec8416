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

- index.py           the catalogue in order (``CATALOGUE``), by key (``BY_KEY``), ``apply_all``

Two consumers: the bug zoo (``zoo.py``: handmade with one deviation, a target each, ``parity zoo``) and
``parity diagnose``, whose probes compare a target with handmade carrying candidate deviations.
"""

from __future__ import annotations

from reference.catalogue._base import Deviation
from reference.catalogue.index import BY_KEY, CATALOGUE, ORDER, apply_all, claims_of, extends

__all__ = ["BY_KEY", "CATALOGUE", "ORDER", "Deviation", "apply_all", "claims_of", "extends", "zoo"]


def __getattr__(name: str) -> object:
    if name == "zoo":  # imported on use: reference.catalogue:zoo.<key> names a zoo entry
        import importlib

        return importlib.import_module("reference.catalogue.zoo")
    raise AttributeError(name)
