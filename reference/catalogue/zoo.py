"""The bug zoo: handmade.Transformer with exactly one catalogue deviation per entry, each a plug-in target.

``reference.catalogue:zoo.<key>`` is handmade with deviation ``<key>`` planted (built as handmade, weights
through the normal weight map), loadable by ``reference.targets.contract.load_target`` like any target, so
``parity check`` and ``parity diagnose`` take every entry; ``reference.catalogue:zoo.control`` is the zoo's
machinery without a deviation (must never be caught). ``parity zoo`` (reference/studies/zoo_hunt.py) hunts them all.
"""

from __future__ import annotations

from torch import Tensor, nn

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


ENTRIES: dict[str, ZooEntry] = {d.key: ZooEntry(d) for d in CATALOGUE}
control = ZooEntry(None)


def spec(key: str) -> str:
    """The target spec of entry ``key`` (or of the control)."""
    return f"reference.catalogue:zoo.{key}"


def __getattr__(name: str) -> ZooEntry:
    try:
        return ENTRIES[name]
    except KeyError:
        raise AttributeError(f"the zoo has no entry {name!r}") from None
