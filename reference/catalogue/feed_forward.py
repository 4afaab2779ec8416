"""Feed-forward bugs: the activation, its place, and dropout that forgets the mode."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import cast

import torch.nn.functional as F
from torch import Tensor, nn

import handmade
from reference.catalogue._base import LAYERS, Deviation, Plant, become, dropout, layers


def _activation(fn: Callable[[Tensor], Tensor], only_for: str | None = None) -> Plant:
    def plant(model: nn.Module, config: Mapping[str, object]) -> None:
        if only_for is not None and config.get("activation") != only_for:
            return
        for layer in layers(model):
            layer.activation = fn

    return plant


class ActivationLast(handmade.TransformerEncoderLayer):
    """Shared by both layer kinds: act(W2 W1 x), not W2 act(W1 x)."""

    def _ff_block(self, x: Tensor) -> Tensor:
        out = self.activation(self.linear2(self.dropout(self.linear1(x))))
        last = cast(nn.Dropout, self.dropout3) if hasattr(self, "dropout3") else self.dropout2  # dropout3: a decoder's
        return last(out)


class DecoderActivationLast(handmade.TransformerDecoderLayer):
    _ff_block = ActivationLast._ff_block


def _activation_last(model: nn.Module, config: Mapping[str, object]) -> None:
    for layer in layers(model):
        become(layer, DecoderActivationLast if isinstance(layer, handmade.TransformerDecoderLayer) else ActivationLast)


class AlwaysDrops(nn.Dropout):
    def forward(self, input: Tensor) -> Tensor:
        return F.dropout(input, self.p)  # training=True is F.dropout's default: drops in eval mode too


def _functional_dropout(model: nn.Module, config: Mapping[str, object]) -> None:
    for layer in layers(model):
        become(layer.dropout, AlwaysDrops)


GELU = "GELU variant"
CATALOGUE = (
    Deviation(key="gelu_tanh_approximation", cause=GELU, does="uses the tanh approximation of GELU",
              fix="nn.Transformer's 'gelu' is the exact (erf) GELU: F.gelu(x), not approximate='tanh'",
              plant=_activation(functools.partial(F.gelu, approximate="tanh"), "gelu"), sites=(r"\.linear2$", *LAYERS),
              shows_on=lambda c: c.config.activation == "gelu", claims=(("activation", "gelu tanh"),)),
    Deviation(key="always_relu", cause=GELU, does="applies ReLU whatever activation says",
              fix="honour activation='gelu' (exact GELU)",
              plant=_activation(F.relu), sites=(r"\.linear2$",
                                                *LAYERS), shows_on=lambda c: c.config.activation != "relu",
              claims=(("activation", "relu"),),
              option="activation='relu'"),
    Deviation(key="always_gelu", cause=GELU, does="applies GELU whatever activation says",
              fix="honour activation='relu'",
              plant=_activation(F.gelu), sites=(r"\.linear2$",
                                                *LAYERS), shows_on=lambda c: c.config.activation != "gelu",
              claims=(("activation", "gelu"),),
              option="activation='gelu'"),
    Deviation(key="activation_after_second_linear", cause="feed-forward order",
              does="applies the feed-forward activation after the second linear: act(W2 W1 x)",
              fix="FFN(x) = linear2(dropout(activation(linear1(x))))", plant=_activation_last, sites=(r"\.linear2$",
                                                                                                      *LAYERS),
              claims=(("feed_forward.order", "activation last"),)),
    Deviation(key="dropout_in_eval", cause="dropout active in eval",
              does="drops feed-forward activations in eval mode too (F.dropout(x, p): training defaults to True)",
              fix="use nn.Dropout modules (or F.dropout(x, p, training=self.training)), never training=True",
              plant=_functional_dropout, sites=(r"\.linear2$",
                                                *LAYERS), shows_on=dropout, claims=(("feed_forward.dropout",
                                                                                     "always"),),
              probe="twice in eval"),
)
