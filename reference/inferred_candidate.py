"""The engine's candidate for one case of an inferred target (reference/level_targets.py): its model, and
the weight map and calling convention the target inferred for the case."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from reference import infer
from reference.infer.copying import copy_model
from reference.level_cases import batch_first

if TYPE_CHECKING:
    from reference.level_targets import InferredTarget


@dataclass
class InferredCandidate:
    """The engine's candidate for one case: the target's model, its inferred map and calling convention."""

    owner: InferredTarget
    case: Any
    model: nn.Module
    inference: infer.Inference | None = None

    @property
    def name(self) -> str:
        return self.owner.target.spec

    def build(self, device: torch.device | str, dtype: torch.dtype) -> nn.Module:
        return copy_model(self.model).to(device, dtype)

    def hold(self, builtin: nn.Module) -> None:
        """The built-in's tensors with no counterpart in the target, fixed at zero before the oracle runs."""
        self.inference = self.owner.inference(self.case, self.model)
        self.inference.weight_map.hold(builtin)

    def load(self, model: nn.Module, builtin: nn.Module) -> None:
        self.inference = self.owner.inference(self.case, self.model)
        self.inference.weight_map.load(model, builtin)

    def call(self, model: nn.Module, call: Any, inputs: dict[str, Tensor], kwargs: dict[str, object]) -> Any:
        assert self.inference is not None, "load() runs before call()"
        return self.inference.convention(model, inputs, kwargs, batch_first=batch_first(self.case))

    def param_grads(self, model: nn.Module, builtin: nn.Module) -> dict[str, Tensor] | None:
        assert self.inference is not None, "load() runs before param_grads()"
        return self.inference.weight_map.grads(model)
