"""The plug-in contract: how the harness builds, loads and runs an implementation under test.

A target is named ``MODULE:OBJECT`` (importable; the current directory is on the path). OBJECT is either

1. a drop-in class: constructed with nn.Transformer's keyword arguments, called with nn.Transformer.forward's
   signature and conventions, and loadable with ``model.load_state_dict(reference.state_dict())``; or
2. an adapter object with ``build(**config) -> nn.Module`` (raise NotImplementedError for "not supported"),
   ``load_reference(model, reference)``, ``run(model, src, tgt, **kwargs) -> Tensor`` and, optionally,
   ``supports(**config) -> bool``, ``submodules(model) -> dict[str, nn.Module]`` and
   ``param_grads(model, reference) -> dict[str, Tensor]`` (its gradients under nn.Transformer's names).

``Target`` wraps either kind behind the adapter interface. ``handmade`` (the default target) is an adapter.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from handmade import MultiheadAttention as HandmadeAttention
from handmade import Transformer as HandmadeTransformer
from handmade import use_tiled_attention
from handmade.tiled_attention import KEY_BLOCK, QUERY_BLOCK
from reference.builtin.weights import copy_torch_to_handmade

DEFAULT_TARGET = "reference.targets.contract:handmade"


class NotSupportedError(Exception):
    """The target declined a configuration (supports() returned False or build() raised NotImplementedError)."""


class TargetError(Exception):
    """The target itself failed: it crashed, or returned something nn.Transformer never returns."""


class HandmadeAdapter:
    """The adapter for handmade.Transformer: its names are torch's, but q, k and v go through the weight map."""

    def build(self, **config: Any) -> nn.Module:
        return HandmadeTransformer(**config)

    def load_reference(self, model: nn.Module, reference: nn.Module) -> None:
        copy_torch_to_handmade(reference, model)

    def run(self, model: nn.Module, src: Tensor, tgt: Tensor, **kwargs: object) -> Tensor:
        return model(src, tgt, **kwargs)

    def component(self, module: nn.Module) -> nn.Module:
        """handmade's module at a component level (reference/levels/registry.py builds it), as this target runs it."""
        return module

    def submodules(self, model: nn.Module) -> dict[str, nn.Module]:
        """nn.Transformer submodule name -> handmade's module of the same dotted name.

        Every handmade submodule is named as torch's except those inside attention that torch does not have:
        the separate q_proj, k_proj, v_proj (torch packs them into in_proj_weight) and equation 1's module.
        """
        attention = {f"{name}.{child}" for name, module in model.named_modules()
                     if isinstance(module, HandmadeAttention) for child in ("q_proj", "k_proj", "v_proj", "attention")}
        return {name: module for name, module in model.named_modules() if name and name not in attention}


handmade = HandmadeAdapter()  # the default target: reference.targets.contract:handmade


class HandmadeTiledAdapter(HandmadeAdapter):
    """handmade with the tiled attention core (handmade/tiled_attention.py) in every MultiheadAttention."""

    def __init__(self, query_block: int = QUERY_BLOCK, key_block: int = KEY_BLOCK) -> None:
        self.query_block, self.key_block = query_block, key_block

    def build(self, **config: Any) -> nn.Module:
        return self.component(super().build(**config))

    def component(self, module: nn.Module) -> nn.Module:
        return use_tiled_attention(module, self.query_block, self.key_block)


handmade_tiled = HandmadeTiledAdapter()  # the default block sizes: reference.targets.contract:handmade_tiled
# Blocks of 2 queries by 3 keys: the suite's lengths (up to 8) then span several tiles, ragged at the ends,
# so its properties check the online softmax across tiles, not only a single tile
handmade_tiled_small_blocks = HandmadeTiledAdapter(query_block=2, key_block=3)


@dataclass
class Target:
    """An implementation under test, seen through the adapter interface whatever its kind."""

    spec: str
    obj: Any  # a drop-in class or an adapter object; at a level, also a factory or an nn.Module instance
    keep_masks: bool = False  # the user declared that its bool masks mean True = may attend (never guessed)
    weight_map: str | None = None  # an override file for the inferred weight map (JSON, TOML or Python)

    @property
    def is_drop_in(self) -> bool:
        return inspect.isclass(self.obj)

    def supports(self, config: dict) -> bool:
        check: Callable[..., bool] | None = getattr(self.obj, "supports", None)
        return True if self.is_drop_in or check is None else bool(check(**config))

    def build(self, config: dict, device: torch.device | str, dtype: torch.dtype) -> nn.Module:
        """Construct, move to device and dtype; NotSupportedError if the target declines the configuration."""
        if not self.supports(config):
            raise NotSupportedError(f"{self.spec} does not support {config}")
        try:
            model = self.obj(**config) if self.is_drop_in else self.obj.build(**config)
        except NotImplementedError as exc:
            raise NotSupportedError(f"{self.spec} does not support {config}: {exc}") from exc
        except Exception as exc:  # a crash of the target's constructor is the target's failure, not the harness's
            raise TargetError(f"{self.spec} failed to build {config}: {type(exc).__name__}: {exc}") from exc
        if not isinstance(model, nn.Module):
            raise TargetError(f"{self.spec} built a {type(model).__name__}, but should build an nn.Module")
        return model.to(device=device, dtype=dtype)

    def load_reference(self, model: nn.Module, reference: nn.Module) -> None:
        if self.is_drop_in:
            model.load_state_dict(reference.state_dict())
        else:
            self.obj.load_reference(model, reference)

    def run(self, model: nn.Module, src: Tensor, tgt: Tensor, **kwargs: object) -> Tensor:
        out = model(src, tgt, **kwargs) if self.is_drop_in else self.obj.run(model, src, tgt, **kwargs)
        if not isinstance(out, Tensor):
            raise TargetError(f"{self.spec} returned a {type(out).__name__}, but should return a Tensor")
        return out

    def submodules(self, model: nn.Module) -> dict[str, nn.Module] | None:
        mapper = getattr(self.obj, "submodules", None)
        return None if self.is_drop_in or mapper is None else dict(mapper(model))


def load_target(spec: str = DEFAULT_TARGET) -> Target:
    """Import ``MODULE:OBJECT`` (the current directory first on the path) and check it fits the contract."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"a target is named MODULE:OBJECT, got {spec!r}")
    if "" not in sys.path:
        sys.path.insert(0, "")
    try:
        obj = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot import target {spec!r}: {exc}") from exc
    if not (inspect.isclass(obj) or isinstance(obj, nn.Module) or callable(obj)):
        missing = [m for m in ("build", "load_reference", "run") if not callable(getattr(obj, m, None))]
        if missing:
            raise ValueError(
                f"target {spec!r} is neither a class, a factory, an nn.Module nor an adapter: it lacks "
                f"{', '.join(missing)} (see the plug-in contract, docs/plugins.md)"
            )
    return Target(spec, obj)
