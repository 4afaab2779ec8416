"""Whole-model comparison of a plug-in target: ``whole_model`` is the engine's caller for ``--impl`` targets.

The engine (reference/verdict/engine.py) does the work; this module only adapts a ``Target``
(reference/targets/contract.py) to the engine's candidate interface and keeps the target's own failures apart
from the harness's.
"""

from __future__ import annotations

import inspect
import os
import traceback
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from reference.builtin.config import Config
from reference.cases.case import Case
from reference.inference.target import InferredTarget
from reference.levels.registry import LEVELS, present
from reference.targets.contract import HandmadeAdapter, NotSupportedError, Target, TargetError
from reference.verdict.engine import (
    Call,
    Candidate,
    HandmadeTwin,
    compare_modules,
    fastpath,
    param_grads,
    repacked_grads,
)
from reference.verdict.tolerance import Verdict

__all__ = [
    "TargetCandidate", "at_level", "fastpath", "forward_kwargs", "inferred", "levels_of", "prepare", "takes_mask",
    "unresolved", "whole_model",
]


@dataclass
class TargetCandidate:
    """A plug-in target as the engine's candidate at the whole-model level, built for one configuration."""

    target: Target
    config: dict[str, Any]

    @property
    def name(self) -> str:
        return self.target.spec

    def build(self, device: torch.device | str, dtype: torch.dtype) -> nn.Module:
        return self.target.build(self.config, device, dtype)

    def load(self, model: nn.Module, builtin: nn.Module) -> None:
        self.target.load_reference(model, builtin)

    def call(self, model: nn.Module, call: Call, inputs: dict[str, Tensor], kwargs: dict[str, object]) -> Tensor:
        return self.target.run(model, inputs["src"], inputs["tgt"], **kwargs)

    def param_grads(self, model: nn.Module, builtin: nn.Module) -> dict[str, Tensor] | None:
        """Under the built-in's names: a drop-in's are its own, handmade's go through the weight map."""
        if self.target.is_drop_in:
            return param_grads(model)
        if isinstance(self.target.obj, HandmadeAdapter):
            return repacked_grads(model, builtin)
        named = getattr(self.target.obj, "param_grads", None)  # an adapter may name its gradients itself
        return None if named is None else dict(named(model, builtin))  # else only inputs' gradients are judged


def whole_model(
    target: Target,
    case: Case,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float64,
    grads: bool = False,
) -> list[Verdict]:
    """Verdicts for the output (and, with ``grads``, the gradients of inputs and parameters) of ``target``.

    Raises NotSupportedError when the target declines the configuration and TargetError when it crashes.
    """
    return at_level(target, "transformer", case, device, dtype, grads)


def at_level(
    target: Target,
    level: str,
    case: Any,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float64,
    grads: bool = False,
) -> list[Verdict]:
    """``whole_model`` at any level: ``case`` is that level's (an AttentionCase for "attention", ...)."""
    case, candidate = prepare(target, level, case)  # the case as the target is checked on it
    entry = LEVELS[level]
    inputs, kwargs = entry.inputs(case, dtype)
    return compare_modules(entry.seeded_builtin(case), candidate, entry.call, inputs, kwargs, dtype=dtype,
                           device=device, grads=grads, seed=case.seed)


def forward_kwargs(kwargs: dict[str, object], device: torch.device | str) -> dict[str, object]:
    """Only the arguments a case sets (no None masks or hints), masks moved to ``device``."""
    return {name: value.to(device) if isinstance(value, Tensor) else value for name, value in present(kwargs).items()}


def levels_of(target: Target, level: str | None = None) -> tuple[str, ...]:
    """The registry levels ``target`` is checked at: handmade provides every one; a plug-in, ``level``
    (``--as``), by default its whole model."""
    if isinstance(target.obj, HandmadeAdapter):
        return tuple(LEVELS) if level is None else (level,)
    return (level or "transformer",)


_INFERRED: dict[tuple[str, str, bool, str | None], InferredTarget] = {}


def is_drop_in(target: Target) -> bool:
    """A class whose parameters carry nn.Transformer's names (load_state_dict fits), not one to infer."""
    if not target.is_drop_in:
        return False
    try:
        model = target.obj(**Config().kwargs())
    except Exception:  # its constructor does not take nn.Transformer's arguments: inferred instead
        return False
    return isinstance(model, nn.Module) and set(model.state_dict()) == set(nn.Transformer(**Config().kwargs())
                                                                           .state_dict())


def inferred(target: Target, level: str) -> InferredTarget:
    """The (cached: discovery measures once) inferred view of ``target`` at ``level``."""
    key = (target.spec, level, target.keep_masks, target.weight_map)
    if key not in _INFERRED:
        _INFERRED[key] = InferredTarget(target=target, level=level)
    return _INFERRED[key]


def prepare(target: Target, level: str, case: Any) -> tuple[Any, Candidate]:
    """The case as ``target`` is checked on it and the engine's candidate: handmade's own components, a
    drop-in or adapter through its contract, anything else (a class, factory or instance) by inference."""
    if isinstance(target.obj, HandmadeAdapter):
        if level == "transformer":
            return case, TargetCandidate(target, case.config.kwargs())
        return case, HandmadeTwin(target.obj.component(LEVELS[level].build("handmade", case)))  # its variant
    if level == "transformer" and (is_adapter(target.obj) or is_drop_in(target)):
        config = case.config.kwargs()
        if not target.supports(config):  # decline before building anything: a declined draw must be cheap
            raise NotSupportedError(f"{target.spec} does not support {config}")
        return case, TargetCandidate(target, config)
    return inferred(target, level).prepare(case)


def unresolved(target: Target, level: str | None = None) -> list[tuple[str, str]]:
    """(level, why) for each level ``target`` is checked at where the harness cannot resolve it (construct it,
    call it, pair its weights with the built-in's): found once, by discovery, before any case is drawn, so a
    check can say so first instead of failing every drawn case. Handmade, adapters and drop-ins resolve by
    their contract (nothing to find); a target that declines the configuration is judged per case instead."""
    out = []
    for name in levels_of(target, level):
        if isinstance(target.obj, HandmadeAdapter) or (name == "transformer" and (is_adapter(target.obj)
                                                                              or is_drop_in(target))):
            continue
        try:
            inferred(target, name).discover()
        except NotSupportedError:
            continue
        except (TargetError, ValueError) as exc:  # WeightMapError and ConstructionError are ValueErrors
            out.append((name, str(exc)))
        except Exception as exc:  # said once, without a traceback: the target's own error, or the harness's
            out.append((name, _raised(target, exc)))
    return out


def _raised(target: Target, exc: Exception) -> str:
    """Who raised ``exc`` while resolving ``target``: the last frame outside torch and the standard library is
    the target's code (its file and line) or the harness's own (a harness bug)."""
    harness = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    skipped = (os.path.dirname(torch.__file__), os.path.dirname(os.__file__))
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not os.path.abspath(f.filename).startswith(skipped)]
    last = frames[-1] if frames else None
    what = f"{type(exc).__name__}: {exc}"
    if last is None or os.path.abspath(last.filename).startswith(harness):
        return f"the harness failed while resolving {target.spec} (a harness bug: please report it): {what}"
    hint = (" (a name the code reads from its script's or notebook's globals: define it before the class is "
            "used, or pass a factory that builds the model)" if isinstance(exc, NameError) else "")
    return (f"{target.spec}'s own code raised {what}, at {last.filename}:{last.lineno} in {last.name}, while the "
            f"harness built and called it{hint}")


def takes_mask(target: Target, level: str, keyword: str) -> bool:
    """Whether ``target`` takes the mask ``keyword`` at ``level``: an inferred target's forward says (found once,
    by discovery); handmade, adapters and drop-ins take every mask nn.Transformer does (or decline per case)."""
    if isinstance(target.obj, HandmadeAdapter) or (level == "transformer" and (is_adapter(target.obj)
                                                                            or is_drop_in(target))):
        return True
    try:
        return keyword in inferred(target, level).discover().masks
    except (TargetError, NotSupportedError):  # it cannot be paired at all: the properties say so themselves
        return True


def is_adapter(obj: Any) -> bool:
    """An object with the adapter contract's methods (reference/targets/contract.py)."""
    return not inspect.isclass(obj) and all(callable(getattr(obj, m, None)) for m in ("build", "load_reference", "run"))
