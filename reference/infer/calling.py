"""Infer how to call a user's module at a level: arguments from its signature, layout, masks by measurement.

The level's standard call is torch's (``inputs`` such as query/key/value or src/tgt, and keyword masks and
flags with torch's names and conventions). ``infer_calling`` reads the target's ``forward`` signature and
pairs the level's inputs with its parameters (reference/infer/binding.py: by name, else by position; passed
by keyword unless positional-only; a mask parameter without a default gets None when the case has no mask),
tries each pairing in each layout (batch-first, sequence-first) on sample inputs, unmasked, and keeps those
whose output has the built-in's shape (values decide between them: reference/infer/auto.py). Then what each
mask parameter means is measured (reference/infer/mask_probe.py): which keys it blocks, its layout and kind;
the level's masks go to the parameters that can carry them, merged where one carries both. A declared
keep-mask (``keep_mask=True``, ``--keep-masks``) skips the measurement: masks then go by name, as keep-masks.
``Convention`` turns the standard call into the target's and says in words what it assumed; what a target
cannot take raises NotSupportedError.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn

from reference.build import randomize_
from reference.infer import binding
from reference.infer.binding import FLAGS, Pairs, Param
from reference.infer.copying import copy_model
from reference.infer.masks import MaskForm, encode, is_causal_mask, keep, logical, merged, same
from reference.infer.outputs import read_outputs
from reference.infer.streams import Forms, measure_forms, queries_of, resolve
from reference.targets import NotSupportedError

# the level's output: which input its shape follows
OUTPUT_LIKE = {"attention": "query", "decoder_layer": "tgt", "decoder": "tgt", "transformer": "tgt"}


@dataclass(frozen=True)
class Convention:
    """How the level's standard call becomes the target's; ``assumptions`` say so in words."""

    level: str
    inputs: Pairs  # (level input, target parameter), in the target's order
    masks: dict[str, str] = field(default_factory=dict)  # level keyword -> target parameter
    flags: tuple[str, ...] = ()  # level flags passed on
    batch_first: bool | None = None  # the target's layout; None: unknown yet (tried at run time) or unbatched
    keep_mask: bool = False
    merge_padding: bool = False  # by name (no measured form): key_padding_mask merged into the one mask
    self_attention_only: bool = False
    key_is_value: bool = False  # two inputs: (query, context), keys and values from the one context
    always_causal: bool = False  # the target takes no mask: the level's causal mask is its behaviour
    unbatched: bool | None = None  # whether the target takes unbatched input; None: not tried
    returns_weights: bool | None = None
    alternatives: tuple[bool | None, ...] = ()  # layouts that the shapes did not rule out
    assumptions: tuple[str, ...] = ()
    params: tuple[Param, ...] = ()  # the target's forward parameters
    forms: Forms = field(default_factory=dict)  # measured: how each mask parameter is written
    bindings: tuple[tuple[Pairs, tuple[bool, ...]], ...] = ()  # other pairings that run, with their layouts

    def describe(self) -> str:
        return "; ".join(self.assumptions)

    def invoke(self, model: nn.Module, given: Mapping[str, Tensor], target_kwargs: Mapping[str, Any], *,
               batch_first: bool) -> dict[str, Tensor]:
        """Call ``model`` with the level's ``given`` inputs (laid out ``batch_first`` or not) and arguments
        already in the target's terms; its outputs in the level's layout."""
        batched = next(iter(given.values())).dim() == 3
        flip = batched and self.batch_first is not None and self.batch_first != batch_first
        values: dict[str, Any] = {}
        query = given.get("query")
        for name, param in self.inputs:
            value = given.get(name)
            if value is None and self.level == "attention" and not self.self_attention_only:
                value = query  # self-attention: one tensor as query, key and value
            if value is not None:
                values[param] = value.transpose(0, 1) if flip else value
        values.update(target_kwargs)
        args, kwargs = binding.arguments(self.params, values)
        out = read_outputs(model(*args, **kwargs))
        if flip and out["output"].dim() == 3:
            out["output"] = out["output"].transpose(0, 1)
        return out

    def __call__(self, model: nn.Module, inputs: Mapping[str, Tensor], kwargs: Mapping[str, Any], *,
                 batch_first: bool) -> dict[str, Tensor]:
        """Call ``model`` with the level's ``inputs``/``kwargs`` (laid out batch-first or not): its outputs as
        {"output": ..., "weights": ...} in the level's layout. NotSupportedError for what it cannot take."""
        given = {k: v for k, v in inputs.items() if v is not None}
        batched = next(iter(given.values())).dim() == 3
        if not batched and self.unbatched is False:
            raise NotSupportedError("the target does not take unbatched input")
        if self.self_attention_only and any(k in given and not same(given[k], given["query"])
                                            for k in ("key", "value")):
            raise NotSupportedError("the target's attention takes one input (self-attention only)")
        if self.key_is_value and "value" in given and not same(given["value"], given.get("key", given["query"])):
            raise NotSupportedError("the target's attention takes one input for keys and values")
        masks = {k: v for k, v in kwargs.items() if k not in FLAGS and v is not None}
        if not batched and any(self.masks.get(k) in self.forms for k in masks):
            return self._as_batch_of_one(model, given, kwargs, batch_first)
        target_kwargs = self._masks(masks, given, batch_first)
        for flag in self.flags:
            if kwargs.get(flag) is not None:
                target_kwargs[flag] = kwargs[flag]
        out = self.invoke(model, given, target_kwargs, batch_first=batch_first)
        weights = out.get("weights")
        if self.level == "attention" and weights is not None:
            if kwargs.get("need_weights") is False:
                del out["weights"]
            elif weights.dim() == given["query"].dim() + 1 and kwargs.get("average_attn_weights", True):
                out["weights"] = weights.mean(dim=-3)
            elif weights.dim() == given["query"].dim() and kwargs.get("average_attn_weights") is False:
                raise NotSupportedError("the target returns head-averaged attention weights only")
        return out

    def _as_batch_of_one(self, model: nn.Module, given: Mapping[str, Tensor], kwargs: Mapping[str, Any],
                         batch_first: bool) -> dict[str, Tensor]:
        """An unbatched call with masks in a measured form: run as a batch of one (the forms are batched)."""
        axis = 0 if batch_first else 1
        one = {k: v.unsqueeze(axis) for k, v in given.items()}
        kw = {k: v.unsqueeze(0) if isinstance(v, Tensor) and "padding" in k else v for k, v in kwargs.items()}
        out = self(model, one, kw, batch_first=batch_first)
        out["output"] = out["output"].squeeze(axis)
        if "weights" in out:
            out["weights"] = out["weights"].squeeze(0)
        return out

    def _masks(self, masks: Mapping[str, Tensor], given: Mapping[str, Tensor], batch_first: bool) -> dict[str, Any]:
        """The level's masks as the target's arguments: by measured form, else as torch's (or keep-masks)."""
        by_param: dict[str, list[tuple[str, Tensor]]] = {}
        for name, mask in masks.items():
            param = self.masks.get(name)
            if param is None:
                if self.always_causal and is_causal_mask(mask):
                    continue
                raise NotSupportedError(f"the target takes no {name}")
            by_param.setdefault(param, []).append((name, mask))
        out: dict[str, Any] = {}
        for param, items in by_param.items():
            if param in self.forms:
                stream, form = self.forms[param]
                out[param] = self._written(form, queries_of(self.level, stream), items, given, batch_first, param)
            else:
                out.update(self._by_name(dict(items), given, batch_first))
        return out

    def _written(self, form: MaskForm, queries: str, items: list[tuple[str, Tensor]], given: Mapping[str, Tensor],
                 batch_first: bool, param: str) -> Tensor:
        query = given.get(queries, given.get("query", next(iter(given.values()))))
        N, L = (query.shape[0], query.shape[1]) if batch_first else (query.shape[1], query.shape[0])
        S = items[0][1].shape[-1]
        roles = [("padding" if "padding" in name else "attn", mask) for name, mask in items]
        dtype = query.dtype if query.is_floating_point() else torch.float32
        return encode(form, logical(roles, N, L, S, dtype), param)

    def _by_name(self, masks: dict[str, Tensor], given: Mapping[str, Tensor], batch_first: bool) -> dict[str, Any]:
        """Masks whose parameter has no measured form: torch's, merged for a one-mask attention, or keep-masks."""
        if self.merge_padding and "key_padding_mask" in masks:
            masks["attn_mask"] = merged(masks.get("attn_mask"), masks.pop("key_padding_mask"), given, batch_first)
        elif self.level == "attention" and self.masks.get("attn_mask", "attn_mask") != "attn_mask" \
                and "attn_mask" in masks:
            masks["attn_mask"] = merged(masks["attn_mask"], None, given, batch_first)
        return {self.masks[name]: keep(mask) if self.keep_mask else mask for name, mask in masks.items()}


def _probe_inputs(conv: Convention, sample: Mapping[str, Tensor], batch_first: bool) -> dict[str, Tensor]:
    """Batch-first example tensors for the probes: the inputs the target takes, keys distinct from queries."""
    bf = {k: v if batch_first else v.transpose(0, 1) for k, v in sample.items()}
    if conv.level != "attention":
        return bf
    query = bf["query"]
    if conv.self_attention_only:
        return {"query": query}
    key = bf.get("key", query[:, :1].expand(-1, query.shape[1] + 1, -1))
    return {"query": query, "key": key} if conv.key_is_value else {"query": query, "key": key,
                                                                  "value": bf.get("value", key)}


def infer_calling(model: nn.Module, level: str, inputs: Mapping[str, Tensor], kwargs: Mapping[str, Any], *,
                  batch_first: bool, expected: Any = None, keep_mask: bool = False, heads: int = 1,
                  mask_cache: MutableMapping[Pairs, Forms] | None = None) -> Convention:
    """The target's calling convention at ``level``, from its signature, sample calls and mask probes.

    ``inputs``/``kwargs`` are one standard call of the level (batched, N != L is best), laid out
    ``batch_first`` or not; ``expected`` the built-in's result for it (for its output shape). Pairings and
    layouts whose unmasked output shape matches are kept (the first in ``inputs``/``batch_first``, the others
    in ``bindings``/``alternatives``: only values decide between them, see ``reference.infer.infer_target``).
    ``heads`` is the number of heads (for per-head mask layouts); ``mask_cache`` keeps measured mask forms per
    pairing, so they are measured once. Raises NotSupportedError when nothing runs.
    """
    params, varargs = binding.forward_params(model)
    sample = {k: v for k, v in inputs.items() if v is not None}
    level_inputs = list(sample)
    all_inputs = ["query", "key", "value"] if level == "attention" else level_inputs
    flags = tuple(f for f in FLAGS if any(p.name == f for p in params))
    batched = next(iter(sample.values())).dim() == 3
    want = read_outputs(expected)["output"].shape if expected is not None else \
        sample[OUTPUT_LIKE.get(level, level_inputs[0])].shape
    bare = {k: v for k, v in kwargs.items() if k in flags and not isinstance(v, Tensor)}
    viable: list[tuple[Convention, list[bool]]] = []
    errors: list[str] = []
    for pairs in binding.pairings(all_inputs, params, varargs):
        attention = level == "attention"
        conv = Convention(level, pairs, flags=flags, keep_mask=keep_mask, params=params,
                          self_attention_only=attention and len(pairs) == 1,
                          key_is_value=attention and len(pairs) == 2)
        layouts, weights = _layouts(conv, model, sample, bare, batch_first, batched, want, errors)
        if layouts:
            viable.append((replace(conv, returns_weights=weights), layouts))
    if not viable:
        raise NotSupportedError("the target cannot be called at this level: " + "; ".join(dict.fromkeys(errors)))
    conv, layouts = viable[0]
    conv = replace(conv, batch_first=layouts[0] if batched else None, alternatives=tuple(layouts),
                   bindings=tuple((c.inputs, tuple(ls)) for c, ls in viable[1:]))
    conv = _with_masks(conv, model, sample, kwargs, batch_first, heads, mask_cache)
    notes = _notes(conv, layouts, batched)
    unbatched = _try_unbatched(conv, model, sample, bare, batch_first) if batched else True
    notes.append("takes unbatched input" if unbatched else "does not take unbatched input")
    returns_weights = conv.returns_weights
    if level == "attention":
        notes.append("returns attention weights" if returns_weights else "returns the output only (no weights)")
    return replace(conv, unbatched=unbatched, returns_weights=bool(returns_weights), assumptions=tuple(notes))


def _layouts(conv: Convention, model: nn.Module, sample: Mapping[str, Tensor], bare: Mapping[str, Any],
             batch_first: bool, batched: bool, want: torch.Size, errors: list[str]) -> tuple[list[bool], bool]:
    """(the layouts in which ``conv`` runs unmasked and gives the built-in's output shape, whether it returns
    attention weights)."""
    layouts: list[bool] = []
    weights = False
    for layout in ((True, False) if batched else (batch_first,)):
        trial = replace(conv, batch_first=layout if batched else None)
        where = "batch-first" if layout else "sequence-first"
        try:
            with torch.no_grad():
                out = trial(model, sample, bare, batch_first=batch_first)
        except Exception as exc:
            errors.append(f"{where}: {type(exc).__name__}: {exc}")
            continue
        if out["output"].shape == want:
            layouts.append(layout)
            weights = weights or "weights" in out
        else:
            errors.append(f"{where}: output shape {tuple(out['output'].shape)}, the built-in's {tuple(want)}")
    return layouts, weights


def _with_masks(conv: Convention, model: nn.Module, sample: Mapping[str, Tensor], kwargs: Mapping[str, Any],
                batch_first: bool, heads: int, cache: MutableMapping[Pairs, Forms] | None) -> Convention:
    """``conv`` with the level's masks assigned to the target's parameters: measured, or by name if declared."""
    level = conv.level
    mask_params = [p.name for p in conv.params if "mask" in p.name]
    forms: Forms = {}
    if not conv.keep_mask and level != "transformer" and mask_params:
        if cache is not None and conv.inputs in cache:
            forms = cache[conv.inputs]
        else:
            probe_model = randomize_(copy_model(model).to(torch.float64), torch.Generator().manual_seed(0)).eval()
            trial = replace(conv, batch_first=conv.batch_first)

            def run(given: Mapping[str, Tensor], raw: Mapping[str, Tensor]) -> Tensor:
                return trial.invoke(probe_model, given, raw, batch_first=True)["output"]

            forms = measure_forms(level, run, _probe_inputs(conv, sample, batch_first), mask_params, heads,
                                  self_stream=conv.self_attention_only)
            if cache is not None:
                cache[conv.inputs] = forms
    masks, merge, always_causal = resolve(level, mask_params, forms, bool(kwargs.get("is_causal")))
    return replace(conv, masks=masks, forms=forms, merge_padding=merge, always_causal=always_causal)


def _notes(conv: Convention, layouts: list[bool], batched: bool) -> list[str]:
    notes = [f"called as {binding.describe(conv.inputs, conv.masks, conv.params)}"]
    if conv.self_attention_only:
        notes.append("its attention takes one input: self-attention only")
    if conv.key_is_value:
        notes.append("its attention takes (query, context): keys and values from one input")
    if conv.bindings:
        notes.append("other pairings of the inputs run too: the values decide")
    for param, (_, form) in conv.forms.items():
        carried = " + ".join(k for k, v in conv.masks.items() if v == param) or "nothing the level passes"
        notes.append(f"{param} measured as {form.describe()}; carries {carried}")
    by_name = sorted({v for k, v in conv.masks.items() if v not in conv.forms})
    if by_name:
        notes.append(f"{', '.join(by_name)} passed as keep-masks (True = may attend), as declared" if conv.keep_mask
                     else f"{', '.join(by_name)} passed as torch's masks (True or -inf = blocked)"
                     + ("" if conv.level == "transformer" else ": no probe showed what it blocks"))
    if conv.merge_padding:
        notes.append(f"key_padding_mask merged into {conv.masks['attn_mask']} as one (N, 1|H, L, S) mask")
    if conv.always_causal:
        notes.append("it takes no mask: assumed always causal (the level's causal mask is not passed)")
    if batched:
        notes.append(("batch-first" if layouts[0] else "sequence-first")
                     + (" (the shapes allow both: values decide)" if len(layouts) > 1 else ""))
    return notes


def _try_unbatched(conv: Convention, model: nn.Module, sample: Mapping[str, Tensor], kwargs: Mapping[str, Any],
                   batch_first: bool) -> bool:
    one = {k: v[0] if batch_first else v[:, 0] for k, v in sample.items()}
    try:
        with torch.no_grad():
            out = replace(conv, unbatched=None)(model, one, kwargs, batch_first=batch_first)
    except Exception:
        return False
    return out["output"].dim() == next(iter(one.values())).dim()
