"""The bug zoo: handmade with exactly one catalogue deviation per entry, each a plug-in target.

``reference.catalogue:zoo.<key>`` is handmade with deviation ``<key>`` planted, at the deviation's level: a
whole handmade.Transformer (built as handmade, weights through the normal weight map) for most, and for a bug
that shows only where an attention's inputs are apart (``Deviation.level == "attention"``) a class deriving
from handmade.MultiheadAttention that plants it when built, checked like any user's attention
(``--as attention``: construction, weight map and call inferred). Entries load with
``reference.targets.contract.load_target`` like any target, so ``parity check`` and ``parity diagnose`` take every
one; ``reference.catalogue:zoo.control`` (and ``attention_control``) are the zoo's machinery without a
deviation (never to be caught). ``parity zoo`` (reference/studies/zoo_hunt.py) hunts them all.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

import handmade
from reference.catalogue._base import Deviation
from reference.catalogue.index import CATALOGUE
from reference.targets.contract import HandmadeAdapter
from reference.verdict.engine import repacked_grads

_HANDMADE = HandmadeAdapter()


class ZooEntry:
    """An adapter: handmade built for the configuration, then ``deviation`` planted; ``bug`` says what is wrong.

    It is handmade's adapter by composition, not a HandmadeAdapter: the harness must see a plug-in (its whole
    model only), not handmade, whose components it would test instead.
    """

    level = "transformer"

    def __init__(self, deviation: Deviation | None) -> None:
        self.deviation = deviation
        self.key = deviation.key if deviation else "control"
        self.bug = deviation.does if deviation else "no bug: handmade built through the zoo's machinery"

    def build(self, **config: object) -> nn.Module:
        model = _HANDMADE.build(**config)
        if self.deviation is not None:
            self.deviation.apply(model, config)
        return model

    def load_reference(self, model: nn.Module, reference: nn.Module) -> None:
        _HANDMADE.load_reference(model, reference)

    def run(self, model: nn.Module, src: Tensor, tgt: Tensor, **kwargs: object) -> Tensor:
        return model(src, tgt, **kwargs)

    def submodules(self, model: nn.Module) -> dict[str, nn.Module]:
        return _HANDMADE.submodules(model)

    def param_grads(self, model: nn.Module, reference: nn.Module) -> dict[str, Tensor]:
        """Its parameter gradients under nn.Transformer's names (handmade's q/k/v re-packed), so they are judged."""
        return repacked_grads(model, reference)

    def __repr__(self) -> str:
        return f"ZooEntry({self.key})"


class AttentionEntry(handmade.MultiheadAttention):
    """handmade's attention, built with nn.MultiheadAttention's arguments, then ``deviation`` planted in it."""

    deviation: Deviation | None = None
    key = "attention_control"
    bug = "no bug: handmade's attention built through the zoo's machinery"
    level = "attention"

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 add_bias_kv: bool = False, add_zero_attn: bool = False, kdim: int | None = None,
                 vdim: int | None = None, batch_first: bool = False, **factory: Any) -> None:
        super().__init__(embed_dim, num_heads, dropout, bias, add_bias_kv, add_zero_attn, kdim, vdim, batch_first,
                         **factory)
        if self.deviation is not None:
            self.deviation.apply(self, {"embed_dim": self.embed_dim, "num_heads": self.num_heads})


def attention_entry(deviation: Deviation) -> type[AttentionEntry]:
    """The entry class of an attention-level deviation: AttentionEntry with ``deviation`` planted."""
    return type(deviation.key, (AttentionEntry,), {"deviation": deviation, "key": deviation.key,
                                                   "bug": deviation.does, "__module__": __name__})


ENTRIES: dict[str, ZooEntry | type[AttentionEntry]] = {
    d.key: attention_entry(d) if d.level == "attention" else ZooEntry(d) for d in CATALOGUE}
control = ZooEntry(None)
attention_control = AttentionEntry
CONTROLS = {"transformer": "control", "attention": "attention_control"}  # level -> the control's name


def spec(key: str) -> str:
    """The target spec of entry ``key`` (or of a control)."""
    return f"reference.catalogue:zoo.{key}"


def level_of(key: str) -> str:
    """The level entry (or control) ``key`` is checked at: ``--as`` this."""
    if key in CONTROLS.values():
        return next(level for level, name in CONTROLS.items() if name == key)
    return ENTRIES[key].level


def __getattr__(name: str) -> ZooEntry | type[AttentionEntry]:
    try:
        return ENTRIES[name]
    except KeyError:
        raise AttributeError(f"the zoo has no entry {name!r}") from None
