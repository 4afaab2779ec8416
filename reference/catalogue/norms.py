"""LayerNorm bugs: the formula (each a faulty step of handmade's LayerNorm), its eps, and final norms skipped."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

import handmade
from reference.catalogue._base import NORMS, STACK_CLASSES, Deviation, Plant, become, instances

LOW = (torch.float16, torch.bfloat16)


class Formula(handmade.LayerNorm):
    """handmade's LayerNorm in overridable steps (variance, normalize); without an override it equals handmade's."""

    def forward(self, input: Tensor) -> Tensor:
        dims = tuple(range(-len(self.normalized_shape), 0))
        dtype = input.dtype
        x = input.float() if dtype in LOW else input
        centered = x - x.mean(dim=dims, keepdim=True)
        y = self.normalize(centered, self.variance(centered, dims))
        y = y if self.weight is None else y * self.weight
        y = y if self.bias is None else y + self.bias
        return y.to(dtype)

    def variance(self, centered: Tensor, dims: tuple[int, ...]) -> Tensor:
        return centered.square().mean(dim=dims, keepdim=True)

    def normalize(self, centered: Tensor, var: Tensor) -> Tensor:
        return centered * torch.rsqrt(var + self.eps)


class UnbiasedVariance(Formula):
    def variance(self, centered: Tensor, dims: tuple[int, ...]) -> Tensor:
        n = 1
        for d in dims:
            n *= centered.size(d)
        return centered.square().sum(dim=dims, keepdim=True) / (n - 1)  # as x.std(): divides by n - 1


class EpsOutsideSqrt(Formula):
    def normalize(self, centered: Tensor, var: Tensor) -> Tensor:
        return centered / (var.sqrt() + self.eps)  # eps added to the std


class Skipped(handmade.LayerNorm):
    """A final norm that is built (its weights load) but never applied."""

    def forward(self, input: Tensor) -> Tensor:
        return input


def _every_norm(cls: type) -> Plant:
    def plant(model: nn.Module, config: Mapping[str, object]) -> None:
        for norm in instances(model, handmade.LayerNorm):
            become(norm, cls)

    return plant


def _eps(value: float) -> Plant:
    def plant(model: nn.Module, config: Mapping[str, object]) -> None:
        for norm in instances(model, handmade.LayerNorm):
            norm.eps = value

    return plant


def _skip(*stacks: str) -> Plant:
    def plant(model: nn.Module, config: Mapping[str, object]) -> None:
        for stack in instances(model, tuple(STACK_CLASSES[s] for s in stacks)):
            if stack.norm is not None:
                become(stack.norm, Skipped)

    return plant


LN = "layer-norm formula"
FINAL = "missing final norm"


def eps(value: float, text: str) -> Deviation:
    """The deviation "every LayerNorm uses eps = ``value``, not layer_norm_eps" (``text``: the value as written)."""
    return Deviation(key=f"layer_norm_eps_{text}", cause=LN,
                     does=f"uses eps = {text} in every LayerNorm, not layer_norm_eps",
                     fix="pass layer_norm_eps to every LayerNorm", plant=_eps(value), sites=NORMS,
                     shows_on=lambda c: c.config.layer_norm_eps != value, claims=(("layer_norm.eps", value),),
                     option=f"layer_norm_eps={text}")


CATALOGUE = (
    Deviation(key="layer_norm_unbiased_variance", cause=LN,
              does="normalizes by the unbiased standard deviation (divides by n - 1, as x.std() does)",
              fix="use the biased variance: ((x - mean) ** 2).mean(-1), or x.var(-1, unbiased=False)",
              plant=_every_norm(UnbiasedVariance), sites=NORMS, claims=(("layer_norm.variance", "unbiased"),)),
    Deviation(key="layer_norm_eps_outside_sqrt", cause=LN,
              does="adds eps to the standard deviation instead of to the variance",
              fix="divide by sqrt(var + eps), not by std + eps", plant=_every_norm(EpsOutsideSqrt), sites=NORMS,
              claims=(("layer_norm.eps_at", "std"),)),
    eps(1e-5, "1e-5"),  # layer_norm_eps not passed on: the default
    eps(1e-6, "1e-6"),
    eps(1e-12, "1e-12"),
    Deviation(key="no_encoder_norm", cause=FINAL, does="skips the encoder's final LayerNorm (encoder.norm)",
              fix="apply encoder.norm after the last encoder layer: nn.Transformer always has it, even post-norm",
              plant=_skip("encoder"), sites=(r"^encoder\.norm$",), claims=(("encoder.norm", "skipped"),)),
    Deviation(key="no_decoder_norm", cause=FINAL, does="skips the decoder's final LayerNorm (decoder.norm)",
              fix="apply decoder.norm after the last decoder layer: nn.Transformer always has it, even post-norm",
              plant=_skip("decoder"), sites=(r"^decoder\.norm$",), claims=(("decoder.norm", "skipped"),)),
    Deviation(key="no_final_norms", cause=FINAL, does="skips both final LayerNorms (encoder.norm and decoder.norm)",
              fix="apply encoder.norm and decoder.norm after the last layer of each stack: nn.Transformer always has "
              "them, even post-norm", plant=_skip("encoder", "decoder"), sites=(r"^(en|de)coder\.norm$",),
              claims=(("encoder.norm", "skipped"), ("decoder.norm", "skipped"))),
)
