"""Lazy modules (``nn.LazyLinear``, d2l's style) have no parameter shapes until their first forward pass, and the
harness reads shapes to pair weights and sizes. ``materialize`` runs one forward on a random input of the case's
width, in the usual call forms (``parts.output_of``), so that every lazy parameter gets its shape; the model's
values are then overwritten by the built-in's like any other.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.parameter import is_lazy

from reference.inference.parts import output_of


def has_lazy(model: nn.Module) -> bool:
    return any(is_lazy(p) for p in model.parameters()) or any(is_lazy(b) for b in model.buffers())


@torch.no_grad()
def materialize(model: nn.Module, width: int) -> nn.Module:
    """``model`` with its lazy parameters given their shapes by one forward pass on (2, 3, ``width``) input;
    ``model`` unchanged when it has none or no form runs (the harness then says what it cannot read)."""
    if not has_lazy(model):
        return model
    was_training = model.training
    model.eval()
    try:
        output_of(model, torch.randn(2, 3, width, generator=torch.Generator().manual_seed(0)))
    finally:
        model.train(was_training)
    return model
