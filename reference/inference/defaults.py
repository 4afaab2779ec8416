"""What a target does when the call gives it nothing, measured: a required mask's neutral value, causality.

A required mask the call leaves out gets a neutral mask (reference/inference/required.py): ``measured`` keeps
the one through which keys get through (``mixes``) and whose parameter the probes then measure as a mask
(reference/inference/mask_probe.py), in its measured form. A GPT's attention may be causal when given no mask
(``causal_by_default``): then the level's causal mask is its behaviour, and it can be called with none.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import replace

import torch
from torch import Tensor, nn

import reference.inference.binding as binding
import reference.inference.required as required
from reference.inference.convention import Convention
from reference.inference.mask_probe import Probe
from reference.inference.streams import SELF_ATTENTION, STREAMS, Forms, measure_forms

NEUTRAL_TRIES = 8  # neutral masks that let keys through, measured in turn until one is measured exactly


def measured(conv: Convention, probe_model: Callable[[], nn.Module], inputs: Mapping[str, Tensor],
              mask_params: list[str], heads: int,
              measure: Callable[..., Forms] = measure_forms) -> tuple[Forms, required.Neutral] | None:
    """(each mask parameter's measured form, the neutral masks for the required ones, each in its measured
    form); None when no neutral mask lets keys through (``mixes``) with its parameter measured as a mask: the
    parameter is not one (positions, say) and the call cannot be made. A neutral mask measured exactly is kept
    (``Probe.leak`` also asks that blocking nothing leaves the output as with the neutral mask); else the first
    measured at all, as the closest form (the masking may be buggy); up to NEUTRAL_TRIES are measured, each by
    ``measure`` (streams.measure_forms)."""
    def measured(neutral: required.Neutral) -> Forms | None:
        trial = replace(conv, neutral=neutral)

        def run(given: Mapping[str, Tensor], raw: Mapping[str, Tensor]) -> Tensor:
            return trial.invoke(probe_model(), given, raw, batch_first=True)["output"]

        if neutral and not mixes(run, inputs, neutral, shape):
            return None
        return measure(conv.level, run, inputs, mask_params, heads, self_stream=conv.self_attention_only)

    if not conv.neutral:
        return measured({}) or {}, {}
    try:  # the output's shape with the neutral masks that ran in the level's output shape (_runs)
        with torch.no_grad():
            shape = conv.invoke(probe_model(), inputs, {}, batch_first=True)["output"].shape
    except Exception:
        return None
    trials = itertools.chain([conv.neutral], required.candidates(list(conv.neutral), list(inputs),
                                                                 conv.self_attention_only))
    fallback, tries = None, 0
    for neutral in trials:
        forms = measured(neutral)
        if forms is None:
            continue
        tries += 1
        if tries > NEUTRAL_TRIES:
            break
        if all(p in forms for p in neutral):
            kept = {p: (rows, cols, forms[p][1]) for p, (rows, cols, _) in neutral.items()}
            if all(forms[p][1].exact for p in neutral):
                return forms, kept
            fallback = fallback or (forms, kept)
    return fallback


def causal_by_default(conv: Convention, probe_model: nn.Module, inputs: Mapping[str, Tensor], heads: int) -> bool:
    """Whether the target, called with no mask, attends causally on its own input (Probe.causal_by_default);
    an attention is given its queries as keys and values (``inputs``: the query only)."""
    def run(given: Mapping[str, Tensor], raw: Mapping[str, Tensor]) -> Tensor:
        return conv.invoke(probe_model, given, raw, batch_first=True)["output"]

    try:
        stream = SELF_ATTENTION if conv.level == "attention" else STREAMS[conv.level][0][0]
        return Probe(run, inputs, heads).causal_by_default(stream)
    except Exception:  # it does not run without a mask: not causal by default
        return False


def describe_required(conv: Convention) -> str:
    names = ", ".join(conv.neutral)
    return (f"{binding.describe(conv.inputs, {}, conv.params)} raises (the call gives nothing for {names}), and "
            f"no mask blocking nothing, in any form the probes know, makes {names} act as a mask")


def mixes(run: Callable[[Mapping[str, Tensor], Mapping[str, Tensor]], Tensor], inputs: Mapping[str, Tensor],
           neutral: required.Neutral, shape: torch.Size) -> bool:
    """Whether the target, given ``neutral``, runs finite in ``shape`` and lets keys through: perturbing every input at
    position 0 moves the rows after it (a neutral mask that blocks every key runs too, and then nothing moves,
    so every mask form would seem to block exactly what is asked)."""
    moved = {k: v.clone() for k, v in inputs.items()}
    for v in moved.values():
        v[:, 0] += 1.0
    try:
        with torch.no_grad():
            y0 = run(inputs, required.write(neutral, inputs, True))
            y1 = run(moved, required.write(neutral, moved, True))
    except Exception:
        return False
    if y0.shape != shape:
        return False
    rows = (y1 - y0)[:, 1:] if y0.dim() == 3 and y0.shape[1] > 1 else y1 - y0
    return bool(torch.isfinite(y0).all()) and float(rows.abs().max()) > 1e-6 * (1.0 + float(y0.abs().max()))
