"""Mask bugs: each a MultiheadAttention that misreads its masks before handmade's own code runs.

``misreads(read)`` makes a faulty subclass whose forward passes (key_padding_mask, attn_mask, is_causal)
through ``read`` and then calls handmade's forward; several compose (each is one more reader). handmade
turns masks additive where each public module starts, so a bug that depends on a mask's dtype (bool masks
read inverted) is planted at the model's own entry instead (``ReadsRawMasks``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import cast

import torch
from torch import Tensor, nn

import handmade
from reference.catalogue._base import (
    ATTN,
    KPM_FIELDS,
    MASK_FIELDS,
    Deviation,
    any_mask,
    become,
    bool_mask,
    everywhere,
    float_mask,
    has,
    per_head,
)
from reference.catalogue.attention_math import FillMinus1e9

Masks = tuple[Tensor | None, Tensor | None, bool]  # key_padding_mask, attn_mask, is_causal
Reader = Callable[[handmade.MultiheadAttention, Tensor, Tensor, Tensor | None, Tensor | None, bool, bool], Masks]


def misreads(name: str, read: Reader) -> type:
    """A MultiheadAttention subclass that reads its masks through ``read``."""

    class Misreads(handmade.MultiheadAttention):
        def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None,
                    need_weights: bool = True, attn_mask: Tensor | None = None, average_attn_weights: bool = True,
                    is_causal: bool = False) -> tuple[Tensor, Tensor | None]:
            kpm, attn_mask, is_causal = read(self, query, key, key_padding_mask, attn_mask, is_causal, need_weights)
            return super().forward(query, key, value, kpm, need_weights, attn_mask, average_attn_weights, is_causal)

    Misreads.__name__ = Misreads.__qualname__ = name
    return Misreads


def sizes(attn: handmade.MultiheadAttention, query: Tensor, key: Tensor) -> tuple[int, int, int]:
    """(N, L, S) of a call; N is 1 for unbatched input."""
    seq = 1 if attn.batch_first and query.dim() == 3 else 0
    return (query.size(1 - seq) if query.dim() == 3 else 1), query.size(seq), key.size(seq)


def _each(f: Callable[[Tensor], Tensor]) -> Callable[[Tensor | None], Tensor | None]:
    return lambda m: None if m is None else f(m)


def _keep(m: Tensor) -> Tensor:  # True / non-zero = may attend
    return ~m if m.dtype == torch.bool else m == 0


def _inverted(m: Tensor) -> Tensor:
    return ~m if m.dtype == torch.bool else m


def _as_bool(m: Tensor) -> Tensor:  # mask.bool(): every non-zero entry blocks
    return m if m.dtype == torch.bool else m != 0


def _per_entry(f: Callable[[Tensor], Tensor]) -> Reader:
    g = _each(f)
    return lambda attn, q, k, kpm, mask, causal, weights: (g(kpm), g(mask), causal)


def _on_queries(attn, query, key, kpm, attn_mask, is_causal, need_weights) -> Masks:
    if kpm is None:
        return kpm, attn_mask, is_causal
    n, length, keys = sizes(attn, query, key)
    additive = cast(Tensor, handmade.masks.to_additive(kpm, "key_padding_mask", query.dtype))  # kpm is not None
    pad = additive.reshape(n, 1, -1, 1)  # (N, 1, L, 1): rows
    base = handmade.masks.to_additive(attn_mask, "attn_mask", query.dtype)
    base = torch.zeros(length, keys, dtype=query.dtype, device=query.device) if base is None else base
    base = base.view(n, attn.num_heads, length, keys) if base.dim() == 3 else base
    merged = (base + pad).expand(n, attn.num_heads, length, keys)
    return None, merged.reshape(n * attn.num_heads, length, keys), False


def _off_by_one(attn, query, key, kpm, attn_mask, is_causal, need_weights) -> Masks:
    if is_causal and kpm is None and not need_weights:  # the hint: build the causal mask here
        _, length, keys = sizes(attn, query, key)
        return None, torch.ones(length, keys, dtype=torch.bool, device=query.device).triu(diagonal=2), False
    return kpm, attn_mask, is_causal


def _head_major(attn, query, key, kpm, attn_mask, is_causal, need_weights) -> Masks:
    if attn_mask is not None and attn_mask.dim() == 3:  # row h*N + n read as (batch n, head h)
        rows = attn_mask.view(attn.num_heads, -1, *attn_mask.shape[1:]).transpose(0, 1)
        attn_mask = rows.reshape(attn_mask.shape)
    return kpm, attn_mask, is_causal


Keep = misreads("ReadsKeepMasks", _per_entry(_keep))
AsBool = misreads("FloatMasksAsBool", _per_entry(_as_bool))
PaddingOnQueries = misreads("PaddingOnQueries", _on_queries)
CausalOffByOne = misreads("CausalOffByOne", _off_by_one)
HeadMajorRows = misreads("HeadMajorMaskRows", _head_major)
IgnoresMask = misreads("IgnoresAttnMask", lambda attn, q, k, kpm, mask, causal, w: (kpm, None, False))
IgnoresPadding = misreads("IgnoresPadding", lambda attn, q, k, kpm, mask, causal, w: (None, mask, causal))


MASK_ARGS = frozenset({"src_mask", "tgt_mask", "memory_mask", "mask", "attn_mask", "src_key_padding_mask",
                       "tgt_key_padding_mask", "memory_key_padding_mask", "key_padding_mask"})


class ReadsRawMasks(nn.Module):
    """The model's own forward, its mask arguments first passed through the readers planted, as the caller gave them."""

    def forward(self, *args: object, **kwargs: object) -> object:
        bound = inspect.signature(super().forward).bind(*args, **kwargs)
        for name, value in bound.arguments.items():
            if name in MASK_ARGS and isinstance(value, Tensor):
                for read in self.__dict__["raw_readers"].values():
                    value = read(value)
                bound.arguments[name] = value
        return super().forward(*bound.args, **bound.kwargs)


def at_entry(key: str, read: Callable[[Tensor], Tensor]) -> Callable[[nn.Module, Mapping[str, object]], None]:
    """A plant that reads every mask the model (whatever its level) is called with through ``read``."""

    def plant(model: nn.Module, config: Mapping[str, object]) -> None:
        become(model, ReadsRawMasks, raw_readers={**model.__dict__.get("raw_readers", {}), key: read})

    return plant


def _with_fill(cls: type) -> Callable[[nn.Module, Mapping[str, object]], None]:
    """Masks read by ``cls``, blocked scores then filled with -1e9 (masked_fill(mask == 0, -1e9))."""

    def plant(model: nn.Module, config: Mapping[str, object]) -> None:
        everywhere(cls)(model, config)
        everywhere(FillMinus1e9, part="attention")(model, config)

    return plant


HINTS = {"src_is_causal": ("src_mask",), "tgt_is_causal": ("tgt_mask",), "memory_is_causal": ("memory_mask",),
         "is_causal": ("mask", "src_mask", "attn_mask")}


class DropsMaskForHint(nn.Module):
    """The model's own forward, but a causal hint given as True drops its mask (and the hint) at the entry.

    At the entry, since only there is a hint the caller's: handmade resolves hints before its stacks run."""

    def forward(self, *args: object, **kwargs: object) -> object:
        signature = inspect.signature(super().forward)
        bound = signature.bind(*args, **kwargs)
        for hint, masks in HINTS.items():
            if bound.arguments.get(hint) is True:
                for mask in masks:
                    if mask in bound.arguments:
                        bound.arguments[mask] = None
                bound.arguments[hint] = signature.parameters[hint].default
        return super().forward(*bound.args, **bound.kwargs)


def _hint_drops_mask(model: nn.Module, config: Mapping[str, object]) -> None:
    become(model, DropsMaskForHint)


POLARITY = "mask polarity"
PADDING = "padding masks ignored or on the wrong axis"
IGNORED = "attention masks ignored"
FILL = ("attention.masking", "fill -1e9")
SITE = {"src": "the encoder self-attention", "tgt": "the decoder self-attention", "memory": "the cross-attention"}
MASK_SITE = {"src_mask": "src", "tgt_mask": "tgt", "memory_mask": "memory"}

# Narrower deviations first: where two explain the cases equally well, the search keeps the first.
CATALOGUE = (
    Deviation(key="bool_mask_inverted", cause=POLARITY,
              does="reads bool masks as keep-masks (True = may attend); float masks are right",
              fix="nn.Transformer's bool masks are True where attention is NOT allowed", plant=at_entry("inverted",
                                                                                                        _inverted),
              sites=ATTN, shows_on=bool_mask, claims=(("mask.polarity", "keep bool"),)),
    Deviation(key="float_mask_as_bool", cause="float masks treated as bool",
              does="turns float masks into hard masks (any non-zero value blocks)",
              fix="add float masks to the scores: a finite value is a bias, only -inf blocks",
              plant=everywhere(AsBool), sites=ATTN,
              shows_on=float_mask, claims=(("mask.float", "as bool"),)),
    Deviation(key="masks_read_as_keep", cause=POLARITY, does="reads masks as keep-masks (True / non-zero = may attend)",
              fix="nn.Transformer's bool masks are True where attention is NOT allowed; float masks are added",
              plant=everywhere(Keep), sites=ATTN, shows_on=any_mask, claims=(("mask.polarity", "keep"),)),
    Deviation(key="float_mask_as_bool_fill_1e9", cause="float masks treated as bool",
              does="turns float masks into hard masks (any non-zero value blocks) filled with -1e9",
              fix="add float masks to the scores: a finite value is a bias, only -inf blocks",
              plant=_with_fill(AsBool), sites=ATTN,
              shows_on=float_mask, claims=(("mask.float", "as bool"), FILL)),
    Deviation(key="masks_read_as_keep_fill_1e9", cause=POLARITY,
              does="reads masks as keep-masks (True / non-zero = may attend), filled with -1e9",
              fix="nn.Transformer's bool masks are True where attention is NOT allowed; float masks are added",
              plant=_with_fill(Keep), sites=ATTN, shows_on=any_mask, claims=(("mask.polarity", "keep"), FILL)),
    Deviation(key="hint_drops_mask", cause="*_is_causal handling",
              does="drops the mask when a *_is_causal hint is given (the hint "
              "is not a mask)", fix="is_causal is only a hint that the mask is causal: keep applying the mask",
              plant=_hint_drops_mask, sites=ATTN, shows_on=has("src_is_causal", "tgt_is_causal", "memory_is_causal"),
              claims=(("causal hint", "drops mask"),)),
    Deviation(key="causal_off_by_one", cause="*_is_causal handling",
              does="builds the causal mask for an is_causal hint with triu(diagonal=2): position t also sees t+1",
              fix="a causal mask blocks keys j > i: torch.ones(L, S, dtype=torch.bool).triu(diagonal=1)",
              plant=everywhere(CausalOffByOne), sites=ATTN, shows_on=has("src_is_causal", "tgt_is_causal"),
              claims=(("causal hint", "off by one"),)),
    Deviation(key="per_head_mask_head_major", cause="per-head mask layout",
              does="reads a 3-D mask's rows as head * N + batch",
              fix="row n * nhead + h of an (N*nhead, L, S) mask is batch n, head h", plant=everywhere(HeadMajorRows),
              sites=ATTN,
              shows_on=per_head, claims=(("mask.per_head", "head major"),)),
    *(Deviation(key=f"{site}_padding_ignored", cause=PADDING, does=f"ignores {site}_key_padding_mask",
                fix=f"apply {site}_key_padding_mask to the keys of {SITE[site]}", plant=everywhere(IgnoresPadding,
                                                                                                   site), sites=ATTN,
                shows_on=has(f"{site}_key_padding_mask"), claims=((f"{site}.padding", "ignored"),))
      for site in ("src", "tgt", "memory")),
    Deviation(key="padding_ignored", cause=PADDING, does="ignores every key_padding_mask",
              fix="add each key_padding_mask (N, S) to its attention's scores, broadcast as (N, 1, 1, S)",
              plant=everywhere(IgnoresPadding), sites=ATTN, shows_on=has(*KPM_FIELDS),
              claims=tuple((f"{s}.padding", "ignored") for s in ("src", "tgt", "memory"))),
    Deviation(key="padding_on_query_axis", cause=PADDING,
              does="applies self-attention key padding masks to the queries (rows) instead of the keys (columns)",
              fix="a key_padding_mask (N, S) blocks keys: broadcast it as (N, 1, 1, S) over heads and queries",
              plant=everywhere(PaddingOnQueries,
                               "self"), sites=ATTN, shows_on=has(*KPM_FIELDS), claims=(("padding.axis", "queries"),)),
    *(Deviation(key=f"{field}_ignored", cause=IGNORED, does=f"ignores {field}", fix=f"apply {field} to the scores of "
                + ("the cross-attention" if field == "memory_mask" else "the self-attention"),
                plant=everywhere(IgnoresMask, MASK_SITE[field]), sites=ATTN, shows_on=has(field), claims=((field,
                                                                                                           "ignored"),))
      for field in MASK_FIELDS),
    Deviation(key="masks_ignored", cause=IGNORED, does="ignores every attention mask (src_mask, tgt_mask, memory_mask)",
              fix="add each mask to its attention's scores (bool True / -inf = blocked)",
              plant=everywhere(IgnoresMask), sites=ATTN,
              shows_on=has(*MASK_FIELDS), claims=tuple((f, "ignored") for f in MASK_FIELDS)),
)
