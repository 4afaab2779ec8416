"""A user's module at any level, with no adapter: constructed, mapped, called and configured by inference.

``InferredTarget(target, level)`` turns a class, a zero-argument factory or an ``nn.Module`` instance into
the engine's candidates, one per drawn case (each case resolved by reference/inference/resolver.py):

1. **configuration by measurement** (``discover``, once): the options the constructor does not take
   (``norm_first``, ``activation``, ``bias``, ``layer_norm_eps``, a final norm) are fixed by the code; the
   configuration it implements is found by trying them until the weight map verifies, and said in words;
   the calling convention (binding, layout, mask forms) is found on the first and kept;
2. **drawn cases adapted to the target**, not filtered: those options set as found, the sizes it is not
   given read from the built model, the number of heads measured (reference/inference/sizes.py), masks it takes
   no argument for left out, and all of it noted;
3. the **weight map**, inferred once per configuration shape (reference/inference/cache.py) and used as is;
   the gradients gathered back under the built-in's names, so they are judged too.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

import reference.inference.sizes as fixed_sizes
from reference.builtin.config import Config
from reference.builtin.weights import WeightMapError
from reference.inference.auto import Inference
from reference.inference.cache import disagreement
from reference.inference.calling import CallError, random_float64_copy
from reference.inference.candidate import InferredCandidate
from reference.inference.construct import Plan
from reference.inference.options import (
    CAUSAL_FIELDS,
    DEFAULTS,
    Discovery,
    accepted,
    call_shapes,
    grid,
    hidden_by,
    measurable,
    shown,
    size_notes,
)
from reference.inference.options import sentence as configuration_sentence
from reference.inference.resolver import Resolver, call_shape
from reference.inference.weightmap import MapMismatchError, UnpairedError, agreement
from reference.targets.contract import NotSupportedError, TargetError
from reference.verdict.assertions import record_note


@dataclass(kw_only=True)
class _Search:
    """Discovery's state over the configurations it tries."""

    base: Any
    plan: Plan
    defaults: dict[str, Any]
    heads_unknown: bool
    tried: list[str] = field(default_factory=list)
    paired: dict[str, MapMismatchError] = field(default_factory=dict)  # options but activation and eps (they
    unpaired: dict[str, str] = field(default_factory=dict)  # change no parameter) -> the map that paired, or why not
    deferred: list[tuple[float, dict[str, Any], Any, nn.Module, Any]] = field(default_factory=list)  # heads unknown:
    # mismatched at the drawn heads
    differed: list[dict[str, Any]] = field(default_factory=list)  # call shapes that ran and differed
    closest: tuple[float, dict[str, Any], Any, nn.Module, Any, dict[int, int]] | None = None
    heads_paired: set[int] = field(default_factory=set)  # widths whose other numbers of heads were tried for pairing

    def keep_closest(self, difference: float, fixed: dict[str, Any], case: Any, model: nn.Module, mismatch: Any,
                     heads: dict[int, int]) -> None:
        if self.closest is None or difference < self.closest[0]:
            self.closest = (difference, fixed, case, model, mismatch, heads)


@dataclass(kw_only=True)
class InferredTarget(Resolver):
    """A user's class, factory or instance checked at ``level`` with everything inferred."""

    def show_map(self) -> str:
        """What was inferred, weight map included, on the case the configuration was measured on."""
        found = self.discover()
        lines = [f"{self.target.spec} at {self.level}: {found.sentence}", *found.notes]
        if found.inference is not None:
            lines.append(found.inference.weight_map.describe())
        return "\n".join(lines)

    def discover(self) -> Discovery:
        """Find, once, the built-in configuration the target implements (options it does not take, the sizes
        and the number of heads it has)."""
        if self._discovery is not None:
            return self._discovery
        if self._failed is None:
            try:
                return self._discover()
            except TargetError as exc:
                self._failed = exc
        # it failed: every case fails the same way, said at once, from one place (a replay sees the same failure)
        raise TargetError(str(self._failed))

    def _discover(self) -> Discovery:
        base = self.entry.pinned[0][0] if self.entry.pinned else self.entry.from_config(Config())
        base, plan = accepted(self._sample, base.unmasked())
        heads_unknown = "nhead" in fixed_sizes.not_given(self.level, plan.not_taken)
        base = measurable(base, plan.taken, heads_unknown)
        defaults = {k: v for k, v in DEFAULTS.items() if k in plan.not_taken}
        search = _Search(base=base.with_options(dict(defaults)), plan=plan, defaults=defaults,
                         heads_unknown=heads_unknown)
        shapes = call_shapes(self.level, self.target.obj)
        start = search.base.options()
        for shape, combo in ((shape, combo) for shape in shapes for combo in grid(self.level, plan.not_taken, start)):
            if shape and self.level != "attention" and not self._causal_by_itself(search.base):
                break  # measured: a layer that is not causal is not tried with a causal mask (nor reported closest)
            if not hidden_by(shape, search.differed):
                found = self._try(search, shape, {**shape, **combo})
                if found is not None:
                    return found
        found = self._try_other_heads(search)
        if found is not None:
            return found
        if search.closest is not None:  # it pairs with the built-in but equals none: check it where it is closest
            difference, fixed, case, model, mismatch, self._heads = search.closest
            note = (f"matches no {self.entry.builtin} configuration tried; closest (outputs differ by "
                    f"{difference:.3g}): {shown(fixed)}; run parity diagnose to see where it differs")
            return self._found(search.base, defaults, fixed, self._mismatched(mismatch, case, model), plan, note,
                               case)
        raise TargetError(
            f"{self.target.spec} cannot be paired with {self.entry.builtin} in any configuration tried:\n  "
            + "\n  ".join(search.tried)
            + "\nwrite an override or an adapter (docs/plugins.md), or run parity diagnose")

    def _causal_by_itself(self, base: Any) -> bool:
        """Measured once, on a random-weight copy, through the convention the unmasked call found: moving the last
        position of the layer's own sequence (``tgt`` for a decoder, else ``src``) leaves the first position's
        output as it was (a causal mask off by one still counts: the causal shapes are tried, and verified, and
        diagnosis names it). True when it cannot be measured."""
        if self._causal is None:
            self._causal = self._measure_causal(base)
        return self._causal

    def _measure_causal(self, base: Any) -> bool:
        case, model, _ = self._sample(base.unmasked().long_enough())
        conv = self._conventions.get(call_shape(case))
        if conv is None:
            return True
        inputs, kwargs = self.entry.inputs(case, torch.float64)
        stream = "tgt" if "tgt" in inputs else "src"
        axis = 1 if case.batch_first else 0
        moved = inputs[stream].clone()
        last = moved.select(axis, -1)  # moved at random: a constant shift of a position vanishes in a LayerNorm
        last.add_(torch.randn(last.shape, generator=torch.Generator().manual_seed(1), dtype=last.dtype))
        sample = random_float64_copy(model)
        try:
            with torch.no_grad():
                before = conv(sample, inputs, kwargs, batch_first=case.batch_first)["output"]
                after = conv(sample, {**inputs, stream: moved}, kwargs, batch_first=case.batch_first)["output"]
        except Exception:  # it cannot be called so: the causal shapes decide
            return True
        first = (before.narrow(axis, 0, 1) - after.narrow(axis, 0, 1)).abs().max()
        return float(first) <= 1e-9 * max(1.0, float(before.abs().max()))

    def _try(self, search: _Search, shape: dict[str, Any], fixed: dict[str, Any]) -> Discovery | None:
        """One configuration of the search: its Discovery when it verifies, else None (what it showed kept)."""
        case, model, _ = self._sample(search.base.with_options(dict(fixed)))
        group = repr(sorted((k, v) for k, v in fixed.items() if k not in ("activation", "layer_norm_eps")))
        if not search.heads_unknown and group in search.unpaired:
            search.tried.append(f"{shown(fixed)}: {search.unpaired[group]}")
            return None
        mismatch = None if search.heads_unknown else search.paired.get(group)  # that map, run, says how far
        difference = disagreement(self._mismatched(mismatch, case, model), self.entry, case, model) \
            if mismatch is not None else None
        if difference is None or difference <= agreement(model):
            try:
                found = self._infer(case, model)
            except MapMismatchError as exc:  # paired one to one, but the outputs differ
                search.paired[group] = mismatch = exc
                if search.heads_unknown:  # other numbers of heads are tried once every configuration has been
                    search.deferred.append((exc.difference, fixed, case, model, exc))
                    difference = exc.difference
                else:  # ranked by one measure with the others of its group: the same case's run
                    difference = disagreement(self._mismatched(exc, case, model), self.entry, case, model)
            except (WeightMapError, NotSupportedError) as exc:
                if search.heads_unknown and isinstance(exc, UnpairedError) and case.width not in self._heads \
                        and case.width not in search.heads_paired:  # once per width: heads kept as modules pair
                    search.heads_paired.add(case.width)  # at their own count only
                    heads = self._pairing_heads(case, model)
                    if heads != case.heads:
                        self._heads[case.width] = heads
                        return self._try(search, shape, fixed)
                if isinstance(exc, CallError) and self.level != "attention":  # calling does not depend
                    raise TargetError(f"{self.target.spec} at {self.level}: {exc}") from exc  # on options
                search.unpaired[group] = " ".join(str(exc).splitlines()[:4])
                search.tried.append(f"{shown(fixed)}: {search.unpaired[group]}")
                return None
            else:
                if search.heads_unknown:  # the first count tried verified
                    self._heads[case.width] = case.heads
                    self._tried_heads[case.width] = [case.heads]
                return self._found(search.base, search.defaults, fixed, found, search.plan, "", case)
        search.differed.append(shape)
        search.tried.append(f"{shown(fixed)}: outputs differ by {difference:.3g}")
        search.keep_closest(difference, fixed, case, model, mismatch, dict(self._heads))
        return None

    def _try_other_heads(self, search: _Search) -> Discovery | None:
        """Configurations that paired at the drawn number of heads and differed, closest first, at the others."""
        for _, fixed, case, model, mismatch in sorted(search.deferred, key=lambda d: d[0]):
            heads, difference = self._other_heads(case, model, mismatch)  # another number of heads, closest first
            self._heads[case.width] = heads
            if difference == 0.0:
                case, model, _ = self._sample(search.base.with_options(dict(fixed)))
                return self._found(search.base, search.defaults, fixed, self._infer(case, model), search.plan, "",
                                   case)
            if search.closest is None or difference < search.closest[0]:
                case, model, _ = self._sample(search.base.with_options(dict(fixed)))
                search.keep_closest(difference, fixed, case, model, mismatch, dict(self._heads))
            self._heads.pop(case.width, None)  # none verified: the next one starts from the drawn count
        return None

    def _found(self, base: Any, defaults: dict[str, Any], fixed: dict[str, Any], found: Inference,
               plan: Plan, note: str, case: Any) -> Discovery:
        returns = found.convention.returns_weights is not False
        apart = fixed.get("self_attention") and len(found.convention.inputs) > 1
        if apart:  # it takes keys and values apart: its cross-attention is checked too, whatever it does
            fixed = {k: v for k, v in fixed.items() if k != "self_attention"}
        sentence = note or configuration_sentence(self.entry, fixed)
        counts = plan.taken.get("num_encoder_layers")
        one = counts is not None and counts == plan.taken.get("num_decoder_layers")
        wanted = fixed_sizes.not_given(self.level, plan.not_taken)
        sizes = {k: v for k, v in case.sizes().items() if k in wanted}
        notes = [plan.describe(), found.convention.describe(),
                 *(n for n in found.weight_map.notes if n.endswith("fixed at 0") or "fixed at 0 (" in n)]
        if apart and not note:
            notes.append("found on self-attention (query = key = value): with distinct keys and values it paired "
                         "with no configuration; it takes them apart, so cross-attention is checked too")
        notes += size_notes(plan, wanted, sizes, case, self._tried_heads.get(case.width, []), bool(note))
        self._discovery = Discovery(fixed={**defaults, **fixed}, masks=tuple(found.convention.masks),
                                    returns_weights=returns, unbatched=False, one_layer_count=one,
                                    sentence=sentence, notes=notes, inference=found,
                                    sizes=sizes if plan.kind in ("instance", "factory") else {},
                                    closest=bool(note))
        self._discovery.unbatched = self._takes_unbatched(base.with_options(dict(fixed)))
        return self._discovery

    def _takes_unbatched(self, base: Any) -> bool:
        """Whether the target runs on unbatched input at all (the same case, batch None)."""
        case, model, _ = self._sample(base.with_batch(None))
        try:
            self._infer(case, model)
        except Exception:  # it declines, cannot be paired or raises on unbatched input
            return False
        return True

    def prepare(self, case: Any) -> tuple[Any, InferredCandidate]:
        """The drawn case adapted to the target (options it fixes, sizes, masks it takes) and its candidate."""
        found = self.discover()
        record_note(f"{self.target.spec} at {self.level}: {found.sentence}")
        for note in found.notes:
            record_note(f"{self.target.spec} at {self.level}: {note}")
        case = case.with_options({**found.sizes, **found.fixed})
        case = case.only_masks(found.masks, self.level)
        causal = CAUSAL_FIELDS.get(self.level, {})
        if causal and all(found.fixed.get(k) == v for k, v in causal.items()):  # always causal: the built-in gets
            case = case.with_options(causal)  # the causal mask it applies
        if not found.returns_weights:  # nothing returned to compare with
            case = case.without_weights()
        if not found.unbatched and case.batch is None:  # it takes batches only: check this case batched
            case = case.with_batch(1)
        if case.one_dimensional() != case:  # the map pairs one-dimensional norm weights
            case = case.one_dimensional()
            record_note(f"{self.target.spec} at layer_norm: checked with one-dimensional normalized_shape only")
        if found.one_layer_count:  # one count for both stacks: draw them equal
            case = case.with_one_layer_count()
        case, model, _ = self._sample(case)
        return case, InferredCandidate(name=self.target.spec, resolve=self.inference, case=case, model=model)
