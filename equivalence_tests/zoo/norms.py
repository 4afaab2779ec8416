"""LayerNorm bugs: each a handmade.LayerNorm subclass (or one built wrongly) put in place of every norm."""

from __future__ import annotations

import torch
from torch import Tensor

import handmade
from equivalence_tests.zoo._base import BugAdapter, residuals


def affine(norm: handmade.LayerNorm, y: Tensor) -> Tensor:
    """y * weight + bias, as handmade.LayerNorm ends (bias may be None when bias=False)."""
    y = y * norm.weight
    return y if norm.bias is None else y + norm.bias


class UnbiasedVariance(handmade.LayerNorm):
    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(dim=-1, keepdim=True)
        var = x.var(dim=-1, keepdim=True, unbiased=True)  # divides by n - 1
        return affine(self, (x - mean) * torch.rsqrt(var + self.eps))


class EpsOutsideSqrt(handmade.LayerNorm):
    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(dim=-1, keepdim=True)
        std = (x - mean).square().mean(dim=-1, keepdim=True).sqrt()
        return affine(self, (x - mean) / (std + self.eps))  # eps added to the std


def _every_norm(cls: type, default_eps: bool = False) -> object:
    def plant(model: handmade.Transformer, config: dict) -> None:
        eps = 1e-5 if default_eps else config["layer_norm_eps"]

        def norm() -> handmade.LayerNorm:
            return cls(config["d_model"], eps=eps, bias=config["bias"])

        for layer, name in residuals(model):
            getattr(layer, name).norm = norm()
        model.encoder.norm, model.decoder.norm = norm(), norm()

    return plant


layer_norm_unbiased_variance = BugAdapter("layer norm with the unbiased variance (divides by n - 1)",
                                          _every_norm(UnbiasedVariance))
layer_norm_eps_outside_sqrt = BugAdapter("layer norm computes (x - mean) / (std + eps), eps outside the square root",
                                         _every_norm(EpsOutsideSqrt))
layer_norm_eps_ignored = BugAdapter("layer_norm_eps not passed to the norms (always 1e-5)",
                                    _every_norm(handmade.LayerNorm, default_eps=True))
