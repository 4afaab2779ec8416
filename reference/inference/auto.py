"""Infer everything at once for a level: the calling convention, then the weight map, the layout by values.

Shapes alone cannot tell a batch-first target from a sequence-first one when the output has the input's
shape (self-attention, an encoder): ``infer_target`` tries the layouts the shapes allow, and keeps the one
whose outputs, with the built-in's weights loaded through the inferred map, equal the built-in's.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from reference.builtin.config import randomize_
from reference.builtin.weights import WeightMapError
from reference.inference.binding import describe
from reference.inference.calling import Convention, infer_calling
from reference.inference.weightmap import (
    AmbiguousMapError,
    MapMismatchError,
    Override,
    WeightMap,
    agreement,
    difference,
    infer_weight_map,
)
from reference.targets.contract import NotSupportedError
from reference.verdict.engine import fastpath


@dataclass
class Inference:
    """The verified weight map and calling convention of one target at one level."""

    weight_map: WeightMap
    convention: Convention

    def describe(self) -> str:
        return f"calling: {self.convention.describe()}\n{self.weight_map.describe()}"


def infer_target(builtin: nn.Module, model: nn.Module, level: str, call: Callable[..., Any],  # noqa: PLR0913 (one standard call and how to search it, keyword-only)
                 inputs: Mapping[str, Tensor], kwargs: Mapping[str, Any], *, batch_first: bool,
                 override: str | Override | None = None, keep_mask: bool = False, check_masks: bool = True,
                 mask_cache: MutableMapping[Any, Any] | None = None, convention: Convention | None = None) -> Inference:
    """Calling convention and verified weight map of ``model`` against ``builtin`` at ``level``.

    ``call`` is the level's call of the built-in (``Level.call``); ``inputs``/``kwargs`` one standard call
    (float64, batched with N != L is best) laid out ``batch_first`` or not. ``model`` is moved to the inputs'
    dtype and left loaded with random built-in weights. The pairings of inputs and the layouts the shapes
    allow are tried in turn; the first whose map verifies is kept. With ``check_masks``, the sample's masks are
    then checked too (MapMismatchError if the outputs differ with them); ``mask_cache`` keeps the measured
    mask forms (reference/inference/calling.py). A ``convention`` already inferred for the target (calling does
    not depend on sizes or options) is used as is: only the map is inferred, in its layouts. Raises
    NotSupportedError (cannot be called at this level) or a WeightMapError (UnpairedError, AmbiguousMapError,
    MapMismatchError) when nothing gives the built-in's outputs.
    """
    dtype = next((t.dtype for t in inputs.values() if t is not None and t.is_floating_point()), None)
    if dtype is not None:
        model.to(dtype)  # the inputs' dtype (float64 is best): a float32 build would not take them
    # a convention found for the target already: its layouts and pairings as found (those the values have not
    # decided yet are tried again)
    conv = convention or _calling(builtin, model, level, call, inputs, kwargs, batch_first=batch_first,
                                  keep_mask=keep_mask, mask_cache=mask_cache)
    # the map does not depend on masks: infer it on the unmasked call (a GPT's causal mask is its behaviour)
    # (a target that takes no mask is always masked so, when the built-in is given one: its behaviour too)
    bare = {k: v for k, v in kwargs.items() if level == "decoder_only" or not conv.masks or not _is_mask(k, v)}
    masked = bare != dict(kwargs)
    failures: list[Exception] = []
    trials = [(conv.inputs, layout) for layout in conv.alternatives or (conv.batch_first,)]
    trials += [(pairs, layout) for pairs, layouts in conv.bindings for layout in layouts or (conv.batch_first,)]
    for pairs, layout in trials:
        trial = dataclasses.replace(conv, inputs=pairs, batch_first=layout,
                                    self_attention_only=level == "attention" and len(pairs) == 1,
                                    key_is_value=level == "attention" and len(pairs) == 2)

        def run_model(m: nn.Module, trial: Convention = trial) -> Any:
            return trial(m, inputs, bare, batch_first=batch_first)

        try:
            wm = infer_weight_map(builtin, model, lambda m: call(m, **inputs, **bare), run_model, override)
        except (MapMismatchError, AmbiguousMapError) as exc:
            exc.convention = trial if convention is None else convention  # type: ignore[union-attr]  # as measured
            exc.searched = conv  # type: ignore[union-attr]  # every layout and pairing tried
            failures.append(exc)
            continue
        except NotSupportedError as exc:  # this pairing cannot take the call (another pairing may)
            failures.append(exc)
            continue
        except WeightMapError:
            raise
        except Exception as exc:  # searching: it raises in this layout or pairing (with the level's masks, say)
            if convention is not None:  # as found for the target: its crash is its failure
                raise
            where = "batch-first" if layout else "sequence-first"
            failures.append(NotSupportedError(f"the target cannot be called at this level ({where}, "
                                              f"{describe(pairs, conv.masks, conv.params)}): "
                                              f"{type(exc).__name__}: {exc}"))
            continue
        trial = _decided(trial, conv, pairs, layout)
        if masked and check_masks:
            _check_masks(builtin, model, wm, call, trial, inputs, kwargs, batch_first)
        return Inference(wm, trial)
    raise _telling(failures, conv)


def _calling(builtin: nn.Module, model: nn.Module, level: str, call: Callable[..., Any],
             inputs: Mapping[str, Tensor], kwargs: Mapping[str, Any], *, batch_first: bool, keep_mask: bool,
             mask_cache: MutableMapping[Any, Any] | None) -> Convention:
    """The target's calling convention, inferred against the built-in's output for the call."""
    with torch.no_grad(), fastpath(False):
        expected = call(builtin, **inputs, **kwargs)
    heads = next((m.num_heads for m in builtin.modules() if isinstance(m, nn.MultiheadAttention)), 1)
    return infer_calling(model, level, inputs, kwargs, batch_first=batch_first, expected=expected,
                         keep_mask=keep_mask, heads=heads, mask_cache=mask_cache)


def _telling(failures: list[Exception], conv: Convention) -> Exception:
    """The failure that says most when no pairing and layout verified: an ambiguous map, else the closest
    mismatch in the pairing found first, else the first failure."""
    ambiguous = [e for e in failures if isinstance(e, AmbiguousMapError)]
    if ambiguous:
        return ambiguous[0]
    mismatched = [e for e in failures if isinstance(e, MapMismatchError)]
    if not mismatched:
        return failures[0]
    first = [e for e in mismatched if getattr(e, "convention", conv).inputs == conv.inputs] or mismatched
    return min(first, key=lambda e: e.difference if isinstance(e, MapMismatchError) else math.inf)  # closest


def _decided(trial: Convention, conv: Convention, pairs: Any, layout: bool | None) -> Convention:
    """The convention whose map verified, its notes saying what the values decided."""
    notes = list(trial.assumptions)
    several = len(conv.alternatives) > 1 or pairs != conv.inputs
    if several:
        decided = f"{'batch-first' if layout else 'sequence-first'} (the shapes allow both: the values decided)"
        notes = [decided if n.endswith("values decide)") else n for n in notes]
    if conv.bindings:
        notes = [f"called as {describe(pairs, conv.masks, conv.params)}" if n.startswith("called as") else
                 "other pairings of the inputs run too: the values decided" if n.startswith("other pairings") else n
                 for n in notes]
    return dataclasses.replace(trial, alternatives=(layout,) if several else trial.alternatives, bindings=(),
                               assumptions=tuple(notes))


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
    if diff > agreement(model) if got["output"].dtype == torch.float64 else diff > 1e-4:
        how = ("as keep-masks (True = may attend), as declared" if conv.keep_mask else
               "as measured (" + "; ".join(f"{p}: {f.describe()}" for p, (_, f) in conv.forms.items()) + ")"
               if conv.forms else "as torch's block-masks (True or -inf = blocked)")
        raise MapMismatchError(
            f"the weight map holds without masks (outputs equal to {wm.difference:.1e}), but with the masks "
            f"{', '.join(k for k, v in kwargs.items() if 'mask' in k and v is not None)} the outputs differ by "
            f"{diff:.3g}: the masks were passed {how}, or the masking code differs; see parity diagnose", diff, wm)
