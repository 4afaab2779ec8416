"""A user's module at any level, with no adapter: constructed, mapped, called and configured by inference.

``InferredTarget(target, level)`` turns a class, a zero-argument factory or an ``nn.Module`` instance into
the engine's candidates, one per drawn case (reference/infer does the inference):

1. **configuration by measurement** (``discover``, once): the options the constructor does not take
   (``norm_first``, ``activation``, ``bias``, ``layer_norm_eps``, a final norm) are fixed by the code; the
   built-in configuration it implements is found by trying them until the inferred weight map verifies,
   and said in words ("equals nn.TransformerEncoder(norm_first=True, activation='gelu') with a causal mask");
2. **drawn cases adapted to the target**, not filtered: those options set to the values found, the sizes
   it is not given (an instance's, a factory's, a fixed feed-forward width) read from the built model and
   the number of heads found by measurement (reference/fixed_sizes.py), masks it takes no argument for
   left out, and all of it noted;
3. the **weight map** and the **calling convention**, inferred and verified against the built-in once per
   configuration shape and re-verified on each case (reference/inference_cache.py), and the gradients
   gathered back under the built-in's names, so they are judged too.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from reference import fixed_sizes, infer
from reference.assertions import record_note
from reference.behaviour import DEFAULTS, MASKS_JUDGED, Discovery, accepted, attention_shapes, grid, shown
from reference.behaviour import sentence as configuration_sentence
from reference.build import Config
from reference.cases import Case
from reference.infer.copying import copy_model
from reference.infer.layouts import alternatives
from reference.inference_cache import FLOAT64_AGREEMENT, disagreement, holds, shape_key
from reference.inferred_candidate import InferredCandidate
from reference.level_cases import (
    batch,
    batch_first,
    heads_of,
    long_enough,
    only_masks,
    options_of,
    sizes_of,
    unmasked,
    width_of,
    with_batch,
    with_options,
)
from reference.registry import LEVELS, Level
from reference.strategies import AttentionCase, LayerNormCase
from reference.targets import NotSupportedError, Target, TargetError
from reference.weights import WeightMapError


@dataclass
class InferredTarget:
    """A user's class, factory or instance checked at ``level`` with everything inferred."""

    target: Target
    level: str
    _discovery: Discovery | None = None
    _heads: dict[int, int] = field(default_factory=dict)  # width -> the number of heads measured
    _tried_heads: dict[int, list[int]] = field(default_factory=dict)
    _maps: dict[Hashable, infer.Inference] = field(default_factory=dict)  # per configuration shape
    layout: bool | None = None  # when values cannot decide (diagnosis measures it): True = the case's own layout
    _failed: TargetError | None = None  # discovery's failure, kept: it does not depend on the drawn case

    @property
    def entry(self) -> Level:
        return LEVELS[self.level]

    def _sample(self, case: Any) -> tuple[Any, nn.Module, Any]:
        """(case with the sizes the target is not given read from the model, the model, its plan)."""
        if isinstance(case, AttentionCase) and case.self_attention:  # one input: keys are the queries
            case = case.replace(key_len=case.query_len, kdim=None, vdim=None)
        try:
            built = infer.build(self.target.obj, options_of(case), self.level)
        except infer.ConstructionError as exc:
            raise TargetError(f"{self.target.spec}: {exc}") from exc
        except NotImplementedError as exc:
            raise NotSupportedError(f"{self.target.spec} does not support {options_of(case)}: {exc}") from exc
        wanted = fixed_sizes.not_given(self.level, built.not_taken)
        case = with_options(case, fixed_sizes.read_sizes(built.model, self.level, wanted, width_of(case)))
        if "nhead" in wanted:
            width = width_of(case)
            if width not in self._heads and self._discovery is not None:  # a width not met yet (a class taking
                self._heads[width] = self._measure_heads(case, built.model)  # d_model but not nhead)
            case = with_options(case, {"nhead": self._heads.get(width) or fixed_sizes.head_counts(
                width, heads_of(case))[0]})
        return case, built.model, built.plan

    def _measure_heads(self, case: Any, model: nn.Module) -> int:
        """The number of heads of ``case``'s width whose outputs verify (the drawn one first), else the closest."""
        try:
            self._infer(case, model)
        except infer.MapMismatchError as exc:
            return self._other_heads(case, model, exc)[0]
        except (WeightMapError, NotSupportedError):  # the number of heads is not what is wrong
            pass
        return heads_of(case)

    def _other_heads(self, case: Any, model: nn.Module, mismatch: infer.MapMismatchError) -> tuple[int, float]:
        """(heads, difference): the first other divisor of the width at which the map inferred on ``case``
        (which paired, but whose outputs differ) verifies, difference 0; else the closest and its difference."""
        width, drawn = width_of(case), heads_of(case)
        inference = self._mismatched(mismatch, case, model)
        best, self._tried_heads[width] = (mismatch.difference, drawn), [drawn]
        for heads in [h for h in fixed_sizes.head_counts(width, drawn) if h != drawn]:
            self._tried_heads[width].append(heads)
            other = with_options(case, {"nhead": heads})
            maps = [inference.weight_map, *alternatives(inference.weight_map, self.entry.reference(other))]
            for weight_map in maps:  # a packed q/k/v laid out per head is laid out for this number of heads
                difference = disagreement(infer.Inference(weight_map, inference.convention), self.entry, other, model)
                if difference <= FLOAT64_AGREEMENT:
                    return heads, 0.0
                best = min(best, (difference, heads))
        return best[1], best[0]

    def _mismatched(self, exc: infer.MapMismatchError, case: Any, model: nn.Module) -> infer.Inference:
        """The map that paired but whose outputs differ, with the calling convention it was measured in."""
        return infer.Inference(exc.weight_map, getattr(exc, "convention", None) or self._calling(case, model))

    def _calling(self, case: Any, model: nn.Module) -> infer.Convention:
        return infer.infer_calling(copy_model(model).to("cpu", torch.float64), self.level,
                                   *self.entry.inputs(case, torch.float64), batch_first=batch_first(case),
                                   keep_mask=self.target.keep_masks)

    def _infer(self, case: Any, model: nn.Module) -> infer.Inference:
        entry = self.entry
        builtin = entry.reference(case)
        inputs, kwargs = entry.inputs(case, torch.float64)
        sample = copy_model(model).to("cpu", torch.float64)
        return infer.infer_target(builtin, sample, self.level, entry.call, inputs, kwargs,
                                  batch_first=batch_first(case), override=self.target.weight_map,
                                  keep_mask=self.target.keep_masks)

    def inference(self, case: Any, model: nn.Module) -> infer.Inference:
        """The map and calling convention for ``case``: the one kept for its configuration shape if it verifies
        on this case, else inferred afresh (and kept). A map that pairs but never verifies (code that equals no
        configuration) is kept as is: re-inferring pairs the same tensors, by order, shapes and names."""
        found = self._inference(case, model)
        conv = found.convention
        layout = None if self.layout is None else batch_first(case) == self.layout
        if layout is not None and not found.weight_map.verified and layout in conv.alternatives:
            found = infer.Inference(found.weight_map, dataclasses.replace(conv, batch_first=layout))
        return found

    def _inference(self, case: Any, model: nn.Module) -> infer.Inference:
        key = shape_key(case, *self.entry.inputs(case, torch.float64))
        kept = self._maps.get(key)
        if kept is not None and (not kept.weight_map.verified or holds(kept, self.entry, case, model)):
            return kept
        try:
            found = self._infer(case, model)
        except infer.MapMismatchError as exc:
            if exc.weight_map.verified and not MASKS_JUDGED.get():  # equal without masks, not with them: say so
                raise TargetError(f"{self.target.spec}: {exc}") from exc  # (keep-masks? the masking?)
            # paired by order and shape, but the outputs differ: the code differs, judged on the verdicts
            found = self._mismatched(exc, case, model)
        except WeightMapError as exc:
            raise TargetError(f"{self.target.spec}: {exc}") from exc
        except NotSupportedError as exc:  # it runs unmasked, raises with these masks: in diagnosis a crash, with
            if MASKS_JUDGED.get() and "NotImplementedError" not in str(exc) and unmasked(case) != case:
                return self.inference(unmasked(case), model)  # the unmasked map and convention (the call raises)
            raise
        self._maps[key] = found
        return found

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
        if self._failed is not None:  # it failed once: every case would fail the same way, so say it at once
            raise TargetError(str(self._failed))
        try:
            return self._discover()
        except (TargetError, NotSupportedError) as exc:
            if isinstance(exc, TargetError):
                self._failed = exc
            raise

    def _discover(self) -> Discovery:
        base = self.entry.pinned[0][0] if self.entry.pinned else self.entry.from_config(Config())
        base, plan = accepted(self._sample, unmasked(base))
        if "nhead" in fixed_sizes.not_given(self.level, plan.not_taken):
            base = long_enough(base)  # with one key, every number of heads computes the same
        defaults = {k: v for k, v in DEFAULTS.items() if k in plan.not_taken}
        base = with_options(base, dict(defaults))
        tried: list[str] = []
        closest: tuple[float, dict[str, Any], Any, nn.Module, Any, dict[int, int]] | None = None
        shapes = attention_shapes(self.target.obj) if self.level == "attention" else ({},)
        measured = "nhead" in fixed_sizes.not_given(self.level, plan.not_taken)
        deferred: list[tuple[float, dict[str, Any], Any, nn.Module, Any]] = []  # mismatched at the drawn heads
        for fixed in ({**shape, **combo} for shape in shapes for combo in grid(self.level, plan.not_taken)):
            case, model, _ = self._sample(with_options(base, dict(fixed)))
            try:
                found = self._infer(case, model)
            except infer.MapMismatchError as exc:  # paired one to one, but the outputs differ
                tried.append(f"{shown(fixed)}: outputs differ by {exc.difference:.3g}")
                deferred.append((exc.difference, fixed, case, model, exc))
                if closest is None or exc.difference < closest[0]:
                    closest = (exc.difference, fixed, case, model, exc, dict(self._heads))
                continue
            except (WeightMapError, NotSupportedError) as exc:
                tried.append(f"{shown(fixed)}: {' '.join(str(exc).splitlines()[:3])}")
                continue
            if measured:  # the first count tried verified
                self._heads[width_of(case)] = heads_of(case)
                self._tried_heads[width_of(case)] = [heads_of(case)]
            return self._found(base, defaults, fixed, found, plan, "", case)
        for _, fixed, case, model, mismatch in sorted(deferred, key=lambda d: d[0]) if measured else ():
            heads, difference = self._other_heads(case, model, mismatch)  # another number of heads, closest first
            self._heads[width_of(case)] = heads
            if difference == 0.0:
                case, model, _ = self._sample(with_options(base, dict(fixed)))
                return self._found(base, defaults, fixed, self._infer(case, model), plan, "", case)
            if closest is None or difference < closest[0]:
                case, model, _ = self._sample(with_options(base, dict(fixed)))
                closest = (difference, fixed, case, model, mismatch, dict(self._heads))
            self._heads.pop(width_of(case), None)  # none verified: the next one starts from the drawn count
        if closest is not None:  # it pairs with the built-in but equals none: check it where it is closest
            difference, fixed, case, model, mismatch, self._heads = closest
            found = self._mismatched(mismatch, case, model)
            note = (f"matches no {self.entry.builtin} configuration tried; closest (outputs differ by "
                    f"{difference:.3g}): {shown(fixed)}; run parity diagnose to see where it differs")
            return self._found(base, defaults, fixed, found, plan, note, case)
        raise TargetError(
            f"{self.target.spec} cannot be paired with {self.entry.builtin} in any configuration tried:\n  "
            + "\n  ".join(tried) + "\nwrite an override or an adapter (docs/plugins.md), or run parity diagnose")

    def _found(self, base: Any, defaults: dict[str, Any], fixed: dict[str, Any], found: infer.Inference,
               plan: infer.Plan, note: str, case: Any) -> Discovery:
        returns = found.convention.returns_weights is not False
        sentence = note or configuration_sentence(self.entry, fixed)
        counts = plan.taken.get("num_encoder_layers")
        one = counts is not None and counts == plan.taken.get("num_decoder_layers")
        wanted = fixed_sizes.not_given(self.level, plan.not_taken)
        sizes = {k: v for k, v in sizes_of(case).items() if k in wanted}
        notes = [plan.describe(), found.convention.describe(),
                 *(n for n in found.weight_map.notes if n.endswith("fixed at 0") or "fixed at 0 (" in n)]
        if sizes and plan.kind in ("instance", "factory"):
            notes.append(f"sizes fixed by the object: {fixed_sizes.describe(sizes)}; every drawn case is checked "
                         "at these sizes")
        elif wanted:
            notes.append(f"sizes the constructor does not take, read from the built model: {', '.join(wanted)}")
        if "nhead" in wanted:
            width = width_of(case)
            tried = ", ".join(map(str, dict.fromkeys(self._tried_heads.get(width, []))))
            notes.append(f"nhead={heads_of(case)} found by measurement: of the divisors of {width} (tried {tried}), "
                         + ("the closest: none verifies" if note else "the one whose outputs verify against the "
                            "built-in"))
        self._discovery = Discovery({**defaults, **fixed}, tuple(found.convention.masks), returns, False, one,
                                    sentence, notes, found, sizes if plan.kind in ("instance", "factory") else {})
        self._discovery.unbatched = self._takes_unbatched(with_options(base, dict(fixed)))
        return self._discovery

    def _takes_unbatched(self, base: Any) -> bool:
        """Whether the target runs on unbatched input at all (the same case, batch None)."""
        case, model, _ = self._sample(with_batch(base, None))
        try:
            self._infer(case, model)
        except (WeightMapError, NotSupportedError):
            return False
        return True

    def prepare(self, case: Any) -> tuple[Any, InferredCandidate]:
        """The drawn case adapted to the target (options it fixes, sizes, masks it takes) and its candidate."""
        found = self.discover()
        record_note(f"{self.target.spec} at {self.level}: {found.sentence}")
        for note in found.notes:
            record_note(f"{self.target.spec} at {self.level}: {note}")
        case = with_options(case, {**found.sizes, **found.fixed})
        case = only_masks(case, found.masks, self.level)
        if found.fixed.get("is_causal"):  # an always-causal attention: the built-in gets the causal mask it applies
            case = with_options(case, {k: found.fixed[k] for k in ("attn_mask", "is_causal")})
        if not found.returns_weights and isinstance(case, AttentionCase):  # nothing returned to compare with
            case = case.replace(need_weights=False)
        if not found.unbatched and batch(case) is None:  # it takes batches only: check this case batched
            case = with_batch(case, 1)
        if isinstance(case, LayerNormCase) and len(case.normalized_shape) > 1:  # the map pairs 1-D norm weights
            case = case.replace(normalized_shape=(math.prod(case.normalized_shape),))
            record_note(f"{self.target.spec} at layer_norm: checked with one-dimensional normalized_shape only")
        if found.one_layer_count and isinstance(case, Case):  # one count for both stacks: draw them equal
            case = with_options(case, {"num_decoder_layers": case.config.num_encoder_layers})
        case, model, _ = self._sample(case)
        return case, InferredCandidate(self, case, model)
