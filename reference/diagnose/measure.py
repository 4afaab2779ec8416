"""What diagnosis measures about an inferred target before judging it, where values alone could not decide.

- the **layout** (batch-first or not) of a target that runs both ways and matches no configuration: the one in
  which more of its submodules agree with the built-in's in isolation;
- the **options its code fixes**, when a bug hid them at discovery: those the causes found say it follows.
"""

from __future__ import annotations

import ast

import torch

from reference.cases.strategies import tanh_gelu
from reference.diagnose.localize import localize
from reference.diagnose.report import Diagnosis
from reference.diagnose.runs import as_case, observe
from reference.inference.prepare import inferred
from reference.targets.contract import NotSupportedError, Target

# Causes that amount to an option a target's code may fix (found at the place: a fit or the catalogue there)
OPTION_OF = {"gelu_tanh_approximation": "activation=tanh_gelu", "always_gelu": "activation='gelu'",
             "always_relu": "activation='relu'", "pre_norm": "norm_first=True", "post_norm": "norm_first=False",
             "layer_norm_eps_1e-5": "layer_norm_eps=1e-05", "layer_norm_eps_1e-6": "layer_norm_eps=1e-06",
             "layer_norm_eps_1e-12": "layer_norm_eps=1e-12"}


def measure_layout(target: Target, level: str, base: object, device: torch.device | str) -> str | None:
    """Batch-first or sequence-first inside, when the shapes allow both and the values could not decide (the
    map matches no configuration): the layout in which more of the target's submodules agree in isolation."""
    view = inferred(target, level)
    try:
        obs = observe(target, base, device, level)
    except NotSupportedError:
        return None
    found = getattr(obs.candidate, "inference", None)
    if found is not None and not found.weight_map.verified:  # calling measured it already (batches kept apart)
        said = next((n for n in found.convention.assumptions if n.startswith("layout measured:")), None)
        if said is not None:
            return said
    if found is None or found.weight_map.verified or len(found.convention.alternatives) < 2:
        return None
    agree: dict[bool, int] = {}
    own = bool(as_case(obs.case).config.batch_first)
    for layout in found.convention.alternatives:
        view.layout = layout == own  # the case's own layout, or the other one
        try:
            tables = localize(observe(target, base, device, level))[0]
        except Exception:  # this layout cannot even run: it is not the target's
            agree[layout] = -1
            continue
        isolated = next((t for t in tables if t.mode == "isolated"), None)
        agree[layout] = -1 if isolated is None else sum(not r.diverges for r in isolated.rows)
    chosen = found.convention.batch_first  # the values' pick: kept unless another layout agrees strictly more
    best = max(agree, key=lambda k: (agree[k], k == chosen))
    view.layout = None if best == chosen else best == own
    if best == chosen:
        return None
    other = {k: v for k, v in agree.items() if k != best}
    name = {True: "batch-first", False: "sequence-first"}
    return (f"layout measured: {name[best]} ({agree[best]} submodules agree in isolation; "
            + ", ".join(f"{name[k]}: {v}" for k, v in other.items()) + "); the shapes allow both and the "
            "outputs, which differ either way, could not decide")


def refit_options(target: Target, level: str, d: Diagnosis) -> str | None:
    """Correct the options an inferred target's code fixes from the causes found; the note, or None."""
    if not d.kind.startswith("inferred") or not d.families:
        return None
    found = inferred(target, level).discover()
    if "matches no" not in found.sentence:
        return None
    said = [*d.families[0].closest.split(" + "), *(OPTION_OF.get(c.key, "") for c in d.causes)]
    changes: dict[str, object] = {}
    for part in filter(None, said):
        key, _, text = part.partition("=")
        try:
            value = tanh_gelu if text == "tanh_gelu" else ast.literal_eval(text)
        except (ValueError, SyntaxError):
            continue
        if key in found.fixed and found.fixed[key] != value:
            changes[key] = value
    if not changes:
        return None
    before = {k: getattr(found.fixed[k], "__name__", found.fixed[k]) for k in changes}
    found.fixed.update(changes)
    found.sentence = f"follows {', '.join(f'{k}={v!r}' for k, v in changes.items())} (measured by diagnosis)"
    return (f"the options its code fixes, measured: {', '.join(f'{k}={v!r}' for k, v in changes.items())}; the "
            f"closest whole output had suggested {before}, but the difference there comes from the causes below")
