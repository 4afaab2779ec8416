"""How the level's standard call becomes a target's: the ``Convention`` that ``infer_calling`` finds
(reference/inference/calling.py). It binds the level's inputs to the target's parameters
(reference/inference/binding.py), flips the layout, writes the level's masks in each mask parameter's measured
form (reference/inference/masks.py), or by name as torch's (or keep-masks, when declared), and reads the outputs
back in the level's layout.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

import reference.inference.binding as binding
from reference.inference.binding import FLAGS, Pairs, Param
from reference.inference.masks import MaskForm, encode, is_causal_mask, keep, logical, merged, same
from reference.inference.outputs import read_outputs
from reference.inference.required import Neutral
from reference.inference.required import write as write_neutral
from reference.inference.streams import Forms, queries_of
from reference.targets.contract import NotSupportedError


@dataclass(frozen=True, kw_only=True)
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
    causal_default: bool = False  # measured causal when given no mask, its mask not measured: called with none
    unbatched: bool | None = None  # whether the target takes unbatched input; None: not tried
    returns_weights: bool | None = None
    alternatives: tuple[bool | None, ...] = ()  # layouts that the shapes did not rule out
    assumptions: tuple[str, ...] = ()
    params: tuple[Param, ...] = ()  # the target's forward parameters
    forms: Forms = field(default_factory=dict)  # measured: how each mask parameter is written
    bindings: tuple[tuple[Pairs, tuple[bool, ...]], ...] = ()  # other pairings that run, with their layouts
    one_mask_only: tuple[str, ...] = ()  # by name, measured to take no per-head masks (reference/inference/byname.py)
    neutral: Neutral = field(default_factory=dict)  # required masks: all-keep where the case has none (required.py)

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
                # self-attention: one tensor as query, key and value; given query and key only, values are keys
                value = given.get("key", query) if name == "value" else query
            if value is not None:
                values[param] = value.transpose(0, 1) if flip else value
        values.update(target_kwargs)
        values.update(write_neutral(self.neutral, given, batch_first, skip=values))
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
        for name, mask in masks.items():
            if self.masks[name] in self.one_mask_only and mask.dim() == 3 and "padding" not in name:
                raise NotSupportedError(f"the target's {self.masks[name]} takes one (L, S) mask for every head "
                                        "(it raised with a zero (N*H, L, S) one): per-head masks cannot be expressed")
        return {self.masks[name]: keep(mask) if self.keep_mask else mask for name, mask in masks.items()}
