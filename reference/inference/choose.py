"""Which built-in slot each target parameter fills (``weightmap.pair``'s choice), in the order the forward pass
uses them.

``choose`` is greedy: each parameter, in order of first use, takes the earliest free slot its shape, use and
kind fit (its name's role first, a bias its matrix's twin). A bug can change that order (a feed-forward run
before the attention: its first matrix then takes the earliest slot it fits, two thirds of the packed q/k/v
projection) and leave tensors on both sides without a counterpart though a one-to-one pairing exists. When
greedy leaves holes, ``complete`` searches the same choices depth first, the same preference order first,
for an assignment that pairs every tensor (within a budget); the pairing is then verified by running like
any other, and a bug shows as a difference, not as "cannot be paired".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from reference.inference.maps import Source
from reference.inference.record import Recording
from reference.inference.slots import Fit, Slot, companion, fits, role_of

BUDGET = 20_000  # choices tried by ``complete`` before it gives up (a layer has ~20 tensors, a few fits each)


class Rows:
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

    def gaps(self, shapes: Mapping[str, tuple[int, ...]], idle: set[str]) -> dict[str, list[tuple[int, int]]]:
        """The built-in's rows no target tensor holds, per tensor (but ``idle`` ones, which the call does not use)."""
        return {n: gaps for n, shape in shapes.items()
                if n not in idle and (gaps := self.missing(n, shape[0] if shape else 1))}

    def give_back(self, name: str, rows: tuple[int, int]) -> None:
        self.taken[name].remove(rows)


class _Options:
    """The slots a target parameter may fill, in preference order, given what is chosen and taken so far."""

    def __init__(self, model_rec: Recording, params: dict[str, nn.Parameter], slots: list[Slot],
                 shapes: dict[str, Any], partners: Any, strict: bool = False) -> None:
        self.rec, self.params, self.slots, self.shapes, self.partners = model_rec, params, slots, shapes, partners
        self.strict = strict  # a bias whose matrix has a twin bias takes that one or none (``complete``)
        self.fitting: dict[tuple[Any, ...], list[Fit]] = {}  # the slots a shape and use can fill, in slot order

    def __call__(self, name: str, chosen: Mapping[str, Fit], rows: Rows) -> list[Fit]:
        use, shape = self.rec.uses[name], tuple(self.params[name].shape)
        key = (shape, use.orientation, use.kind)
        if key not in self.fitting:
            self.fitting[key] = [f for s in self.slots if (f := fits(shape, use, s)) is not None]
        candidates = [f for f in self.fitting[key] if rows.free(f.slot)]
        role = role_of(name)
        if role and any(f.slot.role == role for f in candidates):
            candidates = [f for f in candidates if f.slot.role == role]
        partner = chosen.get(use.partner) if use.partner is not None else None
        twins = companion(partner.slot, self.slots, self.partners, self.shapes) if partner is not None else ()
        if any(f.slot in twins for f in candidates) or (self.strict and twins):  # its matrix's own bias
            candidates = [f for f in candidates if f.slot in twins]
        return sorted(candidates, key=lambda f: (f.slot.order, f.slot.rows))


def choose(model_rec: Recording, params: dict[str, nn.Parameter], slots: list[Slot], shapes: dict[str, Any],
           partners: Any, rows: Rows, fixed: set[str]) -> tuple[dict[str, Fit], list[str], list[tuple[str, ...]]]:
    """Each target parameter's slot, in the order the forward pass uses them: (chosen, unpaired, ties)."""
    options = _Options(model_rec, params, slots, shapes, partners)
    chosen: dict[str, Fit] = {}
    unpaired: list[str] = []
    ties: list[tuple[str, ...]] = []
    for name in model_rec.ordered():
        if name in fixed:
            continue
        candidates = options(name, chosen, rows)
        if not candidates:
            unpaired.append(name)
            continue
        best = candidates[0]
        use = model_rec.uses[name]
        if role_of(name) is None and any(_alike(name, g, params, model_rec) for g in use.group):
            ties.append(use.group)
        chosen[name] = best
        rows.take(best.slot.name, best.slot.rows)
    return chosen, unpaired, ties


def complete(model_rec: Recording, params: dict[str, nn.Parameter], slots: list[Slot], shapes: dict[str, Any],
             partners: Any, rows: Rows, fixed: set[str], idle: set[str]) -> dict[str, Fit] | None:
    """An assignment of every target parameter (but ``fixed``) that leaves no built-in row unpaired (but
    ``idle``, and biases ``held_rows`` allows), ``choose``'s preferences tried first; None when there is none
    within ``BUDGET`` choices. ``rows`` is left as it was."""
    options = _Options(model_rec, params, slots, shapes, partners, strict=True)
    names = [n for n in model_rec.ordered() if n not in fixed]
    chosen: dict[str, Fit] = {}
    tried = 0

    kinds = {s.name: s.kind for s in slots}
    projected = {bias for owner, bias in partners.items() if kinds.get(owner) == "matrix"}

    def done() -> bool:  # a bias may be held at zero only where it is a projection's (never a norm's shift)
        missing = rows.gaps(shapes, idle)
        held = held_rows(missing, slots, shapes, chosen)
        return not missing or (bool(held) and all(h.name in projected for h in held))

    def search(i: int) -> bool:
        nonlocal tried
        if i == len(names):
            return done()
        for fit in options(names[i], chosen, rows):
            tried += 1
            if tried > BUDGET:
                return False
            chosen[names[i]] = fit
            rows.take(fit.slot.name, fit.slot.rows)
            if search(i + 1):
                rows.give_back(fit.slot.name, fit.slot.rows)
                return True
            rows.give_back(fit.slot.name, fit.slot.rows)
            del chosen[names[i]]
        return False

    if any(not options(name, {}, Rows()) for name in names):
        return None  # a tensor no slot fits, whatever is taken
    return dict(chosen) if search(0) else None


def held_rows(missing: Mapping[str, list[tuple[int, int]]], slots: list[Slot], shapes: Mapping[str, tuple[int, ...]],
              chosen: Mapping[str, Fit]) -> tuple[Source, ...]:
    """The built-in's unpaired rows to hold at zero: only biases (shifts), and only where the target has biases
    elsewhere (a target with none at all is the built-in with ``bias=False``, which a configuration says)."""
    kinds = {s.name: s.kind for s in slots if s.rows == (0, shapes[s.name][0] if shapes[s.name] else 1)}
    if not missing or any(kinds.get(n) != "shift" for n in missing):
        return ()
    if not any(f.slot.kind == "shift" for f in chosen.values()):
        return ()
    whole = {n: (0, shapes[n][0] if shapes[n] else 1) for n in missing}
    return tuple(Source(n, None if gap == whole[n] else gap) for n, gaps in missing.items() for gap in gaps)


def _alike(name: str, other: str, params: Mapping[str, Tensor], rec: Recording) -> bool:
    """Two tensors first used by one operation that nothing tells apart: shape, orientation, kind, name."""
    if other == name or other not in params or role_of(other) is not None:
        return False
    a, b = rec.uses[name], rec.uses.get(other)
    return (b is not None and params[name].shape == params[other].shape and a.kind == b.kind
            and a.orientation == b.orientation)
