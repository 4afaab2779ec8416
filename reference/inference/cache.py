"""The inferred weight map and calling convention, kept per configuration shape and re-verified per case.

Inferring a map records two forward passes, pairs the tensors and verifies by running; a drawn case with
the same *shape* (the options that change parameter shapes or the call: sizes, layer counts, biases, the
options discovery fixed, the layout, which inputs and masks are given and of what kind; not the seed, the
sequence lengths or the mask values) pairs the same tensors. So a map is inferred once per shape and, on each
new case, only checked: the built-in's weights for the case loaded through it, both run on the case's
inputs (masks included), the outputs must agree to float64 rounding. A map that no longer verifies is
inferred afresh (``InferredTarget.inference``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from reference.inference.auto import Inference
from reference.inference.copying import copy_model
from reference.inference.weightmap import difference
from reference.levels.registry import Level
from reference.verdict.engine import fastpath

FLOAT64_AGREEMENT = 1e-9  # what the map's own verification asks of float64 outputs (reference/inference/weightmap.py)


def _kind(value: Any) -> Hashable:
    if isinstance(value, Tensor):
        return ("tensor", value.dtype, value.dim())
    return value if isinstance(value, Hashable) else repr(value)


def shape_key(case: Any, inputs: Mapping[str, Tensor | None], kwargs: Mapping[str, Any]) -> Hashable:
    """What decides the map and the call of ``case``: its options, and which inputs and masks it gives."""
    options = tuple(sorted(((k, _kind(v)) for k, v in case.options().items()), key=lambda kv: kv[0]))
    given = tuple((k, None if v is None else v.dim()) for k, v in inputs.items())
    masks = tuple((k, _kind(v)) for k, v in sorted(kwargs.items()))
    return options, given, masks


def disagreement(inference: Inference, entry: Level, case: Any, model: nn.Module) -> float:
    """How far ``inference`` is from reproducing the built-in on ``case``: the built-in's weights for the case
    loaded through the map into a float64 copy of ``model``, both called on the case's inputs and masks; the
    largest relative output difference (inf when it cannot be called so), over the layouts the values decide."""
    builtin = entry.seeded_builtin(case)
    inputs, kwargs = entry.inputs(case, torch.float64)
    sample = copy_model(model).to("cpu", torch.float64).eval()
    conv, worst = inference.convention, float("inf")
    try:
        inference.weight_map.load(sample, builtin)
        with torch.no_grad(), fastpath(False):
            expected = entry.call(builtin, **inputs, **kwargs)
            for layout in conv.alternatives or (conv.batch_first,):  # several only where the values decide
                got = dataclasses.replace(conv, batch_first=layout)(sample, inputs, kwargs,
                                                                    batch_first=case.batch_first)
                worst = min(worst, difference(expected, got))
    except Exception:  # it cannot even be called so: inferred afresh, which says why
        return float("inf")
    return worst


def holds(inference: Inference, entry: Level, case: Any, model: nn.Module) -> bool:
    """Whether ``inference`` reproduces the built-in on ``case`` to float64 rounding (``disagreement``)."""
    return disagreement(inference, entry, case, model) <= FLOAT64_AGREEMENT
