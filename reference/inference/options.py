"""The options a user's code may fix rather than take (norm placement, activation, biases, eps, a final norm),
the values discovery tries for each (reference/inference/target.py), and the sentence saying what was found.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from torch import nn

import reference.inference.sizes as fixed_sizes
from reference.cases.strategies import tanh_gelu
from reference.inference.auto import Inference
from reference.inference.construct import Plan
from reference.levels.registry import Level
from reference.targets.contract import NotSupportedError

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


def behaviour(level: str) -> tuple[str, ...]:
    """The options of ``level`` that code may fix."""
    if level in LEVEL_BEHAVIOUR:
        return LEVEL_BEHAVIOUR[level]
    keys = ("norm_first", "activation", "bias", "layer_norm_eps")
    return (*keys, "final_norm") if level in ("encoder", "decoder", "decoder_only") else keys


def grid(level: str, not_taken: dict[str, Any], first: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    """Each combination of the options the constructor does not take: ``first``'s values (the case discovery
    starts from, a GPT's pre-norm and GELU for a decoder-only stack) first, then the built-in's defaults."""
    keys = [k for k in behaviour(level) if k in not_taken]
    start = first or {}

    def order(key: str) -> list[Any]:  # the starting case's value first
        return sorted(BEHAVIOUR[key], key=lambda v: bool(key not in start or v != start[key]))

    values = [order(k) for k in keys]
    for combo in itertools.product(*values):
        yield dict(zip(keys, combo, strict=True))


def sentence(entry: Level, fixed: dict[str, Any]) -> str:
    """"equals nn.TransformerEncoder(norm_first=True, activation='gelu') with a causal mask"."""
    call = ("self_attention", "key_is_value", "equal_lengths", *_CAUSAL_KEYS)  # how it is called
    shown = {k: (getattr(v, "__name__", v)) for k, v in fixed.items()
             if k not in call and v != BEHAVIOUR.get(k, (None,))[0]}
    args = ", ".join(f"{k}={v!r}" for k, v in shown.items())
    causal = " with a causal mask" if entry.name == "decoder_only" or any(fixed.get(k) for k in _CAUSAL_HINTS) else ""
    self_only = " as self-attention (one input)" if fixed.get("self_attention") else \
        " with keys and values from one input" if fixed.get("key_is_value") else ""
    if fixed.get("equal_lengths") and not fixed.get("self_attention"):
        self_only += " with keys as long as the queries"
    return f"equals {entry.builtin.split(' with ')[0]}({args}){self_only}{causal}"


def shown(fixed: dict[str, Any]) -> str:
    """Options as a user would write them (a function by its name)."""
    return ", ".join(f"{k}={getattr(v, '__name__', repr(v))}" for k, v in fixed.items()) or "as built"


# The attention call shapes discovery tries, each showing less than the one before: query, key and value three
# tensors, keys of another length, then of the query's; keys and values one tensor (a decoder's memory), of
# another length, then of the query's; one tensor for all three (self-attention).
INPUT_SHAPES: tuple[dict[str, Any], ...] = (
    {}, {"equal_lengths": True}, {"key_is_value": True}, {"key_is_value": True, "equal_lengths": True},
    {"self_attention": True},
)
CAUSAL_SHAPE = {"attn_mask": "causal_bool", "is_causal": True}
# per level, the case fields that make it causal: the self-attention's mask and its hint (a GPT block checked as
# an encoder layer, a decoder layer that builds its own causal mask: the built-in gets the mask the code applies)
CAUSAL_FIELDS: dict[str, dict[str, Any]] = {
    "attention": CAUSAL_SHAPE,
    "encoder_layer": {"src_mask": "causal_bool", "src_is_causal": True},
    "encoder": {"src_mask": "causal_bool", "src_is_causal": True},
    "decoder_layer": {"tgt_mask": "causal_bool", "tgt_is_causal": True},
    "decoder": {"tgt_mask": "causal_bool", "tgt_is_causal": True},
}
_CAUSAL_KEYS = {k for fields in CAUSAL_FIELDS.values() for k in fields}
_CAUSAL_HINTS = {k for fields in CAUSAL_FIELDS.values() for k, v in fields.items() if v is True}


def sharpness(shape: dict[str, Any]) -> int:
    """The rank of an attention call shape's inputs in INPUT_SHAPES: 0 shows the most."""
    inputs = {k: v for k, v in shape.items() if k not in _CAUSAL_KEYS}
    return INPUT_SHAPES.index(inputs)


def call_shapes(level: str, obj: Any) -> tuple[dict[str, Any], ...]:
    """The call shapes discovery tries at ``level``: an attention's (``attention_shapes``); at a layer or a stack
    whose forward takes no mask, as drawn and then always causal (CAUSAL_FIELDS); else as drawn."""
    if level == "attention":
        return attention_shapes(obj)
    return ({}, CAUSAL_FIELDS[level]) if level in CAUSAL_FIELDS and _takes_no_mask(obj) else ({},)


def _takes_no_mask(obj: Any) -> bool:
    forward = getattr(obj, "forward", None) if not isinstance(obj, nn.Module) else obj.forward
    try:
        names = list(inspect.signature(forward).parameters) if forward is not None else []
    except (TypeError, ValueError):
        names = []
    return not any("mask" in n or "causal" in n for n in names)


def attention_shapes(obj: Any) -> tuple[dict[str, Any], ...]:
    """The attention call shapes discovery tries, the most distinct inputs first (INPUT_SHAPES); for a module
    whose forward takes no mask, each also always causal (a GPT's attention: the built-in gets the causal mask).

    Discovery takes a shape that shows less only when the target cannot be called with one that shows more
    (``hidden_by``): a shape that runs but differs has a bug that the shapes after it could hide (key and value
    swapped, say, which self-attention cannot show)."""
    causal = _takes_no_mask(obj)
    return tuple(shape for base in INPUT_SHAPES for shape in ((base, {**base, **CAUSAL_SHAPE}) if causal else (base,)))


def hidden_by(shape: dict[str, Any], differed: list[dict[str, Any]]) -> bool:
    """Whether ``shape`` could hide what a shape that ran and differed showed: the same masking, inputs that show
    less (a bug that mixes up query, key and value passes where they are one tensor)."""
    return any(sharpness(shape) > sharpness(d) and bool(shape.get("is_causal")) == bool(d.get("is_causal"))
               for d in differed)


@dataclass(kw_only=True)
class Discovery:
    """What measurement found: the options the code fixes, the masks it takes, and the sentence saying so."""

    fixed: dict[str, Any]
    masks: tuple[str, ...]
    returns_weights: bool
    unbatched: bool
    one_layer_count: bool  # one constructor argument for both stacks' layer counts
    sentence: str
    notes: list[str] = field(default_factory=list)
    inference: Inference | None = field(default=None, repr=False)  # on the case it was measured on
    sizes: dict[str, Any] = field(default_factory=dict)  # sizes fixed by the object itself (instance, factory)
    closest: bool = False  # it matched no configuration: ``fixed`` is the closest one (a bug hid which)
    measured: bool = False  # ``fixed`` corrected by diagnosis from causes measured at their places


def accepted(sample: Callable[[Any], tuple[Any, nn.Module, Any]], base: Any) -> tuple[Any, Any]:
    """(base, plan): the base itself, or (when its constructor declines it) the first of the options a target most often
    fixes that it accepts: pre-norm, GELU, batch-first, and their combinations."""
    options = {"norm_first": True, "activation": "gelu", "batch_first": True}
    tries: list[dict[str, Any]] = [{}] + [{k: options[k] for k in keys} for n in (1, 2, 3)
                                          for keys in itertools.combinations(options, n)]
    declined: NotSupportedError | None = None
    for changes in tries:
        case = base.with_options(dict(changes))
        if changes and case == base:  # options this level has not: nothing else to try
            break
        try:
            _, _, plan = sample(case)
        except NotSupportedError as exc:
            declined = declined or exc
            continue
        return case, plan
    assert declined is not None
    raise declined


def measurable(base: Any, taken: dict[str, str], heads_unknown: bool) -> Any:
    """The case discovery measures on: wide enough (a norm over two features is ±1 whatever its input), with
    two heads or more where the constructor takes them (mask probes tell (N, L, S) from (N*H, L, S) by the
    heads), and long enough where the heads are measured (with one key, every number of heads computes the same)."""
    if "d_model" in taken and 0 < base.width < 8:
        base = base.with_options({"d_model": 16, "dim_feedforward": 32})
    if "nhead" in taken and base.heads < 2:
        width = base.width
        base = base.with_options({"nhead": next((h for h in range(2, width + 1) if width % h == 0), 1)})
    return base.long_enough() if heads_unknown else base


def size_notes(plan: Plan, wanted: tuple[str, ...], sizes: dict[str, Any], case: Any, tried_heads: list[int],
               closest: bool) -> list[str]:
    """What discovery says about the sizes the target is not given: fixed by the object, or read from the built
    model; and the number of heads found by measurement."""
    notes = []
    if sizes and plan.kind in ("instance", "factory"):
        notes.append(f"sizes fixed by the object: {fixed_sizes.describe(sizes)}; every drawn case is checked "
                     "at these sizes")
    elif wanted:
        notes.append(f"sizes the constructor does not take, read from the built model: {', '.join(wanted)}")
    if "nhead" in wanted:
        width, tried = case.width, ", ".join(map(str, dict.fromkeys(tried_heads)))
        notes.append(f"nhead={case.heads} found by measurement: of the divisors of {width} (tried {tried}), "
                     + ("the closest: none verifies" if closest else "the one whose outputs verify against the "
                        "built-in"))
    return notes
