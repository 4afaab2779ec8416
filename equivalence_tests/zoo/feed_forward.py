"""Feed-forward bugs: the activation, its place, and dropout that forgets the mode."""

from __future__ import annotations

import functools

import torch.nn.functional as F
from torch import Tensor, nn

import handmade
from equivalence_tests.zoo._base import BugAdapter, all_layers


class FunctionalDropout(nn.Dropout):
    def forward(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.p)  # training=True is F.dropout's default: drops in eval mode too


class ActivationLast(handmade.FeedForward):
    def forward(self, x: Tensor) -> Tensor:
        return self.activation(self.w_2(self.dropout(self.w_1(x))))  # act(W2 W1 x), not W2 act(W1 x)


def _feed_forwards(cls: type, **changes: object) -> object:
    def plant(model: handmade.Transformer, config: dict) -> None:
        options = {"dropout": config["dropout"], "activation": config["activation"], "bias": config["bias"]}
        for layer in all_layers(model):
            layer.feed_forward = cls(config["d_model"], config["dim_feedforward"], **{**options, **changes})

    return plant


def _tanh_gelu(model: handmade.Transformer, config: dict) -> None:
    if config["activation"] == "gelu":  # "gelu" ported as the tanh approximation
        _feed_forwards(handmade.FeedForward, activation=functools.partial(F.gelu, approximate="tanh"))(model, config)


def _functional_dropout(model: handmade.Transformer, config: dict) -> None:
    for layer in all_layers(model):
        layer.feed_forward.dropout = FunctionalDropout(config["dropout"])


gelu_tanh_approximation = BugAdapter("activation='gelu' implemented as the tanh approximation", _tanh_gelu)
dropout_in_eval = BugAdapter("feed-forward dropout via F.dropout(x, p): training defaults to True, so it drops in eval",
                             _functional_dropout)
activation_after_second_linear = BugAdapter("feed-forward activation after the second linear: act(W2 W1 x)",
                                            _feed_forwards(ActivationLast))
