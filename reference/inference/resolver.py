"""One case of an inferred target resolved: its model built, its sizes and number of heads read or measured, its
weight map and calling convention inferred (once per configuration shape, reference/inference/cache.py) and kept.
Discovery of the configuration and the engine's candidates build on it (reference/inference/target.py)."""
from __future__ import annotations

import dataclasses
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

import reference.inference.sizes as fixed_sizes
from reference.builtin.weights import WeightMapError
from reference.inference.auto import Inference, infer_target
from reference.inference.cache import disagreement, rescaled, shape_key, structure_key
from reference.inference.calling import Convention, infer_calling
from reference.inference.construct import ConstructionError, build
from reference.inference.copying import copy_model
from reference.inference.layouts import alternatives
from reference.inference.lazy import materialize
from reference.inference.options import (
    Discovery,
)
from reference.inference.weightmap import MapMismatchError, UnpairedError, agreement
from reference.levels.registry import LEVELS, Level
from reference.targets.contract import NotSupportedError, Target, TargetError


def call_shape(case: Any) -> tuple[Any, ...]:
    """How a case calls the target beyond its sizes: an attention's inputs (one tensor, keys as values, equal
    lengths) and each causal hint. A map and a call found for one call shape are not carried to another."""
    inner = getattr(case, "case", case)  # a stack's case holds the whole-model case
    return tuple(getattr(inner, k, None) for k in ("self_attention", "key_is_value", "equal_lengths", "is_causal",
                                                   "src_is_causal", "tgt_is_causal"))


@dataclass(kw_only=True)
class Resolver:
    """One drawn case of a user's class, factory or instance at ``level``: its model built through its own
    signature, the sizes and heads it really has, and its weight map and calling convention, inferred once per
    configuration shape. ``InferredTarget`` (reference/inference/target.py) adds discovery and the candidates."""

    target: Target
    level: str
    _discovery: Discovery | None = None
    _heads: dict[int, int] = field(default_factory=dict)  # width -> the number of heads measured
    _sizes: dict[Hashable, dict[str, Any]] = field(default_factory=dict)  # sizes read, per tensor shapes
    _tried_heads: dict[int, list[int]] = field(default_factory=dict)
    _maps: dict[Hashable, Inference] = field(default_factory=dict)  # per configuration shape
    _templates: dict[Hashable, list[Inference]] = field(default_factory=dict)  # verified, per structure (sizes
    # aside): one per layer count or other integer option, each tried where it rescales
    _mask_forms: dict[Any, Any] = field(default_factory=dict)  # measured once per pairing of the inputs
    _conventions: dict[Hashable, Convention] = field(default_factory=dict)  # while discovering, per call
    _layout_option: bool = False  # its constructor takes batch_first: its layout follows the configuration
    layout: bool | None = None  # when values cannot decide (diagnosis measures it): True = the case's own layout
    _failed: TargetError | None = None  # discovery's failure, kept: it does not depend on the drawn case
    _causal: bool | None = None  # discovery: whether a layer that takes no mask is causal by itself, measured

    @property
    def entry(self) -> Level:
        return LEVELS[self.level]

    def _sample(self, case: Any) -> tuple[Any, nn.Module, Any]:
        """(case with the sizes the target is not given read from the model, the model, its plan)."""
        case = case.as_called()  # the sizes its call shape gives (one input: keys are the queries, ...)
        try:
            built = build(self.target.obj, case.options(), self.level)
        except ConstructionError as exc:
            raise TargetError(f"{self.target.spec}: {exc}") from exc
        except NotImplementedError as exc:
            raise NotSupportedError(f"{self.target.spec} does not support {case.options()}: {exc}") from exc
        materialize(built.model, case.width)  # lazy modules get their shapes from one forward pass
        self._layout_option = self._layout_option or "batch_first" in built.plan.taken
        wanted = fixed_sizes.not_given(self.level, built.not_taken)
        shapes = (wanted, case.width if "d_model" not in wanted else None,
                  tuple((n, tuple(p.shape)) for n, p in built.model.named_parameters()))
        if shapes not in self._sizes:  # measured once per set of tensor shapes (the width by running it)
            self._sizes[shapes] = fixed_sizes.read_sizes(built.model, self.level, wanted, case.width)
        read = self._sizes[shapes]
        case = case.with_options(read)
        if "nhead" in wanted:
            width = case.width
            if width not in self._heads and self._discovery is not None:  # a width not met yet (a class taking
                # d_model but not nhead), measured unmasked on sequences long enough to tell head counts apart (on
                # one key every count gives the same output, and the first case met at a width may have one)
                self._heads[width] = self._measure_heads(case.unmasked().long_enough(), built.model)
            case = case.with_options({"nhead": self._heads.get(width) or fixed_sizes.head_counts(
                width, case.heads)[0]})
        heads = getattr(case, "heads", 0)
        if heads and case.width % heads:  # the built-in cannot be built at the sizes read back
            raise NotSupportedError(f"{self.target.spec} built as {built.plan.describe()} has the sizes "
                                    f"{fixed_sizes.describe(read)}: a width of {case.width} that {heads} heads do "
                                    f"not divide, so the built-in cannot be built there")
        return case, built.model, built.plan

    def _measure_heads(self, case: Any, model: nn.Module) -> int:
        """The number of heads of ``case``'s width whose outputs verify (the drawn one first), else the closest."""
        try:
            self._infer(case, model)
        except MapMismatchError as exc:
            return self._other_heads(case, model, exc)[0]
        except UnpairedError:  # heads kept as separate modules pair only at their own count: the first that pairs
            return self._pairing_heads(case, model)
        except (WeightMapError, NotSupportedError):  # the number of heads is not what is wrong
            pass
        return case.heads

    def _pairing_heads(self, case: Any, model: nn.Module) -> int:
        """The first other divisor of the width at which the target's tensors pair (and verify, when one does);
        the drawn number when none pairs (pairing then says why). The lengths of the module lists it holds are
        tried first, and one that pairs is taken: heads kept as separate modules pair only at their own count."""
        paired = None
        lists = {len(m) for m in model.modules() if isinstance(m, nn.ModuleList | nn.Sequential | nn.ModuleDict)}
        divisors = fixed_sizes.head_counts(case.width, case.heads)[1:]
        for heads in sorted(divisors, key=lambda h: h not in lists):  # a list of as many heads first
            try:
                self._infer(case.with_options({"nhead": heads}), model)
            except MapMismatchError:
                if heads in lists:  # its tensors pair at the count of a list it holds: the heads it keeps
                    return heads  # (what differs then is for the check to show, not another count)
                paired = paired or heads
                continue
            except (WeightMapError, NotSupportedError):
                continue
            return heads
        return paired or case.heads

    def _other_heads(self, case: Any, model: nn.Module, mismatch: MapMismatchError) -> tuple[int, float]:
        """(heads, difference): the first other divisor of the width at which the map inferred on ``case``
        (which paired, but whose outputs differ) verifies, difference 0; else the closest and its difference."""
        width, drawn = case.width, case.heads
        inference = self._mismatched(mismatch, case, model)
        best, self._tried_heads[width] = (mismatch.difference, drawn), [drawn]
        for heads in [h for h in fixed_sizes.head_counts(width, drawn) if h != drawn]:
            self._tried_heads[width].append(heads)
            other = case.with_options({"nhead": heads})
            maps = [inference.weight_map, *alternatives(inference.weight_map, self.entry.seeded_builtin(other))]
            for weight_map in maps:  # a packed q/k/v laid out per head is laid out for this number of heads
                difference = disagreement(Inference(weight_map, inference.convention), self.entry, other, model)
                if difference <= agreement(model):
                    return heads, 0.0
                best = min(best, (difference, heads))
        return best[1], best[0]

    def _mismatched(self, exc: MapMismatchError, case: Any, model: nn.Module) -> Inference:
        """The map that paired but whose outputs differ, with the calling convention it was measured in."""
        return Inference(exc.weight_map, getattr(exc, "convention", None) or self._calling(case, model))

    def _calling(self, case: Any, model: nn.Module) -> Convention:
        return infer_calling(copy_model(model).to("cpu", torch.float64), self.level,
                                   *self.entry.inputs(case, torch.float64), batch_first=case.batch_first,
                                   keep_mask=self.target.keep_masks, heads=case.heads,
                                   mask_cache=self._mask_forms)

    def _infer(self, case: Any, model: nn.Module) -> Inference:
        """The map and calling convention on ``case``: the calling convention discovery found (once), else
        inferred; the masks are the engine's to judge, not checked here (their forms are measured once)."""
        entry = self.entry
        builtin = entry.seeded_builtin(case)
        inputs, kwargs = entry.inputs(case, torch.float64)
        sample = copy_model(model).to("cpu", torch.float64)
        found = self._discovery.inference if self._discovery is not None else None  # calling is found once
        shape = call_shape(case)
        known = found.convention if found is not None else self._conventions.get(shape)
        if self._layout_option:  # its layout is an option it is built with: measured again for each configuration
            known = None
        try:
            result = infer_target(builtin, sample, self.level, entry.call, inputs, kwargs,
                                        batch_first=case.batch_first, override=self.target.weight_map,
                                        keep_mask=self.target.keep_masks, check_masks=False,
                                        mask_cache=self._mask_forms, convention=known)
        except MapMismatchError as exc:
            if known is None and getattr(exc, "searched", None) is not None:
                self._conventions[shape] = exc.searched  # type: ignore[attr-defined]
            raise
        if known is None:
            self._conventions[shape] = result.convention
        return result

    def inference(self, case: Any, model: nn.Module) -> Inference:
        """The map and calling convention for ``case``: the one kept for its configuration shape if it verifies
        on this case, else inferred afresh (and kept). A map that pairs but never verifies (code that equals no
        configuration) is kept as is: re-inferring pairs the same tensors, by order, shapes and names."""
        found = self._inference(case, model)
        conv = found.convention
        layout = None if self.layout is None else case.batch_first == self.layout
        if layout is not None and not found.weight_map.verified and layout in conv.alternatives:
            found = Inference(found.weight_map, dataclasses.replace(conv, batch_first=layout))
        return found

    def _inference(self, case: Any, model: nn.Module) -> Inference:
        """Inferred once per configuration shape (``shape_key``: not per example, and not per mask kind)."""
        key = shape_key(case, *self.entry.inputs(case, torch.float64))
        kept = self._maps.get(key)
        if kept is not None:
            return kept
        found = self._from_template((structure_key(key), call_shape(case)), case, model)
        if found is not None:
            self._maps[key] = found
            return found
        try:
            found = self._infer(case, model)
        except MapMismatchError as exc:  # paired by order and shape, but the outputs differ: the code
            found = self._mismatched(exc, case, model)  # differs, judged on the verdicts
        except WeightMapError as exc:
            if self._discovery is None:
                raise TargetError(f"{self.target.spec}: {exc}") from exc
            # discovery paired it: a configuration whose tensors do not pair one to one is not one it implements
            # (a ``bias`` argument that drops only some biases), which is said, not failed
            why = "; ".join(line.strip() for line in str(exc).splitlines()[1:3])
            flags = ", ".join(f"{k}={v!r}" for k, v in case.options().items() if isinstance(v, bool))
            raise NotSupportedError(f"built with {flags}, the target's tensors do not pair with the built-in's one "
                                    f"to one: {why}") from exc
        self._maps[key] = found
        if found.weight_map.verified:
            self._templates.setdefault((structure_key(key), call_shape(case)), []).append(found)
        return found

    def _from_template(self, structure: Hashable, case: Any, model: nn.Module) -> Inference | None:
        """A map verified on a case of the same structure, rescaled to this case's sizes, when it reproduces the
        built-in here (one run of each: no recording, no pairing); else None. Each template is tried in turn.

        Every rescaled map is run, even at counts where another width verified: a map rescaled only in width
        was measured wrong (a seq2seq at d_model=2, its final norm's gradient of the opposite sign), so the
        row ranges scaling exactly is not proof enough."""
        templates = self._templates.get(structure)
        if not templates:
            return None
        case = case.unmasked()  # the map does not depend on masks
        builtin = self.entry.seeded_builtin(case)
        for template in templates:
            weight_map = rescaled(template.weight_map, builtin, model)
            if weight_map is None:
                continue
            found = Inference(weight_map, template.convention)
            difference = disagreement(found, self.entry, case, model, builtin)
            if difference <= agreement(model):
                weight_map.difference, weight_map.verified = difference, True
                return found
        return None

