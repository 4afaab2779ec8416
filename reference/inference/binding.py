"""Binding a level's inputs to a target's ``forward`` parameters, read from its signature.

The level names its inputs (query/key/value, src, tgt/memory, x, input). A target's data parameters are
those that are not masks or flags: ``pairings`` pairs the level's inputs with them, by name where the
signature says (the name itself, or a usual spelling of it), the rest by position; parameters with a
default are paired by name only (``forward(x, layer_past=None)`` takes one input), and, as a second
candidate, by position too; then each candidate less the optional parameters at its end (an optional position
tensor is not the values); last, each candidate that leaves required data parameters unbound with them given an
input it binds (``forward(value, key, query, mask)`` called with one input, as its own encoder calls it). Which
candidate is right, when the shapes allow several, the values decide (reference/inference/auto.py).
``arguments`` builds the call: positional-only parameters by position, the rest by keyword (so keyword-only
parameters and inputs after a mask parameter are given by name), and a required parameter the call gives
nothing (a mask without a default, when the case has no mask) gets ``None``.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

# the usual spellings of a level's inputs, tried after the name itself (a hint; shapes and values decide)
INPUT_ALIASES: dict[str, tuple[str, ...]] = {
    "query": ("query", "q", "queries", "x", "input", "inputs", "hidden_states"),
    "key": ("key", "k", "keys", "context", "kv"),
    "value": ("value", "v", "values"),
    "src": ("src", "x", "input", "inputs", "source", "enc_input", "hidden_states", "idx", "h", "tokens"),
    "tgt": ("tgt", "trg", "target", "y", "dec_input", "x"),
    "memory": ("memory", "mem", "enc_out", "encoder_out", "enc_output", "encoder_output", "context", "encoded"),
    "input": ("input", "x", "inputs", "hidden_states"),
    "x": ("x", "input", "inputs", "hidden_states"),
}
FLAGS = ("need_weights", "average_attn_weights", "is_causal", "src_is_causal", "tgt_is_causal", "memory_is_causal")
VARARG = "*"  # the name under which inputs go to a forward(*inputs)
Pairs = tuple[tuple[str, str], ...]  # (level input, target parameter), in the target's order


def is_maskish(name: str) -> bool:
    return "mask" in name or "causal" in name or name in FLAGS


@dataclass(frozen=True, kw_only=True)
class Param:
    """One parameter of a target's ``forward``: its name, how it is passed, whether it must be given."""

    name: str
    positional_only: bool
    keyword_only: bool
    required: bool
    data: bool  # may hold an input tensor: not a mask or flag, and no non-tensor default or annotation


def _is_data(p: inspect.Parameter) -> bool:
    if is_maskish(p.name):
        return False
    if p.default is not p.empty and p.default is not None:
        return False  # a default that is not None: a flag or an option (output_attentions=False, use_cache=True)
    annotation = p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, "__name__", "")
    return annotation not in ("bool", "int", "float", "str")


def forward_params(model: nn.Module) -> tuple[tuple[Param, ...], bool]:
    """(the named parameters of ``model.forward``, whether it takes ``*args``)."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return (), True
    varargs = any(p.kind == p.VAR_POSITIONAL for p in params)
    named = tuple(Param(name=p.name, positional_only=p.kind == p.POSITIONAL_ONLY,
                        keyword_only=p.kind == p.KEYWORD_ONLY, required=p.default is p.empty,
                        data=_is_data(p))
                  for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))
    return named, varargs


def by_name(keys: Sequence[str], names: Sequence[str], aliases: Mapping[str, tuple[str, ...]]) -> dict[str, str]:
    """``keys`` -> the ``names`` that spell them: every key's own name first, then its usual spellings
    (``aliases``), each name taken once."""
    pairs = {key: key for key in keys if key in names}
    for key in keys:
        if key in pairs:
            continue
        for alias in aliases.get(key, (key,)):
            if alias in names and alias not in pairs.values():
                pairs[key] = alias
                break
    return pairs


def _by_name(level_inputs: list[str], names: list[str]) -> dict[str, str]:
    return by_name(level_inputs, names, INPUT_ALIASES)


def pairings(level_inputs: list[str], params: tuple[Param, ...], varargs: bool) -> list[Pairs]:
    """Candidate pairings of the level's inputs with the target's data parameters, the likeliest first."""
    data = [p.name for p in params if p.data]
    if not data and varargs:  # forward(*inputs): the inputs in the level's order
        return [tuple((name, f"{VARARG}{i}") for i, name in enumerate(level_inputs))]
    required = [p.name for p in params if p.data and p.required]
    out: list[Pairs] = []
    for pool in (required, data):  # required parameters by position; then any data parameter
        pairs = _by_name(level_inputs, data)
        rest = [n for n in pool if n not in pairs.values()]
        for name in level_inputs:
            if name not in pairs and rest:
                pairs[name] = rest.pop(0)
        ordered = tuple(sorted(pairs.items(), key=lambda item: data.index(item[1])))
        if ordered and ordered not in out:
            out.append(ordered)
    positional = tuple(zip(level_inputs, data, strict=False))  # the signature's order alone
    if positional and positional not in out:
        out.append(positional)
    if not _by_name(level_inputs, data) and 1 < len(level_inputs) <= 3:  # no name says: any order may be meant
        chosen = [n for _, n in positional]
        for order in itertools.permutations(level_inputs[:len(chosen)]):
            permuted = tuple(zip(order, chosen, strict=True))
            if permuted not in out:
                out.append(permuted)
    out += [short for short in _without_optional(out, params) if short not in out]
    return out + [full for full in _repeated(out, params) if full not in out]


def _repeated(candidates: list[Pairs], params: tuple[Param, ...]) -> list[Pairs]:
    """Each candidate that leaves required data parameters unbound, with each of them given the input of the
    nearest bound parameter before it (the first bound one if none is before): a block called as
    ``block(x, x, x, mask)`` for self-attention, ``block(y, enc, enc, ...)`` for keys and values from one
    memory. Tried after the others; the measurement decides."""
    data = [p.name for p in params if p.data]
    required = [p.name for p in params if p.data and p.required]
    out: list[Pairs] = []
    for pairs in candidates:
        bound = {t: f for f, t in pairs}
        if not bound or all(name in bound for name in required):
            continue
        filled = dict(bound)
        for name in required:
            if name not in filled:
                before = [bound[d] for d in data[:data.index(name)] if d in bound]
                filled[name] = before[-1] if before else next(iter(bound.values()))
        out.append(tuple((filled[t], t) for t in data if t in filled))
    return out


def _without_optional(candidates: list[Pairs], params: tuple[Param, ...]) -> list[Pairs]:
    """Each candidate less the optional parameters at its end (two inputs at least): an optional tensor left to
    its default (``forward(x, y=None, *, input_pos=None)``: keys and values from one input)."""
    optional = {p.name for p in params if not p.required}
    return list(dict.fromkeys(pairs[:k] for pairs in candidates for k in range(len(pairs) - 1, 1, -1)
                              if all(t in optional for _, t in pairs[k:])))


def fewer(pairs: Pairs, params: tuple[Param, ...]) -> list[Pairs]:
    """``pairs`` binding fewer inputs, the longest first, where every parameter left out is required: a level
    input too many (a key for an attention that takes one input and a mask no name says is one)."""
    required = {p.name for p in params if p.required}
    return [pairs[:k] for k in range(len(pairs) - 1, 0, -1) if all(t in required for _, t in pairs[k:])]


def arguments(params: tuple[Param, ...], values: Mapping[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    """(args, kwargs) for ``forward``: ``values`` by parameter name (``*0``, ``*1``, ... for ``*args``)."""
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for p in params:
        given = p.name in values
        if p.positional_only:
            if given or p.required:
                args.append(values.get(p.name))
            continue
        if given:
            kwargs[p.name] = values[p.name]
        elif p.required:  # a mask without a default (the case has none), a parameter no input pairs with
            kwargs[p.name] = None
    extra = sorted((k for k in values if k.startswith(VARARG)), key=lambda k: int(k[len(VARARG):]))
    args += [values[k] for k in extra]
    return args, kwargs


def describe(pairs: Pairs, masks: Mapping[str, str], params: tuple[Param, ...]) -> str:
    """``forward(query, key=<key>, mask=<attn_mask>)``: how the call is made, in words."""
    by_param = {t: f for f, t in pairs}
    parts = []
    for p in params:
        if p.name in by_param:
            shown = p.name if p.name == by_param[p.name] else f"{p.name}=<{by_param[p.name]}>"
            parts.append(shown)
        elif p.name in masks.values():
            parts.append(f"{p.name}=<{' + '.join(k for k, v in masks.items() if v == p.name)}>")
        elif p.required:
            parts.append(f"{p.name}=None")
    parts += [f"<{f}>" for f, t in pairs if t.startswith(VARARG)]
    return f"forward({', '.join(parts)})"
