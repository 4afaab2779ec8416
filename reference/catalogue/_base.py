"""What every catalogue module shares: the Deviation record, which cases show a deviation, and planting tools.

A deviation is planted into a handmade model (a whole Transformer, a stack, a layer or an attention) by
swapping a module for a faulty subclass of its own class (``become``: the module keeps its parameters, so
weights loaded before or after are the same), by pointing a module at another module's weights
(``delegate``), or by setting an argument the module was built with (eps, norm_first, activation). Every
plant is idempotent, so deviations compose: ``apply_all`` plants several, in catalogue order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

import torch
from torch import nn

import handmade
from reference.cases.case import Case

Plant = Callable[[nn.Module, Mapping[str, object]], None]
M = TypeVar("M", bound=nn.Module)
N = TypeVar("N", bound=nn.Module)
Layer = handmade.TransformerEncoderLayer | handmade.TransformerDecoderLayer
Stack = handmade.TransformerEncoder | handmade.TransformerDecoder
STACK_CLASSES: dict[str, type[Stack]] = {"encoder": handmade.TransformerEncoder, "decoder": handmade.TransformerDecoder}

MASK_FIELDS = ("src_mask", "tgt_mask", "memory_mask")
KPM_FIELDS = ("src_key_padding_mask", "tgt_key_padding_mask", "memory_key_padding_mask")
BOOL_KINDS = ("causal_bool", "random_bool", "per_head_bool", "bool")
FLOAT_KINDS = ("causal_float", "random_inf", "additive", "per_head_additive", "float_inf", "float_finite")

ATTN = (r"\.self_attn$", r"\.multihead_attn$")
NORMS = (r"\.norm\d?$",)
LAYERS = (r"layers\.\d+$",)


@dataclass(frozen=True, kw_only=True)
class Deviation:
    """One known way a hand-written Transformer differs from nn.Transformer, and how to plant it into handmade.

    ``level`` is where the zoo hunts it ("transformer", or "attention" for a bug that needs key and value apart)
    and ``distinct`` the attention inputs that must be distinct tensors for it to show (``inputs_apart``).
    ``claims`` say what it changes, as (slot, value) pairs: two deviations that claim one slot with different
    values cannot hold together (both change the scale, say). ``probe`` is how diagnosis recognises it:
    "variant" (the target matches handmade with it planted) or "twice in eval" (random outputs, so no variant
    can match: the target is run twice). ``dtypes``: where the zoo hunts it. ``option``: the nn.Transformer
    keyword argument it amounts to, if any (diagnosis then names the closest configuration).
    """

    key: str
    cause: str  # the cause family, as the report groups them
    does: str  # what the code does wrong, in a learner's words (one line)
    fix: str
    plant: Plant = field(compare=False, repr=False)
    sites: tuple[str, ...] = ()  # regexes over nn.Transformer submodule names where it shows
    shows_on: Callable[[Case], bool] = field(default=lambda case: True, compare=False, repr=False)
    claims: tuple[tuple[str, object], ...] = ()
    probe: str = "variant"
    dtypes: tuple[torch.dtype, ...] = (torch.float64,)
    option: str = ""
    level: str = "transformer"  # where the zoo hunts it: the level whose inputs show it (an attention's own)
    distinct: tuple[str, ...] = ()  # attention inputs it shows on only when they are distinct tensors

    def apply(self, model: nn.Module, config: Mapping[str, object]) -> None:
        """Plant this deviation into ``model`` (handmade, any level), built for ``config`` (its keyword arguments)."""
        self.plant(model, config)


# ---- which cases can show a deviation -------------------------------------------------------------------


def _kinds(case: Case) -> list[str]:
    return [getattr(case, f) for f in (*MASK_FIELDS, *KPM_FIELDS) if getattr(case, f) != "none"]


def inputs_apart(case: Any, names: tuple[str, ...]) -> bool:
    """Whether an attention run on ``case`` (any level's) gets the attention inputs ``names`` (of query, key and
    value) as distinct tensors: an attention case as drawn; in a model, a decoder's cross-attention has its query
    apart from its keys, but every attention takes one tensor as key and value."""
    return bool(case.inputs_apart(names))


def any_mask(case: Case) -> bool:
    return bool(_kinds(case))


def bool_mask(case: Case) -> bool:
    return any(k in BOOL_KINDS for k in _kinds(case))


def float_mask(case: Case) -> bool:
    return any(k in FLOAT_KINDS for k in _kinds(case))


def per_head(case: Case) -> bool:
    return any(getattr(case, f).startswith("per_head") for f in MASK_FIELDS)


def has(*field_names: str) -> Callable[[Case], bool]:
    return lambda case: any(getattr(case, f) not in ("none", None, False) for f in field_names)


def dropout(case: Case) -> bool:
    return case.config.dropout > 0


# ---- planting tools -------------------------------------------------------------------------------------


_MIXED: dict[tuple[type, type], type] = {}  # one mixed class per (mixin, class): planting twice reuses it


def _mixed(mixin: type, cls: type) -> type:
    if (mixin, cls) not in _MIXED:
        _MIXED[mixin, cls] = type(mixin.__name__, (mixin, cls),
                                  {"__module__": mixin.__module__, "__qualname__": mixin.__qualname__})
    return _MIXED[mixin, cls]


def become(module: nn.Module, mixin: type, **attributes: object) -> None:
    """Make ``module`` an instance of ``mixin`` (a faulty subclass of a handmade class) on top of its own class.

    Its parameters and buffers stay; ``attributes`` are set on it (plain values, or modules it reads but does
    not own: those are kept out of its state_dict). Idempotent.
    """
    if not isinstance(module, mixin):
        module.__class__ = _mixed(mixin, type(module))
    for name, value in attributes.items():
        module.__dict__[name] = value


class Delegates(nn.Module):
    """A module whose forward is another module's: built and loaded like the others, then never used."""

    def forward(self, *args: object, **kwargs: object) -> object:
        return self.__dict__["source"](*args, **kwargs)


def delegate(module: nn.Module, source: nn.Module) -> None:
    """``module`` computes with ``source``'s weights (``[layer] * N``, one attention object for two)."""
    if module is not source:
        become(module, Delegates, source=source)


@overload
def instances(model: nn.Module, cls: type[M]) -> list[M]: ...
@overload
def instances(model: nn.Module, cls: tuple[type[M], type[N]]) -> list[M | N]: ...
@overload
def instances(model: nn.Module, cls: tuple[type[M], ...]) -> list[M]: ...
def instances(model: nn.Module, cls: type | tuple[type, ...]) -> list:
    """The submodules of ``model`` (itself included) that are instances of ``cls`` (a class or a tuple of them)."""
    return [m for m in model.modules() if isinstance(m, cls)]


def attentions(model: nn.Module, which: str = "all") -> Iterator[handmade.MultiheadAttention]:
    """The attention modules of ``which``: all, self (both stacks), src (encoder), tgt (decoder self), memory."""
    if isinstance(model, handmade.MultiheadAttention):
        if which == "all":
            yield model
        return
    for layer in model.modules():
        if isinstance(layer, handmade.TransformerEncoderLayer) and which in ("all", "self", "src"):
            yield layer.self_attn
        if isinstance(layer, handmade.TransformerDecoderLayer):
            if which in ("all", "self", "tgt"):
                yield layer.self_attn
            if which in ("all", "memory"):
                yield layer.multihead_attn


def layers(model: nn.Module) -> list[Layer]:
    return instances(model, (handmade.TransformerEncoderLayer, handmade.TransformerDecoderLayer))


def everywhere(cls: type, which: str = "all", part: str = "") -> Plant:
    """A plant that turns every attention of ``which`` (or its ``part``, e.g. its ``attention``) into ``cls``."""

    def plant(model: nn.Module, config: Mapping[str, object]) -> None:
        for attn in list(attentions(model, which)):
            become(getattr(attn, part) if part else attn, cls)

    return plant
