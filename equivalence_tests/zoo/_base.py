"""What every zoo entry shares: an adapter that builds handmade.Transformer and then plants one bug.

An entry is ``BugAdapter(bug, plant)``: ``plant(model, config)`` swaps the faulty module(s) into a freshly
built handmade.Transformer (a subclass of the handmade module that overrides the one faulty method, or the
same module built with a wrong argument). Weights then load through the normal weight map, so the buggy
model holds exactly nn.Transformer's weights and differs from handmade only by the bug.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from torch import nn

import handmade
from reference.targets import HandmadeAdapter

Plant = Callable[[handmade.Transformer, dict], None]


class BugAdapter(HandmadeAdapter):
    """handmade.Transformer with one bug planted by ``plant``; ``bug`` says what a learner got wrong."""

    def __init__(self, bug: str, plant: Plant | None = None, options: dict | None = None) -> None:
        self.bug, self.plant, self.options = bug, plant, options or {}

    def build(self, **config: object) -> nn.Module:
        model = handmade.Transformer(**{**config, **self.options})
        if self.plant is not None:
            self.plant(model, config)
        return model


def attention_slots(model: handmade.Transformer, which: str = "all") -> Iterator[tuple[nn.Module, str]]:
    """(layer, attribute) of each attention module: ``which`` is all, encoder, decoder_self or cross."""
    if which in ("all", "encoder"):
        yield from ((layer, "self_attn") for layer in model.encoder.layers)
    if which in ("all", "decoder_self"):
        yield from ((layer, "self_attn") for layer in model.decoder.layers)
    if which in ("all", "cross"):
        yield from ((layer, "cross_attn") for layer in model.decoder.layers)


def replace_attention(model: handmade.Transformer, config: dict, cls: type, which: str = "all", **changes) -> None:
    """Put a fresh ``cls`` (a MultiheadAttention subclass) built from ``config`` in every slot of ``which``."""
    kwargs = {"dropout": config["dropout"], "bias": config["bias"], "batch_first": config["batch_first"], **changes}
    for layer, name in attention_slots(model, which):
        setattr(layer, name, cls(config["d_model"], config["nhead"], **kwargs))


def all_layers(model: handmade.Transformer) -> list[nn.Module]:
    return [*model.encoder.layers, *model.decoder.layers]


def residuals(model: handmade.Transformer) -> Iterator[tuple[nn.Module, str]]:
    """(layer, attribute) of every residual connection (each holds one of the layers' LayerNorms)."""
    for layer in all_layers(model):
        yield from ((layer, name) for name in ("residual1", "residual2", "residual3") if hasattr(layer, name))


control = BugAdapter("no bug: handmade built through the zoo's machinery (must never be caught)")
