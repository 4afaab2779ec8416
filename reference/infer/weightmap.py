"""Infer which of the built-in's parameters each of a target's parameters holds, and prove it by running.

``infer_weight_map`` records the order in which both models use their parameters in one forward pass
(``reference.infer.record``), pairs them by that order, by shape (a transposed ``Conv1D`` weight fits an
(out, in) slot), by kind (a norm's scale is not a bias) and by name (``W_q`` holds the q third of torch's
packed ``in_proj_weight``), then loads the built-in's random
weights into the target and requires both to give the same outputs to float64 rounding. A map that pairs
but does not reproduce the outputs is rejected (the code differs, or the map is wrong): it is never
returned silently. What it cannot decide (tensors never used; several same-shaped tensors first used in
one operation whose order the names do not give) it names, with the override that settles it.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from reference.build import randomize_
from reference.engine import fastpath
from reference.infer.record import Recording, record_uses
from reference.infer.slots import Fit, Slot, builtin_slots, fits, role_of
from reference.weights import WeightMapError

Override = Mapping[str, "str | Sequence[str] | None"]
SOURCE = re.compile(r"^\s*(?P<name>[\w.]+?)\s*(?:\[\s*(?:rows\s+)?(?P<a>\d+)\s*:\s*(?P<b>\d+)\s*\])?\s*(?P<t>\.T)?\s*$")
OVERRIDE_HELP = (
    "write an override, a JSON/TOML file or a Python dict {target_param: \"builtin_param\"}, with rows "
    "\"builtin_param[rows a:b]\", \".T\" for a transposed tensor and a list to concatenate, e.g. "
    "{\"attn.w1\": \"in_proj_weight[rows 8:16]\", \"proj.weight\": \"out_proj.weight.T\"}; "
    "or write an adapter (the plug-in contract in the README)")


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


@dataclass(frozen=True)
class Source:
    """Rows ``rows`` (None: all) of built-in parameter ``name``."""

    name: str
    rows: tuple[int, int] | None = None

    def text(self) -> str:
        return self.name if self.rows is None else f"{self.name}[rows {self.rows[0]}:{self.rows[1]}]"


@dataclass(frozen=True)
class Link:
    """Target parameter ``target`` = concat(sources, dim 0), transposed when ``transpose``, reshaped to its shape."""

    target: str
    sources: tuple[Source, ...]
    transpose: bool = False
    how: str = "order and shape"

    def text(self) -> str:
        body = " ++ ".join(s.text() for s in self.sources)
        return f"{body}.T" if self.transpose else body


@dataclass
class WeightMap:
    """The verified pairing: load the built-in's weights into a target; gather a target's gradients back."""

    links: tuple[Link, ...]
    builtin_shapes: dict[str, tuple[int, ...]]
    ignored: tuple[str, ...] = ()  # target parameters never used in the forward pass: left as they are
    notes: tuple[str, ...] = ()
    difference: float | None = None  # the verified max |target - built-in| (relative), None before verifying
    verified: bool = False  # the outputs agreed within the output dtype's rounding
    ties: tuple[tuple[str, ...], ...] = field(default=(), repr=False)  # same-shaped tensors ordered by argument

    def _value(self, link: Link, state: Mapping[str, Tensor], shape: torch.Size) -> Tensor:
        parts = [state[s.name] if s.rows is None else state[s.name][s.rows[0]:s.rows[1]] for s in link.sources]
        value = parts[0] if len(parts) == 1 else torch.cat(parts)
        return (value.T if link.transpose else value).reshape(shape)

    @torch.no_grad()
    def load(self, model: nn.Module, builtin: nn.Module) -> None:
        """Copy the built-in's weights into ``model`` (converted to each parameter's dtype and device)."""
        state = dict(builtin.named_parameters())
        params = dict(model.named_parameters())
        for link in self.links:
            target = params[link.target]
            target.copy_(self._value(link, state, target.shape))

    def grads(self, model: nn.Module) -> dict[str, Tensor]:
        """``model``'s parameter gradients under the built-in's names, pieces put back in their rows.

        A built-in parameter none of whose pieces has a gradient is left out (the engine judges it missing);
        a piece without a gradient is zero.
        """
        params = dict(model.named_parameters())
        out: dict[str, Tensor] = {}
        for name, shape in self.builtin_shapes.items():
            got = [link for link in self.links if params[link.target].grad is not None
                   and any(s.name == name for s in link.sources)]
            if not got:
                continue
            first = params[got[0].target].grad
            assert first is not None
            full = torch.zeros(shape, dtype=first.dtype, device=first.device)
            for link in got:
                grad = params[link.target].grad
                assert grad is not None
                rows = [self.builtin_shapes[s.name][0] if s.rows is None else s.rows[1] - s.rows[0]
                        for s in link.sources]
                cat_shape = (sum(rows), *self.builtin_shapes[link.sources[0].name][1:])
                g = grad.reshape(cat_shape[::-1]).T if link.transpose else grad.reshape(cat_shape)
                for s, piece in zip(link.sources, torch.split(g, rows), strict=True):
                    if s.name == name:
                        a, b = (0, shape[0]) if s.rows is None else s.rows
                        full[a:b] += piece
            out[name] = full
        return out

    def as_override(self) -> dict[str, str | list[str]]:
        """The map written as an override (to edit and pass back)."""
        out: dict[str, str | list[str]] = {}
        for link in self.links:
            texts = [s.text() for s in link.sources]
            if link.transpose:
                texts = [f"{t}.T" for t in texts] if len(texts) == 1 else texts
            out[link.target] = texts[0] if len(texts) == 1 else texts
        return out

    def describe(self) -> str:
        """One line per target parameter: what it holds and how it was paired."""
        width = max((len(link.target) for link in self.links), default=0)
        lines = [f"  {link.target:<{width}} <- {link.text():<40} ({link.how})" for link in self.links]
        lines += [f"  {name:<{width}}    never used in the forward pass: left as is" for name in self.ignored]
        checked = ("" if self.difference is None
                   else f"; verified: outputs equal to {self.difference:.1e} with the built-in's random weights"
                   if self.verified else f"; NOT verified: the outputs differ by {self.difference:.3g}")
        return "\n".join([f"weight map ({len(self.links)} tensors{checked}):", *lines,
                          *(f"  note: {n}" for n in self.notes)])


def parse_source(text: str) -> tuple[Source, bool]:
    """``"in_proj_weight[rows 0:8].T"`` -> (Source("in_proj_weight", (0, 8)), transposed)."""
    m = SOURCE.match(text)
    if m is None:
        raise ValueError(f"cannot read override source {text!r}: write NAME, NAME[rows a:b], optionally .T")
    rows = (int(m["a"]), int(m["b"])) if m["a"] is not None else None
    return Source(m["name"], rows), m["t"] is not None


def load_override(source: str | Override) -> dict[str, Any]:
    """An override as a dict: given as one, or read from a .json, .toml or .py file (its ``WEIGHT_MAP``)."""
    if not isinstance(source, str):
        return dict(source)
    if source.endswith(".json"):
        import json
        with open(source) as f:
            return dict(json.load(f))
    if source.endswith(".toml"):
        import tomllib  # type: ignore[import-not-found,unused-ignore]
        with open(source, "rb") as f:
            return dict(tomllib.load(f))
    if source.endswith(".py"):
        import runpy
        return dict(runpy.run_path(source)["WEIGHT_MAP"])
    raise ValueError(f"an override file is .json, .toml or .py (with WEIGHT_MAP = {{...}}), got {source!r}")


def _override_links(override: Mapping[str, Any], params: Mapping[str, Tensor],
                    shapes: Mapping[str, tuple[int, ...]]) -> tuple[list[Link], list[str]]:
    links, ignored = [], []
    for target, value in override.items():
        if target not in params:
            raise WeightMapError(f"override names target parameter {target!r}, which the target does not have "
                                 f"(it has {', '.join(params)})")
        if value is None or value == "":
            ignored.append(target)
            continue
        texts = [value] if isinstance(value, str) else list(value)
        parsed = [parse_source(t) for t in texts]
        for s, _ in parsed:
            if s.name not in shapes:
                raise WeightMapError(f"override maps {target!r} to {s.name!r}, which the built-in does not have "
                                     f"(it has {', '.join(shapes)})")
        transpose = len(parsed) == 1 and parsed[0][1]
        links.append(Link(target, tuple(s for s, _ in parsed), transpose, "override"))
    return links, ignored


class _Rows:
    """Which rows of each built-in parameter are taken."""

    def __init__(self) -> None:
        self.taken: dict[str, list[tuple[int, int]]] = {}

    def free(self, slot: Slot) -> bool:
        return all(b <= slot.rows[0] or a >= slot.rows[1] for a, b in self.taken.get(slot.name, []))

    def take(self, name: str, rows: tuple[int, int]) -> None:
        self.taken.setdefault(name, []).append(rows)

    def missing(self, name: str, n: int) -> list[tuple[int, int]]:
        gaps, at = [], 0
        for a, b in sorted(self.taken.get(name, [])):
            if a > at:
                gaps.append((at, a))
            at = max(at, b)
        return gaps + ([(at, n)] if at < n else [])


def pair(builtin: nn.Module, model: nn.Module, builtin_rec: Recording, model_rec: Recording,
         override: Mapping[str, Any] | None = None) -> WeightMap:
    """Pair by order, shape, kind and name (no verification); UnpairedError/AmbiguousMapError when it cannot."""
    slots, shapes = builtin_slots(builtin, builtin_rec)
    params = dict(model.named_parameters())
    rows = _Rows()
    links, ignored = _override_links(override or {}, params, shapes)
    for link in links:
        for s in link.sources:
            rows.take(s.name, s.rows or (0, shapes[s.name][0] if shapes[s.name] else 1))
    fixed = {link.target for link in links} | set(ignored)
    chosen: dict[str, Fit] = {}
    notes: list[str] = []
    unpaired: list[str] = []
    ties: list[tuple[str, ...]] = []
    for name in model_rec.ordered():
        if name in fixed:
            continue
        use, shape = model_rec.uses[name], tuple(params[name].shape)
        candidates = [f for s in slots if rows.free(s) and (f := fits(shape, use, s)) is not None]
        role = role_of(name)
        if role and any(f.slot.role == role for f in candidates):
            candidates = [f for f in candidates if f.slot.role == role]
        if not candidates:
            unpaired.append(name)
            continue
        best = min(candidates, key=lambda f: (f.slot.order, f.slot.rows))
        if role is None and any(_alike(name, g, params, model_rec) for g in use.group):
            ties.append(use.group)
        chosen[name] = best
        rows.take(best.slot.name, best.slot.rows)
    for name, fit in chosen.items():
        slot = fit.slot
        whole = (0, shapes[slot.name][0] if shapes[slot.name] else 1)
        source = Source(slot.name, None if slot.rows == whole else slot.rows)
        how = "order and shape" + (f", name says {slot.role}" if slot.role and role_of(name) == slot.role else "")
        links.append(Link(name, (source,), fit.transpose, how + (", transposed" if fit.transpose else "")))
    idle = set(builtin_rec.unused)  # the level's call does not use them (feed_forward: the layer's attention)
    missing = {n: gaps for n, shape in shapes.items()
               if n not in idle and (gaps := rows.missing(n, shape[0] if shape else 1))}
    never = [n for n in model_rec.unused if n not in fixed]
    if idle:
        notes.append(f"built-in tensors the level's call does not use, not paired: {', '.join(sorted(idle))}")
    if missing and never:
        raise AmbiguousMapError(
            f"cannot pair target {', '.join(f'{n} {tuple(params[n].shape)}' for n in never)}: never used in the "
            f"forward pass, so its place is unknown; the built-in's {_gaps(missing, shapes)} are unpaired. "
            + OVERRIDE_HELP, never, list(missing))
    if missing or unpaired:
        raise UnpairedError(_unpaired_message(missing, shapes, unpaired, params, model_rec), unpaired, list(missing))
    if never:
        notes.append(f"never used in the forward pass, left as they are: {', '.join(never)}")
    tied = [n for n in model_rec.ordered() if model_rec.uses[n].uses > 1]
    if tied:
        notes.append(f"used more than once: {', '.join(tied)}")
    return WeightMap(tuple(sorted(links, key=lambda link: list(params).index(link.target))),
                     {n: shape for n, shape in shapes.items() if n not in idle},
                     tuple(ignored) + tuple(never), tuple(notes), ties=tuple(dict.fromkeys(ties)))


def _alike(name: str, other: str, params: Mapping[str, Tensor], rec: Recording) -> bool:
    """Two tensors first used by one operation that nothing tells apart: shape, orientation, kind, name."""
    if other == name or other not in params or role_of(other) is not None:
        return False
    a, b = rec.uses[name], rec.uses.get(other)
    return (b is not None and params[name].shape == params[other].shape and a.kind == b.kind
            and a.orientation == b.orientation)


def _gaps(missing: Mapping[str, list[tuple[int, int]]], shapes: Mapping[str, tuple[int, ...]]) -> str:
    parts = []
    for name, gaps in missing.items():
        full = [(0, shapes[name][0] if shapes[name] else 1)]
        parts += [f"{name} {shapes[name]}" if gaps == full else f"{name}[rows {a}:{b}]" for a, b in gaps]
    return ", ".join(parts)


def _unpaired_message(missing: Mapping[str, list[tuple[int, int]]], shapes: Mapping[str, tuple[int, ...]],
                      unpaired: list[str], params: Mapping[str, Tensor], rec: Recording) -> str:
    lines = ["the target's parameters and the built-in's do not pair one to one:"]
    if missing:
        lines.append(f"  built-in tensors with no target counterpart: {_gaps(missing, shapes)}")
        if all(n.endswith("bias") for n in missing) and not any(n.endswith("bias") for n in unpaired):
            lines.append("  the target has no biases there: compare it with a built-in built with bias=False")
    if unpaired:
        lines.append("  target tensors with no built-in counterpart: "
                     + ", ".join(f"{n} {tuple(params[n].shape)}" for n in unpaired))
        if all(n.endswith("bias") or "bias" in n for n in unpaired) and not missing:
            lines.append("  the built-in has no biases there: compare with bias=True")
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


def _tolerance(out: Any) -> float:
    dtype = _outputs(out)["output"].dtype
    return 1e-9 if dtype == torch.float64 else 1e-4 if dtype == torch.float32 else 3e-2


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
    wm.difference, wm.verified = diff, diff <= _tolerance(got)
    if wm.verified:
        return wm
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
