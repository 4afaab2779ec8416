"""A user's module at any level, with no adapter: constructed, mapped, called and configured by inference.

``InferredTarget(target, level)`` turns a class, a zero-argument factory or an ``nn.Module`` instance into
the engine's candidates, one per drawn case (reference/infer does the inference):

1. **configuration by measurement** (``discover``, once): the options the constructor does not take
   (``norm_first``, ``activation``, ``bias``, ``layer_norm_eps``, a final norm) are fixed by the code; the
   built-in configuration it implements is found by trying them until the inferred weight map verifies,
   and said in words ("equals nn.TransformerEncoder(norm_first=True, activation='gelu') with a causal mask");
2. **drawn cases adapted to the target**, not filtered: those options set to the values found, sizes it
   does not take read from the built model, masks it takes no argument for left out, and all of it noted;
3. per case, the **weight map** inferred and verified against the built-in, the **calling convention**
   inferred, and the gradients gathered back under the built-in's names, so they are judged too.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from reference import infer
from reference.assertions import record_note
from reference.build import Config
from reference.cases import Case
from reference.registry import LEVELS, Level
from reference.strategies import AttentionCase, LayerNormCase, StackCase, tanh_gelu
from reference.targets import NotSupportedError, Target, TargetError
from reference.weights import WeightMapError

# What a target's code may fix, and the values tried, the built-in's default first.
BEHAVIOUR: dict[str, tuple[Any, ...]] = {
    "norm_first": (False, True), "activation": ("relu", "gelu", tanh_gelu), "bias": (True, False),
    "layer_norm_eps": (1e-5, 1e-6, 1e-12), "final_norm": (True, False),
}
LEVEL_BEHAVIOUR = {
    "attention": ("bias",), "layer_norm": ("layer_norm_eps", "bias"), "feed_forward": ("activation", "bias"),
}
# Options a constructor that does not take them is taken to have at the built-in's default (no search).
DEFAULTS = {"add_bias_kv": False, "add_zero_attn": False, "kdim": None, "vdim": None, "elementwise_affine": True}
CASE_NAMES = {"layer_norm_eps": "eps"}  # canonical option -> a LayerNormCase field
_SRC = {"src_mask": "src_mask", "src_key_padding_mask": "src_key_padding_mask"}
_TGT = {k: k for k in ("tgt_mask", "memory_mask", "tgt_key_padding_mask", "memory_key_padding_mask")}
CASE_MASKS = {  # per level: its mask keyword -> the Case field that draws it
    "encoder_layer": _SRC, "encoder": {"mask": "src_mask", "src_key_padding_mask": "src_key_padding_mask"},
    "decoder_layer": _TGT, "decoder": _TGT, "transformer": {**_SRC, **_TGT},
}
HINTS = {  # a dropped mask's hint goes too
    "src_mask": ("src_is_causal", None), "tgt_mask": ("tgt_is_causal", None),
    "memory_mask": ("memory_is_causal", False),
}


def options_of(case: Any) -> dict[str, Any]:
    """A case's configuration as the built-in's keyword arguments (what the user's constructor is given)."""
    if isinstance(case, StackCase):
        return {**case.case.config.kwargs(), "final_norm": case.final_norm}
    if isinstance(case, Case):
        return case.config.kwargs()
    if isinstance(case, AttentionCase):
        return {"embed_dim": case.embed_dim, "num_heads": case.num_heads, "dropout": case.dropout, "bias": case.bias,
                "add_bias_kv": case.add_bias_kv, "add_zero_attn": case.add_zero_attn, "kdim": case.kdim,
                "vdim": case.vdim, "batch_first": case.batch_first}
    if isinstance(case, LayerNormCase):
        return {"normalized_shape": case.normalized_shape, "eps": case.eps,
                "elementwise_affine": case.elementwise_affine, "bias": case.bias}
    raise TypeError(f"no options for a {type(case).__name__}")


def with_options(case: Any, changes: dict[str, Any]) -> Any:
    """``case`` with configuration options replaced (those a target's code fixes, sizes it does not take)."""
    if not changes:
        return case
    if isinstance(case, StackCase):
        final = changes.pop("final_norm", case.final_norm)
        return StackCase(with_options(case.case, changes), final)
    if isinstance(case, Case):
        known = {f.name for f in dataclasses.fields(Config)}
        return case.replace(config=dataclasses.replace(case.config, **{k: v for k, v in changes.items() if k in known}))
    fields = {f.name for f in dataclasses.fields(case)}
    named = {CASE_NAMES.get(k, k): v for k, v in changes.items()}
    return dataclasses.replace(case, **{k: v for k, v in named.items() if k in fields})


def _behaviour(level: str) -> tuple[str, ...]:
    if level in LEVEL_BEHAVIOUR:
        return LEVEL_BEHAVIOUR[level]
    keys = ("norm_first", "activation", "bias", "layer_norm_eps")
    return (*keys, "final_norm") if level in ("encoder", "decoder", "decoder_only") else keys


def _grid(level: str, not_taken: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Each combination of the options the constructor does not take, the built-in's defaults first."""
    keys = [k for k in _behaviour(level) if k in not_taken]
    values = [BEHAVIOUR[k] for k in keys]
    for combo in itertools.product(*values):
        yield dict(zip(keys, combo, strict=True))


@dataclass
class Discovery:
    """What measurement found: the options the code fixes, the masks it takes, and the sentence saying so."""

    fixed: dict[str, Any]
    masks: tuple[str, ...]
    returns_weights: bool
    unbatched: bool
    one_layer_count: bool  # one constructor argument for both stacks' layer counts
    sentence: str
    notes: list[str] = field(default_factory=list)
    inference: infer.Inference | None = field(default=None, repr=False)  # on the case it was measured on


@dataclass
class InferredTarget:
    """A user's class, factory or instance checked at ``level`` with everything inferred."""

    target: Target
    level: str
    _discovery: Discovery | None = None

    @property
    def entry(self) -> Level:
        return LEVELS[self.level]

    def _sample(self, case: Any) -> tuple[Any, nn.Module, Any]:
        """(case with the sizes the constructor does not take read from the model, the model, its plan)."""
        try:
            built = infer.build(self.target.obj, options_of(case), self.level)
        except infer.ConstructionError as exc:
            raise TargetError(f"{self.target.spec}: {exc}") from exc
        except NotImplementedError as exc:
            raise NotSupportedError(f"{self.target.spec} does not support {options_of(case)}: {exc}") from exc
        sizes = infer.sizes_from_model(built.model)
        changes = {k: sizes[k] for k in ("dim_feedforward",) if k in built.not_taken and k in sizes}
        return with_options(case, changes), built.model, built.plan

    def _infer(self, case: Any, model: nn.Module) -> infer.Inference:
        entry = self.entry
        builtin = entry.reference(case)
        inputs, kwargs = entry.inputs(case, torch.float64)
        sample = copy.deepcopy(model).to("cpu", torch.float64)
        return infer.infer_target(builtin, sample, self.level, entry.call, inputs, kwargs,
                                  batch_first=_batch_first(case), override=self.target.weight_map,
                                  keep_mask=self.target.keep_masks)

    def show_map(self) -> str:
        """What was inferred, weight map included, on the case the configuration was measured on."""
        found = self.discover()
        lines = [f"{self.target.spec} at {self.level}: {found.sentence}", *found.notes]
        if found.inference is not None:
            lines.append(found.inference.weight_map.describe())
        return "\n".join(lines)

    def discover(self) -> Discovery:
        """Find, once, the built-in configuration the target implements (options it does not take)."""
        if self._discovery is not None:
            return self._discovery
        base = self.entry.pinned[0][0] if self.entry.pinned else self.entry.from_config(Config())
        base = _unmasked(base)
        _, _, plan = self._sample(base)
        defaults = {k: v for k, v in DEFAULTS.items() if k in plan.not_taken}
        base = with_options(base, dict(defaults))
        tried: list[str] = []
        closest: tuple[float, dict[str, Any], Any, nn.Module, Any] | None = None
        for fixed in _grid(self.level, plan.not_taken):
            case, model, _ = self._sample(with_options(base, dict(fixed)))
            try:
                found = self._infer(case, model)
            except infer.MapMismatchError as exc:  # paired one to one, but the outputs differ
                tried.append(f"{fixed or 'as built'}: outputs differ by {exc.difference:.3g}")
                if closest is None or exc.difference < closest[0]:
                    closest = (exc.difference, fixed, case, model, exc.weight_map)
                continue
            except (WeightMapError, NotSupportedError) as exc:
                tried.append(f"{fixed or 'as built'}: {str(exc).splitlines()[0]}")
                continue
            return self._found(base, defaults, fixed, found, plan, "")
        if closest is not None:  # it pairs with the built-in but equals none: check it where it is closest
            difference, fixed, case, model, weight_map = closest
            calling = infer.infer_calling(copy.deepcopy(model).to("cpu", torch.float64), self.level,
                                          *self.entry.inputs(case, torch.float64), batch_first=_batch_first(case),
                                          keep_mask=self.target.keep_masks)
            found = infer.Inference(weight_map, calling)
            note = (f"matches no {self.entry.builtin} configuration tried; closest (outputs differ by "
                    f"{difference:.3g}): {fixed or 'as built'}; run parity diagnose to see where it differs")
            return self._found(base, defaults, fixed, found, plan, note)
        raise TargetError(
            f"{self.target.spec} cannot be paired with {self.entry.builtin} in any configuration tried:\n  "
            + "\n  ".join(tried) + "\nwrite an override or an adapter (docs/plugins.md), or run parity diagnose")

    def _found(self, base: Any, defaults: dict[str, Any], fixed: dict[str, Any], found: infer.Inference,
               plan: infer.Plan, note: str) -> Discovery:
        returns = found.convention.returns_weights is not False
        unbatched = self._takes_unbatched(with_options(base, dict(fixed)))
        sentence = note or _sentence(self.entry, fixed, found)
        counts = plan.taken.get("num_encoder_layers")
        one = counts is not None and counts == plan.taken.get("num_decoder_layers")
        self._discovery = Discovery({**defaults, **fixed}, tuple(found.convention.masks), returns, unbatched, one,
                                    sentence, [plan.describe(), found.convention.describe()], found)
        return self._discovery

    def _takes_unbatched(self, base: Any) -> bool:
        """Whether the target runs on unbatched input at all (the same case, batch None)."""
        case, model, _ = self._sample(_with_batch(base, None))
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
        case = with_options(case, dict(found.fixed))
        case = _only_masks(case, found.masks, self.level)
        if not found.returns_weights and isinstance(case, AttentionCase):  # nothing returned to compare with
            case = case.replace(need_weights=False)
        if not found.unbatched and _batch(case) is None:  # it takes batches only: check this case batched
            case = _with_batch(case, 1)
        if isinstance(case, LayerNormCase) and len(case.normalized_shape) > 1:  # the map pairs 1-D norm weights
            case = case.replace(normalized_shape=(math.prod(case.normalized_shape),))
            record_note(f"{self.target.spec} at layer_norm: checked with one-dimensional normalized_shape only")
        if found.one_layer_count and isinstance(case, Case):  # one count for both stacks: draw them equal
            case = with_options(case, {"num_decoder_layers": case.config.num_encoder_layers})
        case, model, _ = self._sample(case)
        return case, InferredCandidate(self, case, model)


@dataclass
class InferredCandidate:
    """The engine's candidate for one case: the target's model, its inferred map and calling convention."""

    owner: InferredTarget
    case: Any
    model: nn.Module
    inference: infer.Inference | None = None

    @property
    def name(self) -> str:
        return self.owner.target.spec

    def build(self, device: torch.device | str, dtype: torch.dtype) -> nn.Module:
        return copy.deepcopy(self.model).to(device, dtype)

    def load(self, model: nn.Module, builtin: nn.Module) -> None:
        try:
            self.inference = self.owner._infer(self.case, self.model)
        except infer.MapMismatchError as exc:
            if exc.weight_map.verified:  # equal without masks, not with them: say so (keep-masks? the masking?)
                raise TargetError(f"{self.name}: {exc}") from exc
            # paired by order and shape, but the outputs differ: the code differs, judged on the verdicts
            self.inference = infer.Inference(exc.weight_map, infer.infer_calling(
                copy.deepcopy(self.model).to("cpu", torch.float64), self.owner.level,
                *self.owner.entry.inputs(self.case, torch.float64), batch_first=_batch_first(self.case),
                keep_mask=self.owner.target.keep_masks))
        except WeightMapError as exc:
            raise TargetError(f"{self.name}: {exc}") from exc
        self.inference.weight_map.load(model, builtin)

    def call(self, model: nn.Module, call: Any, inputs: dict[str, Tensor], kwargs: dict[str, object]) -> Any:
        assert self.inference is not None, "load() runs before call()"
        return self.inference.convention(model, inputs, kwargs, batch_first=_batch_first(self.case))

    def param_grads(self, model: nn.Module, builtin: nn.Module) -> dict[str, Tensor] | None:
        assert self.inference is not None, "load() runs before param_grads()"
        return self.inference.weight_map.grads(model)


def _batch_first(case: Any) -> bool:
    if isinstance(case, StackCase):
        return case.case.config.batch_first
    if isinstance(case, Case):
        return case.config.batch_first
    return bool(getattr(case, "batch_first", False))


def _batch(case: Any) -> int | None:
    return case.case.batch if isinstance(case, StackCase) else getattr(case, "batch", 1)


def _with_batch(case: Any, batch: int | None) -> Any:
    if isinstance(case, StackCase):
        return StackCase(case.case.replace(batch=batch), case.final_norm)
    return case.replace(batch=batch) if hasattr(case, "batch") else case


def _unmasked(case: Any) -> Any:
    """``case`` without masks and batched with N != L: the sample discovery measures on."""
    if isinstance(case, StackCase):
        return StackCase(_unmasked(case.case), case.final_norm)
    if isinstance(case, Case):
        fields = {f for masks in CASE_MASKS.values() for f in masks.values()}
        return case.replace(**{f: "none" for f in fields}, src_is_causal=None, tgt_is_causal=None,
                            memory_is_causal=False, batch=3 if case.batch is None else case.batch)
    if isinstance(case, AttentionCase):
        return case.replace(attn_mask="none", key_padding_mask="none", is_causal=False, batch=case.batch or 3)
    return case


def _only_masks(case: Any, taken: tuple[str, ...], level: str) -> Any:
    """``case`` without the masks the target takes no argument for (noted once by the report, not failed)."""
    if level == "decoder_only":
        return case
    if isinstance(case, StackCase):
        return StackCase(_only_masks(case.case, taken, level), case.final_norm)
    if isinstance(case, Case):
        drop = {field for keyword, field in CASE_MASKS.get(level, {}).items() if keyword not in taken}
        hints = dict(HINTS[f] for f in drop if f in HINTS)
        return case.replace(**{f: "none" for f in drop}, **hints)
    if isinstance(case, AttentionCase):
        changes: dict[str, Any] = {}
        if "attn_mask" not in taken:
            changes |= {"attn_mask": "none", "is_causal": False}
        if "key_padding_mask" not in taken and "attn_mask" not in taken:
            changes["key_padding_mask"] = "none"
        return case.replace(**changes)
    return case


def _sentence(entry: Level, fixed: dict[str, Any], found: infer.Inference) -> str:
    shown = {k: (getattr(v, "__name__", v)) for k, v in fixed.items() if v != BEHAVIOUR.get(k, (None,))[0]}
    args = ", ".join(f"{k}={v!r}" for k, v in shown.items())
    causal = " with a causal mask" if entry.name == "decoder_only" else ""
    return f"equals {entry.builtin.split(' with ')[0]}({args}){causal}"
