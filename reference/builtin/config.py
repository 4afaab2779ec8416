"""nn.Transformer's configuration and random weights: what every level's built-in is made from."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

import handmade


@dataclass(frozen=True, kw_only=True)
class Config:
    """nn.Transformer's constructor arguments (those that shape the computation)."""

    d_model: int = 16
    nhead: int = 2
    num_encoder_layers: int = 1
    num_decoder_layers: int = 1
    dim_feedforward: int = 32
    dropout: float = 0.0
    activation: str | Callable[[Tensor], Tensor] = "relu"
    layer_norm_eps: float = 1e-5
    batch_first: bool = False
    norm_first: bool = False
    bias: bool = True

    def kwargs(self) -> dict:
        """The configuration as nn.Transformer keyword arguments."""
        return dataclasses.asdict(self)

    def layer_kwargs(self) -> dict:
        """The keyword arguments shared by the encoder and decoder layers."""
        kw = self.kwargs()
        del kw["num_encoder_layers"], kw["num_decoder_layers"]
        return kw


@torch.no_grad()
def randomize_(model: nn.Module, generator: torch.Generator, weight_scale: float = 1.0) -> nn.Module:
    """Draw every parameter afresh from ``generator``, so no bias is zero and no two layers are alike.

    Default initialisation hides bugs (zero attention biases, unit LayerNorm weights, identical
    feed-forward biases in every layer); random values expose them. Matrices get N(0, scale²/fan_in),
    LayerNorm weights 1 + N(0, 0.2²), every other vector N(0, 0.2²).
    """
    norms = (nn.LayerNorm, handmade.LayerNorm)
    norm_weights = {id(m.weight) for m in model.modules() if isinstance(m, norms) and m.weight is not None}
    for p in model.parameters():
        noise = torch.randn(p.shape, generator=generator, dtype=torch.float64)
        if p.dim() > 1:
            value = noise * weight_scale / p.size(-1) ** 0.5
        elif id(p) in norm_weights:
            value = 1.0 + 0.2 * noise
        else:
            value = 0.2 * noise
        p.copy_(value)
    return model
