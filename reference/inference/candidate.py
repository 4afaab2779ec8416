"""The engine's candidate for one case of an inferred target (reference/inference/target.py): its model, and
the weight map and calling convention the target inferred for the case."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from reference.inference.auto import Inference
from reference.inference.copying import copy_model


@dataclass(kw_only=True)
class InferredCandidate:
    """The engine's candidate for one case: the target's model, its inferred map and calling convention."""

    name: str  # the target's spec
    resolve: Callable[[Any, nn.Module], Inference]  # the weight map and calling convention for (case, model)
    case: Any
    model: nn.Module
    inference: Inference | None = None

    def build(self, device: torch.device | str, dtype: torch.dtype) -> nn.Module:
        return copy_model(self.model).to(device, dtype)

    def hold(self, builtin: nn.Module) -> None:
        """The built-in's tensors with no counterpart in the target, fixed at zero before the oracle runs."""
        self.inference = self.resolve(self.case, self.model)
        self.inference.weight_map.hold(builtin)

    def load(self, model: nn.Module, builtin: nn.Module) -> None:
        if self.inference is None:  # ``hold`` found it already for this case (verified on it once, not twice)
            self.inference = self.resolve(self.case, self.model)
        self.inference.weight_map.load(model, builtin)

    def call(self, model: nn.Module, call: Any, inputs: dict[str, Tensor], kwargs: dict[str, object]) -> Any:
        assert self.inference is not None, "load() runs before call()"
        conv = self.inference.convention
        out = conv(model, inputs, kwargs, batch_first=self.case.batch_first)
        if conv.level != "attention":  # a layer or a stack returns one tensor: what else the target returns is not
            out.pop("weights", None)  # judged (the inferred notes say so)
        return out

    def param_grads(self, model: nn.Module, builtin: nn.Module) -> dict[str, Tensor] | None:
        assert self.inference is not None, "load() runs before param_grads()"
        return self.inference.weight_map.grads(model)
