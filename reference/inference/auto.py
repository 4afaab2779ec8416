"""Infer everything at once for a level: the calling convention, then the weight map, the layout by values.

Shapes alone cannot tell a batch-first target from a sequence-first one when the output has the input's
shape (self-attention, an encoder): ``infer_target`` tries the layouts the shapes allow, and keeps the one
whose outputs, with the built-in's weights loaded through the inferred map, equal the built-in's.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from reference.builtin.config import randomize_
from reference.inference.calling import Convention, infer_calling
from reference.inference.weightmap import (
    AmbiguousMapError,
    MapMismatchError,
    Override,
    WeightMap,
    difference,
    infer_weight_map,
)
from reference.verdict.engine import fastpath


@dataclass
class Inference:
    """The verified weight map and calling convention of one target at one level."""

    weight_map: WeightMap
    convention: Convention

    def describe(self) -> str:
        return f"calling: {self.convention.describe()}\n{self.weight_map.describe()}"


def infer_target(builtin: nn.Module, model: nn.Module, level: str, call: Callable[..., Any],
                 inputs: Mapping[str, Tensor], kwargs: Mapping[str, Any], *, batch_first: bool,
                 override: str | Override | None = None, keep_mask: bool = False) -> Inference:
    """Calling convention and verified weight map of ``model`` against ``builtin`` at ``level``.

    ``call`` is the level's call of the built-in (``Level.call``); ``inputs``/``kwargs`` one standard call
    (float64, batched with N != L is best) laid out ``batch_first`` or not. ``model`` is moved to the inputs'
    dtype and left loaded with random built-in weights. Raises NotSupportedError (cannot be called at this
    level) or a WeightMapError (UnpairedError, AmbiguousMapError, MapMismatchError) when no layout gives the
    built-in's outputs.
    """
    dtype = next((t.dtype for t in inputs.values() if t is not None and t.is_floating_point()), None)
    if dtype is not None:
        model.to(dtype)  # the inputs' dtype (float64 is best): a float32 build would not take them
    with torch.no_grad(), fastpath(False):
        expected = call(builtin, **inputs, **kwargs)
    conv = infer_calling(model, level, inputs, kwargs, batch_first=batch_first, expected=expected,
                         keep_mask=keep_mask)
    # the map does not depend on masks: infer it on the unmasked call (a GPT's causal mask is its behaviour)
    # (a target that takes no mask is always masked so, when the built-in is given one: its behaviour too)
    bare = {k: v for k, v in kwargs.items() if level == "decoder_only" or not conv.masks or not _is_mask(k, v)}
    masked = bare != dict(kwargs)
    failures: list[Exception] = []
    for layout in conv.alternatives or (conv.batch_first,):
        trial = dataclasses.replace(conv, batch_first=layout)

        def run_model(m: nn.Module, trial: Convention = trial) -> Any:
            return trial(m, inputs, bare, batch_first=batch_first)

        try:
            wm = infer_weight_map(builtin, model, lambda m: call(m, **inputs, **bare), run_model, override)
        except (MapMismatchError, AmbiguousMapError) as exc:
            exc.convention = trial  # type: ignore[union-attr]  # the layout it was measured in
            failures.append(exc)
            continue
        if len(conv.alternatives) > 1:
            decided = f"{'batch-first' if layout else 'sequence-first'} (the shapes allow both: the values decided)"
            notes = tuple(decided if n.endswith("values decide)") else n for n in conv.assumptions)
            trial = dataclasses.replace(trial, alternatives=(layout,), assumptions=notes)
        if masked:
            _check_masks(builtin, model, wm, call, trial, inputs, kwargs, batch_first)
        return Inference(wm, trial)
    ambiguous = [e for e in failures if isinstance(e, AmbiguousMapError)]
    if ambiguous:
        raise ambiguous[0]
    raise min(failures, key=lambda e: e.difference if isinstance(e, MapMismatchError) else math.inf)  # closest


def _is_mask(key: str, value: Any) -> bool:
    return ("mask" in key and value is not None) or (key.endswith("is_causal") and bool(value))


def _check_masks(builtin: nn.Module, model: nn.Module, wm: WeightMap, call: Callable[..., Any], conv: Convention,
                 inputs: Mapping[str, Tensor], kwargs: Mapping[str, Any], batch_first: bool) -> None:
    """The map holds unmasked; with the sample's masks the outputs must agree too, or the masks differ."""
    reference = copy.deepcopy(builtin)
    randomize_(reference, torch.Generator().manual_seed(1))
    wm.load(model, reference)
    with torch.no_grad(), fastpath(False):
        expected = call(reference, **inputs, **kwargs)
        got = conv(model, inputs, kwargs, batch_first=batch_first)
    diff = difference(expected, got)
    if diff > 1e-9 if got["output"].dtype == torch.float64 else diff > 1e-4:
        how = ("as keep-masks (True = may attend), as declared" if conv.keep_mask else
               "as torch's block-masks (True or -inf = blocked); if the target takes keep-masks, declare it "
               "(--keep-masks, or keep_masks=True)")
        raise MapMismatchError(
            f"the weight map holds without masks (outputs equal to {wm.difference:.1e}), but with the masks "
            f"{', '.join(k for k, v in kwargs.items() if 'mask' in k and v is not None)} the outputs differ by "
            f"{diff:.3g}: the masks were passed {how}, or the masking code differs; see parity diagnose", diff, wm)
