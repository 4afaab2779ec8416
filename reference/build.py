"""Build the built-in model (or one of its components) and its handmade twin from the same configuration."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

import handmade
from reference.weights import copy_torch_to_handmade

COMPONENTS = (
    "attention", "layer_norm", "encoder_layer", "decoder_layer", "encoder", "decoder", "transformer",
)


@dataclass(frozen=True)
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


def _torch_component(component: str, cfg: Config, factory: dict) -> nn.Module:
    if component == "attention":
        return nn.MultiheadAttention(
            cfg.d_model, cfg.nhead, cfg.dropout, bias=cfg.bias, batch_first=cfg.batch_first, **factory
        )
    if component == "layer_norm":
        return nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps, bias=cfg.bias, **factory)
    if component in ("encoder_layer", "encoder"):
        layer = nn.TransformerEncoderLayer(**cfg.layer_kwargs(), **factory)
        if component == "encoder_layer":
            return layer
        norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps, bias=cfg.bias, **factory)
        return nn.TransformerEncoder(layer, cfg.num_encoder_layers, norm, enable_nested_tensor=False)
    if component in ("decoder_layer", "decoder"):
        layer = nn.TransformerDecoderLayer(**cfg.layer_kwargs(), **factory)
        if component == "decoder_layer":
            return layer
        norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps, bias=cfg.bias, **factory)
        return nn.TransformerDecoder(layer, cfg.num_decoder_layers, norm)
    if component == "transformer":
        return nn.Transformer(**cfg.kwargs(), **factory)
    raise ValueError(f"component must be one of {COMPONENTS}, got component={component!r}")


def _handmade_component(component: str, cfg: Config, factory: dict) -> nn.Module:
    if component == "attention":
        return handmade.MultiheadAttention(
            cfg.d_model, cfg.nhead, cfg.dropout, bias=cfg.bias, batch_first=cfg.batch_first, **factory
        )
    if component == "layer_norm":
        return handmade.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps, bias=cfg.bias, **factory)
    if component in ("encoder_layer", "encoder"):
        layer = handmade.TransformerEncoderLayer(**cfg.layer_kwargs(), **factory)
        if component == "encoder_layer":
            return layer
        norm = handmade.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps, bias=cfg.bias, **factory)
        return handmade.TransformerEncoder(layer, cfg.num_encoder_layers, norm)
    if component in ("decoder_layer", "decoder"):
        layer = handmade.TransformerDecoderLayer(**cfg.layer_kwargs(), **factory)
        if component == "decoder_layer":
            return layer
        norm = handmade.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps, bias=cfg.bias, **factory)
        return handmade.TransformerDecoder(layer, cfg.num_decoder_layers, norm)
    if component == "transformer":
        return handmade.Transformer(**cfg.kwargs(), **factory)
    raise ValueError(f"component must be one of {COMPONENTS}, got component={component!r}")


def build_torch(
    component: str, cfg: Config, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64
) -> nn.Module:
    """The built-in module for ``component``, in eval mode."""
    with warnings.catch_warnings():  # "enable_nested_tensor is True, but ..." is noise here
        warnings.filterwarnings("ignore", message="enable_nested_tensor is True")
        return _torch_component(component, cfg, {"device": device, "dtype": dtype}).eval()


def build_handmade(
    component: str, cfg: Config, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64
) -> nn.Module:
    """The handmade module for ``component``, in eval mode."""
    return _handmade_component(component, cfg, {"device": device, "dtype": dtype}).eval()


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


def build_pair(
    component: str,
    cfg: Config,
    seed: int,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float64,
    weight_scale: float = 1.0,
) -> tuple[nn.Module, nn.Module]:
    """(built-in, handmade) for ``component`` with the same random weights, drawn from ``seed``."""
    reference = build_torch(component, cfg, device, dtype)
    randomize_(reference, torch.Generator().manual_seed(seed), weight_scale)
    twin = build_handmade(component, cfg, device, dtype)
    copy_torch_to_handmade(reference, twin)
    return reference, twin
