"""Infer how to call a user's module at a level: argument names and order, layout, masks, outputs.

The level's standard call is torch's (``inputs`` such as query/key/value or src/tgt, and keyword masks
and flags with torch's names and conventions). ``infer_calling`` reads the target's ``forward`` signature
to pair the inputs and the mask keywords it takes (``attn_mask``, ``mask``, ``src_mask``,
``key_padding_mask``, ... or none), tries the layouts (batch-first, sequence-first) on sample inputs and
keeps those whose output has the built-in's shape, and reads whether it returns a tensor, a tuple or a
dict. Masks are passed as torch's "True/-inf = blocked" unless the user declares keep-masks
(``keep_mask=True``): the convention is never guessed. ``Convention`` turns the standard call into the
target's and says in words what it assumed; what a target cannot take raises NotSupportedError.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn

from reference.inference.masks import is_causal_mask, keep, merged, same
from reference.targets.contract import NotSupportedError

INPUT_ALIASES: dict[str, tuple[str, ...]] = {
    "query": ("query", "q", "queries", "x", "input", "inputs", "hidden_states"),
    "key": ("key", "k", "keys", "context", "kv"),
    "value": ("value", "v", "values"),
    "src": ("src", "x", "input", "inputs", "source", "enc_input", "hidden_states", "idx", "h"),
    "tgt": ("tgt", "trg", "target", "y", "dec_input", "x"),
    "memory": ("memory", "mem", "enc_out", "encoder_out", "enc_output", "encoder_output", "context", "encoded"),
    "input": ("input", "x", "inputs", "hidden_states"),
    "x": ("x", "input", "inputs", "hidden_states"),
}
KWARG_ALIASES: dict[str, tuple[str, ...]] = {
    "attn_mask": ("attn_mask", "mask", "attention_mask", "src_mask", "causal_mask"),
    "key_padding_mask": ("key_padding_mask", "padding_mask", "pad_mask", "src_key_padding_mask"),
    "mask": ("mask", "src_mask", "attn_mask", "attention_mask", "causal_mask"),
    "src_mask": ("src_mask", "mask", "attn_mask", "enc_mask", "encoder_mask"),
    "tgt_mask": ("tgt_mask", "trg_mask", "self_mask", "causal_mask", "look_ahead_mask", "dec_mask", "mask"),
    "memory_mask": ("memory_mask", "cross_mask", "memory_attn_mask", "enc_dec_mask", "src_mask"),
    "src_key_padding_mask": ("src_key_padding_mask", "src_padding_mask", "padding_mask", "key_padding_mask"),
    "tgt_key_padding_mask": ("tgt_key_padding_mask", "tgt_padding_mask", "trg_padding_mask"),
    "memory_key_padding_mask": ("memory_key_padding_mask", "memory_padding_mask", "src_padding_mask"),
}
LEVEL_MASKS: dict[str, tuple[str, ...]] = {
    "attention": ("attn_mask", "key_padding_mask"),
    "encoder_layer": ("src_mask", "src_key_padding_mask"),
    "encoder": ("mask", "src_key_padding_mask"),
    "decoder_only": ("mask", "src_key_padding_mask"),
    "decoder_layer": ("tgt_mask", "memory_mask", "tgt_key_padding_mask", "memory_key_padding_mask"),
    "decoder": ("tgt_mask", "memory_mask", "tgt_key_padding_mask", "memory_key_padding_mask"),
    "transformer": ("src_mask", "tgt_mask", "memory_mask", "src_key_padding_mask", "tgt_key_padding_mask",
                    "memory_key_padding_mask"),
}
FLAGS = ("need_weights", "average_attn_weights", "is_causal", "src_is_causal", "tgt_is_causal", "memory_is_causal")
# the level's output: which input its shape follows
OUTPUT_LIKE = {"attention": "query", "decoder_layer": "tgt", "decoder": "tgt", "transformer": "tgt"}


def _is_maskish(name: str) -> bool:
    return "mask" in name or "causal" in name or name in FLAGS


def _forward_params(model: nn.Module) -> list[inspect.Parameter]:
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return []
    return [p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


@dataclass(frozen=True)
class Convention:
    """How the level's standard call becomes the target's; ``assumptions`` say so in words."""

    level: str
    inputs: tuple[tuple[str, str], ...]  # (level input, target parameter), in the target's order
    masks: dict[str, str] = field(default_factory=dict)  # level keyword -> target parameter
    flags: tuple[str, ...] = ()  # level flags passed on
    batch_first: bool | None = None  # the target's layout; None: unknown yet (tried at run time) or unbatched
    keep_mask: bool = False
    merge_padding: bool = False  # attention: key_padding_mask merged into the one mask the target takes
    self_attention_only: bool = False
    key_is_value: bool = False  # two inputs: (query, context), keys and values from the one context
    always_causal: bool = False  # the target takes no mask: the level's causal mask is its behaviour
    unbatched: bool | None = None  # whether the target takes unbatched input; None: not tried
    returns_weights: bool | None = None
    alternatives: tuple[bool | None, ...] = ()  # layouts that the shapes did not rule out
    assumptions: tuple[str, ...] = ()

    def describe(self) -> str:
        return "; ".join(self.assumptions)

    def __call__(self, model: nn.Module, inputs: Mapping[str, Tensor], kwargs: Mapping[str, Any], *,  # noqa: C901, PLR0912 (to split: issue 18's resolution rework)
                 batch_first: bool) -> dict[str, Tensor]:
        """Call ``model`` with the level's ``inputs``/``kwargs`` (laid out batch-first or not): its outputs as
        {"output": ..., "weights": ...} in the level's layout. NotSupportedError for what it cannot take."""
        given = {k: v for k, v in inputs.items() if v is not None}
        batched = next(iter(given.values())).dim() == 3
        if not batched and self.unbatched is False:
            raise NotSupportedError("the target does not take unbatched input")
        flip = batched and self.batch_first is not None and self.batch_first != batch_first
        if self.self_attention_only and any(k in given and not same(given[k], given["query"])
                                            for k in ("key", "value")):
            raise NotSupportedError("the target's attention takes one input (self-attention only)")
        if self.key_is_value and "value" in given and not same(given["value"], given.get("key", given["query"])):
            raise NotSupportedError("the target's attention takes one input for keys and values")
        args = [given[name].transpose(0, 1) if flip else given[name] for name, _ in self.inputs if name in given]
        if self.level == "attention" and not self.self_attention_only:
            args += [args[-1]] * (len(self.inputs) - len(args))  # keys from the query, values from the keys
        kw: dict[str, Any] = {}
        masks = {k: v for k, v in kwargs.items() if k not in FLAGS and v is not None}
        if self.merge_padding and "key_padding_mask" in masks:
            masks["attn_mask"] = merged(masks.get("attn_mask"), masks.pop("key_padding_mask"), given, batch_first)
        elif self.level == "attention" and self.masks.get("attn_mask", "attn_mask") != "attn_mask" \
                and "attn_mask" in masks:
            masks["attn_mask"] = merged(masks["attn_mask"], None, given, batch_first)
        for name, mask in masks.items():
            if name in self.masks:
                kw[self.masks[name]] = keep(mask) if self.keep_mask else mask
            elif self.always_causal and is_causal_mask(mask):
                continue
            else:
                raise NotSupportedError(f"the target takes no {name}")
        for flag in self.flags:
            if kwargs.get(flag) is not None:
                kw[flag] = kwargs[flag]
        out = read_outputs(model(*args, **kw))
        if flip and out["output"].dim() == 3:
            out["output"] = out["output"].transpose(0, 1)
        weights = out.get("weights")
        if self.level == "attention" and weights is not None:
            if kwargs.get("need_weights") is False:
                del out["weights"]
            elif weights.dim() == args[0].dim() + 1 and kwargs.get("average_attn_weights", True):
                out["weights"] = weights.mean(dim=-3)
            elif weights.dim() == args[0].dim() and kwargs.get("average_attn_weights") is False:
                raise NotSupportedError("the target returns head-averaged attention weights only")
        return out


def read_outputs(out: Any) -> dict[str, Tensor]:
    """A target's result as {"output", "weights"}: a tensor, a tuple/list (output first), a dict or an object
    with ``last_hidden_state``."""
    if isinstance(out, Tensor):
        return {"output": out}
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        second = out[1] if len(out) > 1 and isinstance(out[1], Tensor) else None
        return {"output": out[0], **({"weights": second} if second is not None else {})}
    if isinstance(out, Mapping):
        for key in ("output", "out", "last_hidden_state", "hidden_states"):
            if isinstance(out.get(key), Tensor):
                weights = out.get("weights", out.get("attn_weights", out.get("attentions")))
                return {"output": out[key], **({"weights": weights} if isinstance(weights, Tensor) else {})}
    hidden = getattr(out, "last_hidden_state", None)
    if isinstance(hidden, Tensor):
        return {"output": hidden}
    raise TypeError(f"the target returned a {type(out).__name__}, not a Tensor, a tuple or a dict")


def _pair_inputs(level_inputs: list[str], params: list[inspect.Parameter]) -> list[tuple[str, str]]:
    data = [p.name for p in params if not _is_maskish(p.name)]
    pairs: dict[str, str] = {}
    for name in level_inputs:  # by name first
        for alias in INPUT_ALIASES.get(name, (name,)):
            if alias in data and alias not in pairs.values():
                pairs[name] = alias
                break
    named_ok = len(pairs) == len(level_inputs) and [data.index(pairs[n]) for n in level_inputs] == sorted(
        data.index(pairs[n]) for n in level_inputs)
    if not named_ok:  # by position
        pairs = dict(zip(level_inputs, data, strict=False))
    return sorted(pairs.items(), key=lambda item: data.index(item[1]))


def _pair_masks(level: str, params: list[inspect.Parameter]) -> dict[str, str]:
    """The level's mask keywords -> the target's parameters: exact names first, then the aliases."""
    names = [p.name for p in params if _is_maskish(p.name) and p.name not in FLAGS]
    keys = LEVEL_MASKS.get(level, ())
    out = {key: key for key in keys if key in names}
    for key in keys:
        if key in out:
            continue
        for alias in KWARG_ALIASES.get(key, (key,)):
            if alias in names and alias not in out.values():
                out[key] = alias
                break
    return out


def infer_calling(model: nn.Module, level: str, inputs: Mapping[str, Tensor], kwargs: Mapping[str, Any], *,  # noqa: C901, PLR0912, PLR0915 (to split: issue 18's resolution rework)
                  batch_first: bool, expected: Any = None, keep_mask: bool = False) -> Convention:
    """The target's calling convention at ``level``, from its signature and sample calls.

    ``inputs``/``kwargs`` are one standard call of the level (batched, N != L is best), laid out
    ``batch_first`` or not; ``expected`` the built-in's result for it (for its output shape). Layouts whose
    output shape matches are kept (the first in ``batch_first``, all in ``alternatives``: only values
    decide between them, see ``reference.inference.infer_target``). Raises NotSupportedError when no layout runs.
    """
    params = _forward_params(model)
    level_inputs = [k for k, v in inputs.items() if v is not None]
    all_inputs = ["query", "key", "value"] if level == "attention" else level_inputs
    pairs = _pair_inputs(all_inputs, params)
    masks = _pair_masks(level, params)
    notes = [f"called as forward({', '.join(t for _, t in pairs)}"
             + "".join(f", {t}=<{k}>" for k, t in masks.items()) + ")"]
    self_only = level == "attention" and len(pairs) == 1
    key_is_value = level == "attention" and len(pairs) == 2
    if self_only:
        notes.append("its attention takes one input: self-attention only")
    if key_is_value:
        notes.append("its attention takes (query, context): keys and values from one input")
    if level == "attention" and "key_padding_mask" not in masks and "attn_mask" in masks:
        merge = masks["attn_mask"] != "attn_mask"
    else:
        merge = False
    if merge:
        notes.append(f"key_padding_mask merged into {masks['attn_mask']} as one (N, 1|H, L, S) mask")
    flags = tuple(f for f in FLAGS if any(p.name == f for p in params))
    # a GPT (decoder_only), or an attention drawn causal (is_causal): one that takes no mask applies it itself
    always_causal = (level == "decoder_only" or bool(kwargs.get("is_causal"))) and not masks
    if always_causal:
        notes.append("it takes no mask: assumed always causal (the level's causal mask is not passed)")
    notes.append("masks passed as keep-masks (True = may attend), as declared" if keep_mask
                 else "masks passed as torch's (True or -inf = blocked)")
    conv = Convention(level, tuple(pairs), masks, flags, None, keep_mask, merge, self_only, key_is_value,
                      always_causal)
    sample = {k: v for k, v in inputs.items() if v is not None}
    batched = next(iter(sample.values())).dim() == 3
    want = read_outputs(expected)["output"].shape if expected is not None else \
        sample[OUTPUT_LIKE.get(level, level_inputs[0])].shape
    layouts: list[bool] = []
    errors: list[str] = []
    returns_weights = None
    for layout in ((True, False) if batched else (batch_first,)):
        trial = replace(conv, batch_first=layout if batched else None)
        try:
            with torch.no_grad():
                out = trial(model, sample, kwargs, batch_first=batch_first)
        except NotSupportedError:
            raise
        except Exception as exc:
            errors.append(f"{'batch-first' if layout else 'sequence-first'}: {type(exc).__name__}: {exc}")
            continue
        if out["output"].shape == want:
            layouts.append(layout)
            returns_weights = "weights" in out or returns_weights
        else:
            errors.append(f"{'batch-first' if layout else 'sequence-first'}: output shape "
                          f"{tuple(out['output'].shape)}, the built-in's {tuple(want)}")
    if not layouts:
        raise NotSupportedError("the target cannot be called at this level: " + "; ".join(errors))
    if batched:
        notes.append(("batch-first" if layouts[0] else "sequence-first")
                     + (" (the shapes allow both: values decide)" if len(layouts) > 1 else ""))
    unbatched = _try_unbatched(replace(conv, batch_first=layouts[0]), model, sample, kwargs, batch_first) \
        if batched else True
    notes.append("takes unbatched input" if unbatched else "does not take unbatched input")
    if level == "attention":
        notes.append("returns attention weights" if returns_weights else "returns the output only (no weights)")
    return replace(conv, batch_first=layouts[0] if batched else None, unbatched=unbatched,
                   returns_weights=bool(returns_weights), alternatives=tuple(layouts), assumptions=tuple(notes))


def _try_unbatched(conv: Convention, model: nn.Module, sample: Mapping[str, Tensor], kwargs: Mapping[str, Any],
                   batch_first: bool) -> bool:
    one = {k: v[0] if batch_first else v[:, 0] for k, v in sample.items()}
    kw = {k: (v[0] if k.endswith("key_padding_mask") else v) if isinstance(v, Tensor) else v
          for k, v in kwargs.items()}
    kw = {k: v for k, v in kw.items() if not (isinstance(v, Tensor) and v.dim() == 3)}
    try:
        with torch.no_grad():
            out = conv(model, one, kw, batch_first=batch_first)
    except Exception:
        return False
    return out["output"].dim() == next(iter(one.values())).dim()
