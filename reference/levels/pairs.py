"""A level's built-in, its handmade twin, and the pair with the same random weights, from a configuration.

Each level's constructors are in the component registry (reference/levels/registry.py).
"""

from __future__ import annotations

import torch
from torch import nn

from reference.builtin.config import Config, randomize_
from reference.builtin.weights import copy_torch_to_handmade
from reference.levels.registry import level


def build_torch(
    component: str, cfg: Config, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64
) -> nn.Module:
    """The built-in module for ``component`` (a registry level) in ``cfg``'s configuration, in eval mode."""
    entry = level(component)
    return entry.build("torch", entry.from_config(cfg), device, dtype)


def build_handmade(
    component: str, cfg: Config, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64
) -> nn.Module:
    """The handmade module for ``component`` (a registry level) in ``cfg``'s configuration, in eval mode."""
    entry = level(component)
    return entry.build("handmade", entry.from_config(cfg), device, dtype)


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
