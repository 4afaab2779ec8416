"""Small targets for the plug-in contract's tests (test_plugins.py, test_diagnose.py): each breaks one rule.

Importable as ``tests.targets.plugin_targets:NAME``, so they also run through ``--impl`` and
``parity diagnose`` like a user's target.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from handmade import Transformer
from reference.targets.contract import HandmadeAdapter


class _Handmade(HandmadeAdapter):
    """handmade behind an adapter, to be bent one way by each subclass."""


class DeclinesEverything(_Handmade):
    """supports() says no to every configuration: a run with it checks nothing, which is a failure."""

    def supports(self, **config: object) -> bool:
        return False


class OnlyPreNorm(_Handmade):
    """build() raises NotImplementedError for post-norm: "not supported", never a failure."""

    def build(self, **config: object) -> nn.Module:
        if not config["norm_first"]:
            raise NotImplementedError("only pre-norm (norm_first=True) is implemented")
        return super().build(**config)


class RaisesInRun(_Handmade):
    """The target itself crashes in forward."""

    def run(self, model: nn.Module, src: Tensor, tgt: Tensor, **kwargs: object) -> Tensor:
        raise RuntimeError("shape mismatch in my attention")


class RaisesInBuild(_Handmade):
    """The target's constructor crashes (not NotImplementedError)."""

    def build(self, **config: object) -> nn.Module:
        raise KeyError("d_k")


class ReturnsNaN(_Handmade):
    """NaN where nn.Transformer is finite: a crash, reported as such."""

    def run(self, model: nn.Module, src: Tensor, tgt: Tensor, **kwargs: object) -> Tensor:
        out = super().run(model, src, tgt, **kwargs)
        return out.clone().index_fill_(-1, out.new_zeros(1, dtype=int), float("nan"))


class ReturnsTuple(_Handmade):
    """Returns (output, weights) instead of a Tensor."""

    def run(self, model: nn.Module, src: Tensor, tgt: Tensor, **kwargs: object) -> Tensor:
        return super().run(model, src, tgt, **kwargs), None


class NoScaleNoMap(_Handmade):
    """Attention without its 1/sqrt(head_dim) scale (q is loaded pre-multiplied by sqrt(head_dim)), and no
    submodules() map: diagnose finds the cause but cannot localize it."""

    submodules = None

    @torch.no_grad()
    def load_reference(self, model: nn.Module, reference: nn.Module) -> None:
        super().load_reference(model, reference)
        for attention in (m for m in model.modules() if hasattr(m, "q_proj")):
            attention.q_proj.weight.mul_(attention.head_dim**0.5)
            if attention.q_proj.bias is not None:
                attention.q_proj.bias.mul_(attention.head_dim**0.5)


class NotAnAdapter:
    """Lacks load_reference and run: load_target must say so."""

    def build(self, **config: object) -> nn.Module:
        return Transformer(**config)


declines_everything = DeclinesEverything()
only_pre_norm = OnlyPreNorm()
raises_in_run = RaisesInRun()
raises_in_build = RaisesInBuild()
returns_nan = ReturnsNaN()
returns_tuple = ReturnsTuple()
no_scale_no_map = NoScaleNoMap()
not_an_adapter = NotAnAdapter()
