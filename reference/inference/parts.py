"""Sub-modules a constructor takes as instances: ``Layer(d_model, self_attn, feed_forward, dropout)``,
``Encoder(layer, N)``, ``Encoder(d_model, layers: nn.ModuleList)``.

Which parameters want a module is read from the constructor's source (reference/inference/uses.py: called,
deep-copied, or stored as an attribute the class calls or iterates over). What plays each part is decided by
measurement: every nn.Module class defined in the target's own module is built from the same configuration
(through its own signature, recursively), and measured: one that mixes positions is an attention, one that keeps
them apart a feed-forward, one that mixes and has a feed-forward width a layer. A layer's parts are taken in the
order the class uses them, as torch's layers run them: attention first (a decoder's self- and cross-attention),
then the feed-forward; at a stack level each part is a layer (a list of them: ``num_layers`` deep copies).
"""

from __future__ import annotations

import copy
import inspect
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

import reference.inference.uses as uses
from reference.inference.roles import option_of

STACK_LAYER = {"encoder": "encoder_layer", "decoder_only": "encoder_layer", "decoder": "decoder_layer"}
ATTENTIONS = {"encoder_layer": 1, "decoder_layer": 2}  # a layer's attentions, run before its feed-forward
Build = Callable[[Any, dict[str, Any], str], Any]


def wanted(cls: Any, level: str, given: set[str]) -> dict[str, str]:
    """The constructor's parameters that take a module, in the order the class uses them -> the part each plays
    ("attention", "feed_forward", "layer" or "layers"), at a layer or a stack level; {} elsewhere."""
    lists = uses.module_list_parameters(cls)  # a list of layers named like a count (``layers``) is still a list
    found = [p for p in uses.module_parameters(cls) if p not in given and (option_of(p) is None or p in lists)]
    if level in STACK_LAYER:
        return {p: "layers" if p in lists else "layer" for p in found}
    if level not in ATTENTIONS:
        return {}
    attentions = min(ATTENTIONS[level], max(len(found) - 1, 0)) if len(found) > 1 else 0
    return {p: "attention" if i < attentions else "feed_forward" for i, p in enumerate(found)}


def classes_of(cls: Any) -> list[type]:
    """The nn.Module classes defined in ``cls``'s own module (the user's code), in source order, less ``cls``."""
    module = sys.modules.get(getattr(cls, "__module__", "") or "")
    return [v for v in vars(module).values() if inspect.isclass(v) and issubclass(v, nn.Module)
            and v.__module__ == cls.__module__ and v is not cls] if module is not None else []


def output_of(model: nn.Module, x: Tensor) -> Tensor | None:
    """``model``'s output on ``x`` in the first usual call form that runs and keeps its shape (one input;
    query, key and value; either with a None mask; two inputs); None when none does."""
    for args in ((x,), (x, x, x), (x, x, x, None), (x, None), (x, x)):
        try:
            out = model(*args)
        except Exception:
            continue
        out = out[0] if isinstance(out, (tuple, list)) and out else out
        if isinstance(out, Tensor) and out.shape == x.shape:
            return out
    return None


def measured(model: nn.Module, width: int) -> str | None:
    """What a module is, measured on a (2, 5, width) input: "attention" (an output row moves when another
    position's input does, in either layout), "feed_forward" (none does), "layer" (mixes, and has a matrix pair
    of another width than ``width``: a feed-forward inside), "other" (no matrix: a norm); None when it cannot be
    called on one tensor."""
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            dtype = next((p.dtype for p in model.parameters()), torch.float32)
            x = torch.randn(2, 5, width, generator=torch.Generator().manual_seed(0), dtype=dtype)
            base = output_of(model, x)
            if base is None:
                return None
            one, two = x.clone(), x.clone()  # moved by a random vector: a constant one a norm would remove
            nudge = torch.randn(width, generator=torch.Generator().manual_seed(1), dtype=dtype)
            one[:, 0] += nudge
            two[0] += nudge
            out_one, out_two = output_of(model, one), output_of(model, two)
            mixes = (out_one is not None and bool((out_one - base)[:, 1:].abs().max() > 1e-6)) or (
                out_two is not None and bool((out_two - base)[1:].abs().max() > 1e-6))
    finally:
        model.train(training)
    shapes = {tuple(p.shape) for p in model.parameters() if p.dim() == 2}
    if not shapes:  # no matrix: a norm, a positional table, an activation, not a part of a layer's
        return "other"
    if not mixes:
        return "feed_forward"
    inner = any(a != width and (b, a) in shapes and b == width for a, b in shapes)
    return "layer" if inner else "attention"


_BUILDING: set[type] = set()  # classes being built for a part now: a part is never built inside itself


# the sizes a class is measured at: its role does not depend on them, and a drawn width of 1 would hide it (a
# normed output of one feature is constant)
MEASURE: dict[str, Any] = {"d_model": 16, "nhead": 2, "dim_feedforward": 32, "dropout": 0.0}
_ROLES: dict[tuple[type, str], str | None] = {}  # (class, level) -> the part it measured as
# (class, level, classes being built around it, options) that did not build: a target is built once per drawn
# case, and trying such a class again each time (its own parts build module copies) cost most of a check's time
_UNBUILT: set[tuple[type, str, frozenset[type], str]] = set()


def _build(candidate: type, options: dict[str, Any], level: str, build: Build) -> Any:
    if candidate in _BUILDING:
        return None
    _BUILDING.add(candidate)
    try:
        return build(candidate, options, level)
    except Exception:
        return None
    finally:
        _BUILDING.discard(candidate)


def _role(candidate: type, options: dict[str, Any], level: str, build: Build) -> str | None:
    """The part ``candidate`` plays, measured once (at MEASURE's sizes); "none" when it does not build."""
    key = (candidate, level)
    if key not in _ROLES:
        at = {**options, **MEASURE}
        failed = (candidate, level, frozenset(_BUILDING), repr(sorted(at.items())))  # the same options inside the
        if failed in _UNBUILT:  # same classes being built fail the same way
            return "none"
        built = _build(candidate, at, level, build)
        if built is None:
            _UNBUILT.add(failed)
            return "none"  # not kept as its role: it may build once its own parts can be
        _ROLES[key] = measured(built.model, MEASURE["d_model"])
    return _ROLES[key]


def _takes(candidate: type, arity: int | None) -> bool:
    """Whether ``candidate``'s forward takes ``arity`` positional inputs (how the target calls the part)."""
    if arity is None:
        return True
    try:
        inspect.signature(getattr(candidate, "forward")).bind(None, *range(arity))  # noqa: B009
    except (TypeError, ValueError):
        return False
    return True


def arguments(cls: Any, parts: dict[str, str], options: dict[str, Any], level: str,
              build: Build) -> tuple[dict[str, Any], dict[str, str], dict[str, str]]:
    """(value per part parameter, option -> the parameter that took it, parameter -> what was built) for the
    ``parts`` of ``cls`` (``wanted``): for each, the first class of the user's module that builds from
    ``options`` and measures as that part (else the first that builds at all). Parts left unbuilt are absent."""
    _BUILDING.add(cls)
    try:
        return _arguments(cls, parts, options, level, build)
    finally:
        _BUILDING.discard(cls)


def _arguments(cls: Any, parts: dict[str, str], options: dict[str, Any], level: str,
               build: Build) -> tuple[dict[str, Any], dict[str, str], dict[str, str]]:
    sub_level = STACK_LAYER.get(level, level)
    sub_options = {k: v for k, v in options.items() if k not in ("num_layers", "num_encoder_layers",
                                                                   "num_decoder_layers", "final_norm")}
    roles = {c: _role(c, sub_options, sub_level, build) for c in classes_of(cls)}
    values: dict[str, Any] = {}
    taken: dict[str, str] = {}
    shown: dict[str, str] = {}
    for name, part in parts.items():
        role = "layer" if part == "layers" else part
        arity = uses.call_arities(cls).get(name)
        fits = [c for c, r in roles.items() if r == role and _takes(c, arity)] + \
            [c for c, r in roles.items() if r is None and _takes(c, arity)]
        done = next((b for c in fits if (b := _build(c, sub_options, sub_level, build)) is not None), None)
        if done is None:
            continue
        found = type(done.model)
        module = copy.deepcopy(done.model)
        if part == "layers":
            count = options.get("num_layers", 1)
            module = nn.ModuleList([copy.deepcopy(done.model) for _ in range(count)])
            taken.setdefault("num_layers", name)
        values[name] = module
        taken |= {o: f"{name}.{n}" for o, n in done.plan.taken.items() if o not in taken}
        sizes = ", ".join(f"{k}={v!r}" for k, v in done.plan.kwargs.items() if isinstance(v, (int, float)))
        shown[name] = f"built {found.__qualname__}({sizes})" + (f" x {options.get('num_layers', 1)}"
                                                                 if part == "layers" else "") + f" as its {role}"
    return values, taken, shown
