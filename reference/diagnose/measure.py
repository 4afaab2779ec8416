"""What diagnosis measures about an inferred target before judging it, where values alone could not decide.

- the **layout** (batch-first or not) of a target that runs both ways and matches no configuration: the one in
  which its output for one batch element does not depend on another element's input (nn's modules never mix
  the batch: called in the wrong layout, attention mixes it), else the one in which more of its submodules
  agree with the built-in's in isolation;
- the **options its code fixes**, when a bug hid them at discovery: those the causes found say it follows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from reference.cases.strategies import tanh_gelu
from reference.diagnose.localize import localize
from reference.diagnose.report import Diagnosis
from reference.diagnose.runs import Observation, as_case, observe
from reference.inference.prepare import inferred
from reference.targets.contract import NotSupportedError, Target
from reference.verdict.engine import outputs

# Causes that amount to an option a target's code may fix (found at the place: a fit or the catalogue there)
OPTION_OF: dict[str, tuple[str, object]] = {
    "gelu_tanh_approximation": ("activation", tanh_gelu), "always_gelu": ("activation", "gelu"),
    "always_relu": ("activation", "relu"), "pre_norm": ("norm_first", True), "post_norm": ("norm_first", False),
    "layer_norm_eps_1e-5": ("layer_norm_eps", 1e-5), "layer_norm_eps_1e-6": ("layer_norm_eps", 1e-6),
    "layer_norm_eps_1e-12": ("layer_norm_eps", 1e-12),
    "masks_ignored": ("is_causal", False)}  # said of a target taking no mask: it is not always causal
# What else an option's new value takes with it: a target found not always causal gets no causal mask either
COMPANIONS: dict[tuple[str, object], dict[str, object]] = {("is_causal", False): {"attn_mask": "none"}}


def measure_layout(target: Target, level: str, base: object, device: torch.device | str) -> str | None:
    """Batch-first or sequence-first inside, when the shapes allow both and the values could not decide (the
    map matches no configuration): the layout in which more of the target's submodules agree in isolation."""
    view = inferred(target, level)
    if view.layout is not None:  # measured already (a first pass of diagnosis): kept
        return None
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
    mixing: dict[bool, float] = {}
    own = bool(as_case(obs.case).config.batch_first)
    for layout in found.convention.alternatives:
        view.layout = layout == own  # the case's own layout, or the other one
        try:
            seen = observe(target, base, device, level)
            mixing[layout] = batch_mixing(seen)
            tables = localize(seen)[0]
        except Exception:  # this layout cannot even run: it is not the target's
            agree[layout], mixing[layout] = -1, math.inf
            continue
        isolated = next((t for t in tables if t.mode == "isolated"), None)
        agree[layout] = -1 if isolated is None else sum(not r.diverges for r in isolated.rows)
    chosen = found.convention.batch_first  # the values' pick: kept unless a measurement says otherwise
    name = {True: "batch-first", False: "sequence-first"}
    scale = max(1.0, float(obs.expected["output"].abs().nan_to_num().max()))
    separate = [k for k, v in mixing.items() if v <= SEPARATE * scale]
    if len(separate) == 1:
        best = separate[0]
        why = ("its output for one batch element depends on another's input in the other layout (by up to "
               + ", ".join(f"{mixing[k]:.3g} {name[k]}" for k in mixing if k != best) + "), never in this one")
    else:
        best = max(agree, key=lambda k: (agree[k], k == chosen))
        other = {k: v for k, v in agree.items() if k != best}
        why = (f"{agree[best]} submodules agree in isolation; "
               + ", ".join(f"{name[k]}: {v}" for k, v in other.items()))
    view.layout = None if best == chosen else best == own
    if best == chosen:
        return None
    return (f"layout measured: {name[best]} ({why}); the shapes allow both and the outputs, which differ "
            "either way, could not decide")


SEPARATE = 1e-9  # relative: an output that moves less than this when another batch element changes does not mix


def batch_mixing(obs: Observation) -> float:
    """How far the target's output for one batch element moves when another element's input changes: 0 (to
    rounding) for any module that treats the batch as nn's do (NaN when the case has one element; inf when it
    cannot run). The change is a random vector per position (a constant one would vanish in a LayerNorm)."""
    case = as_case(obs.case)
    if obs.got is None or obs.candidate is None or obs.model is None:
        return math.inf
    if case.batch is None or case.batch < 2:
        return math.nan
    dim, worst = (0 if case.config.batch_first else 1), 0.0
    cand, model = obs.candidate, obs.model
    g = torch.Generator().manual_seed(0)
    for moved in (0, case.batch - 1):
        inputs: dict[str, Tensor] = {}
        for key, value in obs.inputs.items():
            inputs[key] = value.clone()
            if value.dim() == 3:
                part = inputs[key].select(dim, moved)
                part.add_(torch.randn(part.shape, generator=g, dtype=torch.float64).to(part.dtype))
        with torch.no_grad():
            out = cand.call(model, obs.entry.call, inputs, dict(obs.kwargs))
        got = outputs(out).get("output")
        before = obs.got["output"]
        if not isinstance(got, Tensor) or got.shape != before.shape or got.dim() != 3:
            return math.nan
        others = torch.tensor([i for i in range(case.batch) if i != moved])
        diff = (got.detach().double().cpu().index_select(dim, others) - before.index_select(dim, others)).abs()
        worst = max(worst, float(diff.nan_to_num(nan=math.inf).max()))
    return worst


MEASURED = "(measured by diagnosis)"


def may_refit(target: Target, level: str, kind: str) -> bool:
    """Whether the options an inferred target's code fixes may need measuring at the places: it matched no
    configuration when they were found (a bug hid which)."""
    if not kind.startswith("inferred"):
        return False
    try:
        return inferred(target, level).discover().closest
    except Exception:  # it cannot be resolved at all: the families say so
        return False


@dataclass
class Refits:
    """What earlier passes set: the values each option held before (never taken again, so passes cannot go
    round in a circle), and the options a measurement at a place settled (the closest whole output, a guess,
    never changes those)."""

    tried: dict[str, list[object]] = field(default_factory=dict)
    settled: set[str] = field(default_factory=set)


def refit_options(target: Target, level: str, d: Diagnosis, history: Refits | None = None) -> str | None:
    """Correct the options an inferred target's code fixes from the causes found; the note, or None.

    A cause measured exactly at its place outranks the closest whole output."""
    if not d.kind.startswith("inferred") or not d.families or any(c.probe == "twice in eval" for c in d.causes):
        return None  # random outputs (dropout in eval) say nothing about the options
    found = inferred(target, level).discover()
    if not found.closest and not found.measured:
        return None
    history = Refits() if history is None else history
    exact = [OPTION_OF[c.key] for c in d.causes if c.key in OPTION_OF and c.place_explains]
    # a family's closest configuration is a whole-output guess like discovery's own: it never overrides it
    guessed = [OPTION_OF[c.key] for c in d.causes if c.key in OPTION_OF]
    measured = {key for key, _ in exact}
    said = [*exact, *((key, value) for key, value in guessed if key not in measured | history.settled)]
    changes: dict[str, object] = {}
    for key, value in said:
        if key in found.fixed and found.fixed[key] != value and key not in changes \
                and value not in history.tried.get(key, []):
            changes[key] = value
            changes |= {k: v for k, v in COMPANIONS.get((key, value), {}).items() if k in found.fixed}
    if not changes:
        return None
    for key in changes:
        history.tried.setdefault(key, []).append(found.fixed[key])
    history.settled |= measured & set(changes)
    before = {k: getattr(found.fixed[k], "__name__", found.fixed[k]) for k in changes}
    found.fixed.update(changes)
    found.sentence = f"follows {', '.join(f'{k}={v!r}' for k, v in found.fixed.items())} {MEASURED}"
    found.measured = True
    return (f"the options its code fixes, measured: {', '.join(f'{k}={v!r}' for k, v in changes.items())}; the "
            f"closest whole output had suggested {before}, but the difference there comes from the causes below")
