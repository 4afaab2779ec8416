"""Infer which of the built-in's parameters each of a target's parameters holds, and prove it by running.

``infer_weight_map`` records the order in which both models use their parameters in one forward pass
(``reference.inference.record``), pairs them by that order, by shape (a transposed ``Conv1D`` weight fits an
(out, in) slot), by kind (a norm's scale is not a bias) and by name (``W_q`` holds the q third of torch's
packed ``in_proj_weight``), then loads the built-in's random weights into the target and requires both to
give the same outputs to float64 rounding. A map that pairs
but does not reproduce the outputs is rejected (the code differs, or the map is wrong): it is never
returned silently. What it cannot decide (tensors never used; several same-shaped tensors first used in
one operation whose order the names do not give) it names, with the override that settles it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn

import reference.inference.hints as hints
from reference.builtin.config import randomize_
from reference.builtin.weights import WeightMapError
from reference.inference.choose import Rows, choose, complete, held_rows
from reference.inference.layouts import alternatives, zero_values
from reference.inference.maps import OVERRIDE_HELP, Link, Override, Source, WeightMap, load_override, override_links
from reference.inference.record import Recording, record_uses
from reference.inference.slots import Fit, builtin_slots, companions, role_of
from reference.verdict.engine import fastpath
from reference.verdict.precision import lower_precision_in


class AmbiguousMapError(WeightMapError):
    """The pairing cannot be decided from order, shapes and names: an override (or an adapter) must say."""

    def __init__(self, message: str, target: Sequence[str] = (), builtin: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.target, self.builtin = tuple(target), tuple(builtin)


class UnpairedError(WeightMapError):
    """Some tensors have no counterpart (different structure: biases, a final norm, shared layers ...)."""

    def __init__(self, message: str, target: Sequence[str] = (), builtin: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.target, self.builtin = tuple(target), tuple(builtin)


class MapMismatchError(WeightMapError):
    """The tensors paired, but with the built-in's weights loaded the target's outputs differ."""

    def __init__(self, message: str, difference: float, weight_map: WeightMap) -> None:
        super().__init__(message)
        self.difference, self.weight_map = difference, weight_map


def pair(builtin: nn.Module, model: nn.Module, builtin_rec: Recording, model_rec: Recording,
         override: Mapping[str, Any] | None = None) -> WeightMap:
    """Pair by order, shape, kind and name (no verification); UnpairedError/AmbiguousMapError when it cannot.

    A bias goes with the matrix it is added to (its built-in twin's bias, not the next free one by order). A
    built-in bias the target has no counterpart for, where the target has biases elsewhere, is held at zero
    (``WeightMap.held``): the built-in is then exactly the module the user wrote."""
    slots, shapes = builtin_slots(builtin, builtin_rec)
    partners = companions(builtin, builtin_rec)
    params = dict(model.named_parameters())
    links, ignored = override_links(override or {}, params, shapes)
    fixed = {link.target for link in links} | set(ignored)
    rows = _overridden(links, shapes)
    chosen, unpaired, ties = choose(model_rec, params, slots, shapes, partners, rows, fixed)
    notes: list[str] = []
    idle = set(builtin_rec.unused)  # the level's call does not use them (feed_forward: the layer's attention)
    missing = rows.gaps(shapes, idle)
    if unpaired or (missing and not held_rows(missing, slots, shapes, chosen)):  # holes: one-to-one by shape?
        whole = complete(model_rec, params, slots, shapes, partners, _overridden(links, shapes), fixed, idle)
        if whole is not None:
            chosen, unpaired, rows = whole, [], _overridden(links, shapes, whole.values())
            missing = rows.gaps(shapes, idle)
            notes.append("paired by shape and kind: the order of first use pairs no one-to-one map")
    links += _chosen_links(chosen, shapes)
    never = [n for n in model_rec.unused if n not in fixed]
    if idle:
        notes.append(f"built-in tensors the level's call does not use, not paired: {', '.join(sorted(idle))}")
    if missing and never:
        raise AmbiguousMapError(
            f"cannot pair target {', '.join(f'{n} {tuple(params[n].shape)}' for n in never)}: never used in the "
            f"forward pass, so its place is unknown; the built-in's {_gaps(missing, shapes)} are unpaired. "
            + OVERRIDE_HELP, never, list(missing))
    held = held_rows(missing, slots, shapes, chosen) if not unpaired else ()
    if held:
        missing = {}
        notes += [f"{s.text()} has no counterpart: checked with it fixed at 0" + (
            f" (its gradient is not judged: the rest of {s.name} is the target's)" if s.rows else "") for s in held]
    if missing or unpaired:
        raise UnpairedError(_unpaired_message(missing, shapes, unpaired, params, model_rec, chosen, builtin_rec),
                            unpaired, list(missing))
    if never:
        notes.append(f"never used in the forward pass, left as they are: {', '.join(never)}")
    tied = [n for n in model_rec.ordered() if model_rec.uses[n].uses > 1]
    if tied:
        notes.append(f"used more than once: {', '.join(tied)}")
    return WeightMap(links=tuple(sorted(links, key=lambda link: list(params).index(link.target))),
                     builtin_shapes={n: shape for n,
                                     shape in shapes.items() if n not in idle and n not in {s.name for s in held}},
                     ignored=tuple(ignored) + tuple(never), notes=tuple(notes), ties=tuple(dict.fromkeys(ties)),
                     held=held)



def _overridden(links: Sequence[Link], shapes: Mapping[str, tuple[int, ...]], fits: Iterable[Fit] = ()) -> Rows:
    """The rows an override's ``links`` take, and ``fits``' slots."""
    rows = Rows()
    for link in links:
        for s in link.sources:
            rows.take(s.name, s.rows or (0, shapes[s.name][0] if shapes[s.name] else 1))
    for fit in fits:
        rows.take(fit.slot.name, fit.slot.rows)
    return rows


def _chosen_links(chosen: dict[str, Fit], shapes: dict[str, Any]) -> list[Link]:
    """The links the choice makes, each saying how it was paired."""
    links = []
    for name, fit in chosen.items():
        slot = fit.slot
        whole = (0, shapes[slot.name][0] if shapes[slot.name] else 1)
        source = Source(slot.name, None if slot.rows == whole else slot.rows)
        how = "order and shape" + (f", name says {slot.role}" if slot.role and role_of(name) == slot.role else "")
        links.append(Link(name, (source,), fit.transpose, how + (", transposed" if fit.transpose else "")))
    return links

def _gaps(missing: Mapping[str, list[tuple[int, int]]], shapes: Mapping[str, tuple[int, ...]]) -> str:
    parts = []
    for name, gaps in missing.items():
        full = [(0, shapes[name][0] if shapes[name] else 1)]
        parts += [f"{name} {shapes[name]}" if gaps == full else f"{name}[rows {a}:{b}]" for a, b in gaps]
    return ", ".join(parts)


def _unpaired_message(missing: Mapping[str, list[tuple[int, int]]], shapes: Mapping[str, tuple[int, ...]],
                      unpaired: list[str], params: Mapping[str, Tensor], rec: Recording,
                      chosen: Mapping[str, Fit], builtin_rec: Recording) -> str:
    lines = ["the target's parameters and the built-in's do not pair one to one:"]
    if missing:
        lines.append(f"  built-in tensors with no target counterpart: {_gaps(missing, shapes)}")
        biased = any(f.slot.kind == "shift" for f in chosen.values()) or any(rec.uses[n].kind == "shift"
                                                                              for n in unpaired if n in rec.uses)
        if all(n.endswith("bias") for n in missing) and not biased:
            lines.append("  the target has no biases there: compare it with a built-in built with bias=False")
    if unpaired:
        lines.append("  target tensors with no built-in counterpart: "
                     + ", ".join(f"{n} {tuple(params[n].shape)}" for n in unpaired))
        if all(n.endswith("bias") or "bias" in n for n in unpaired) and not missing:
            lines.append("  the built-in has no biases there: compare with bias=True")
    lines += hints.unpaired(missing, shapes, unpaired, params, rec, builtin_rec)
    shared = [n for n in rec.ordered() if rec.uses[n].uses > 1]
    if missing and shared:
        lines.append(f"  used more than once in the target: {', '.join(shared)} (one module shared where the "
                     "built-in has separate ones?)")
    lines.append("  sizes or structure differ (a final norm, biases, layer counts); " + OVERRIDE_HELP)
    return "\n".join(lines)


def _outputs(out: Any) -> dict[str, Tensor]:
    if isinstance(out, Tensor):
        return {"output": out}
    if isinstance(out, (tuple, list)):
        return {k: v for k, v in zip(("output", "weights"), out, strict=False) if isinstance(v, Tensor)}
    if isinstance(out, Mapping):
        return {k: v for k, v in out.items() if isinstance(v, Tensor)}
    raise TypeError(f"a run returned a {type(out).__name__}, not a Tensor, tuple or dict")


def difference(expected: Any, got: Any) -> float:
    """The largest relative difference between the outputs both runs return ("output" at least)."""
    want, have = _outputs(expected), _outputs(got)
    worst = 0.0
    for key in want.keys() & have.keys() or {"output"}:
        a, b = want[key].detach().double(), have[key].detach().double().to(want[key].device)
        if a.shape != b.shape:
            return float("inf")
        finite = torch.isfinite(a)
        if not torch.equal(finite, torch.isfinite(b)):
            return float("inf")
        if finite.any():
            worst = max(worst, float(((a - b)[finite].abs().max()) / max(1.0, float(a[finite].abs().max()))))
    return worst


FLOAT64_AGREEMENT = 1e-9  # relative: what a map must reproduce float64 outputs to
# relative: the same, for code that computes in float32 when run in float64 (a torch.FloatTensor constant, an
# x.float()); its own rounding there is ~1e-7 relative, and option values still differ by more (eps 1e-5 vs 1e-6
# moves a LayerNorm's output by ~4e-6)
BELOW_FLOAT64_AGREEMENT = 1e-6
_COMPUTES_BELOW: set[type] = set()  # classes seen to compute below float64 when run in float64


def agreement(model: nn.Module) -> float:
    """How closely a map must reproduce the built-in's float64 outputs for ``model``'s code."""
    return BELOW_FLOAT64_AGREEMENT if type(model) in _COMPUTES_BELOW else FLOAT64_AGREEMENT


def _tolerance(out: Any, model: nn.Module) -> float:
    dtype = _outputs(out)["output"].dtype
    return agreement(model) if dtype == torch.float64 else 1e-4 if dtype == torch.float32 else 3e-2


def _note_precision(model: nn.Module, run_model: Callable[[nn.Module], Any]) -> None:
    """Mark ``model``'s class when its float64 run computes with a less precise floating tensor."""
    def rerun(watch: AbstractContextManager[object] | None = None) -> Mapping[str, Tensor]:
        with torch.no_grad(), fastpath(False), watch or nullcontext():
            run_model(model)
        return {}
    if lower_precision_in(rerun) is not None:
        _COMPUTES_BELOW.add(type(model))


def _value_rows(wm: WeightMap, reference: nn.Module, model: nn.Module, run_builtin: Callable[[nn.Module], Any],
                run_model: Callable[[nn.Module], Any], tolerance: float) -> WeightMap:
    """Of ``wm`` and its packed q/k/v layouts, none verified: the first that agrees with the built-in once the
    value rows are zero (nothing after the scores can differ then), else ``wm`` (reference/inference/layouts.py)."""
    candidates = [wm, *alternatives(wm, reference)]
    if len(candidates) == 1:
        return wm
    silent = zero_values(copy.deepcopy(reference))
    with torch.no_grad(), fastpath(False):
        expected = run_builtin(silent)
        for candidate in candidates:
            candidate.load(model, silent)
            if difference(expected, run_model(model)) <= tolerance:
                return candidate
    return wm


def infer_weight_map(builtin: nn.Module, model: nn.Module, run_builtin: Callable[[nn.Module], Any],
                     run_model: Callable[[nn.Module], Any], override: str | Override | None = None,
                     *, seed: int = 0) -> WeightMap:
    """The verified map from ``builtin``'s parameters to ``model``'s (which is left loaded, in eval mode).

    ``run_builtin(module)``/``run_model(module)`` run one forward pass on the same sample inputs (float64
    is best). A random-weight copy of ``builtin`` is loaded into ``model`` and both outputs must agree to the
    output dtype's rounding. Raises UnpairedError (no counterpart), AmbiguousMapError (order unknown: an
    override settles it) or MapMismatchError (paired, but the outputs differ); all are WeightMapError.
    """
    reference = randomize_(copy.deepcopy(builtin).eval(), torch.Generator().manual_seed(seed))
    model.eval()
    with fastpath(False):
        builtin_rec = record_uses(reference, run_builtin)
        model_rec = record_uses(model, run_model)
        wm = pair(reference, model, builtin_rec, model_rec, load_override(override) if override else None)
        wm.load(model, reference)
        with torch.no_grad():
            expected, got = run_builtin(reference), run_model(model)
    diff = difference(expected, got)
    if diff > FLOAT64_AGREEMENT and _outputs(got)["output"].dtype == torch.float64:
        _note_precision(model, run_model)
    wm.difference, wm.verified = diff, diff <= _tolerance(got, model)
    if wm.verified:
        return wm
    for other in alternatives(wm, reference):  # a packed q/k/v projection laid out otherwise (per head, ...)
        other.load(model, reference)
        with torch.no_grad(), fastpath(False):
            found = difference(expected, run_model(model))
        if found <= _tolerance(got, model):
            other.difference, other.verified = found, True
            return other
    wm = _value_rows(wm, reference, model, run_builtin, run_model, _tolerance(got, model))
    wm.load(model, reference)
    ties = [g for g in wm.ties if not any(link.how == "override" for link in wm.links
                                                           if link.target in g)]
    if ties:
        names = "; ".join(", ".join(g) for g in ties)
        raise AmbiguousMapError(
            f"cannot order target tensors {names}: each group is first used by one operation and their names do "
            f"not say which is which; ordered by argument position, the outputs differ by {diff:.3g}. "
            + OVERRIDE_HELP, [n for g in ties for n in g])
    raise MapMismatchError(
        f"paired by order and shape, but the outputs differ by {diff:.3g}: the map is wrong or the code differs; "
        f"see parity diagnose.\n{wm.describe()}", diff, wm)
