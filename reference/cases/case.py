"""Test cases as plain data: sizes, options, mask kinds and an integer seed; tensors come from the seed.

Hypothesis draws ``Case`` fields (reference/cases/strategies.py); ``Case.tensors`` turns them into tensors
with a seeded ``torch.Generator``, so a failing case replays from what hypothesis prints, and a reproducer
script can rebuild it with torch alone.
"""

from __future__ import annotations

import dataclasses
from dataclasses import KW_ONLY, dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor

from reference.builtin.config import Config

# Attention-mask kinds, shape (L, S) or, for "per_head_*", (N*H, L, S). None of them blocks key 0, so no
# query row is fully masked here; fully masked rows are the path policy's business (edge tests).
ATTN_MASKS = (
    "none", "causal_float", "causal_bool", "random_bool", "random_inf", "additive", "per_head_bool",
    "per_head_additive",
)
# Key-padding-mask kinds, shape (N, S): right padding of random length, key 0 always kept.
PADDING_MASKS = ("none", "bool", "float_inf", "float_finite")
CAUSAL_KINDS = ("causal_float", "causal_bool")

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
_CONFIG_FIELDS = frozenset(f.name for f in dataclasses.fields(Config))
_CAUSAL_FIELDS = frozenset(("src_mask", "tgt_mask", "src_is_causal", "tgt_is_causal"))  # a target may fix them


def draw_attn_mask(
    kind: str, L: int, S: int, batch: int | None, nhead: int, dtype: torch.dtype, g: torch.Generator
) -> Tensor | None:
    """An attention mask of ``kind`` for queries of length L over keys of length S."""
    if kind == "none":
        return None
    if kind in CAUSAL_KINDS:  # top-left causal: query i sees keys 0..i
        blocked = torch.ones(L, S, dtype=torch.bool).triu(1)
        return blocked if kind == "causal_bool" else torch.zeros(L, S, dtype=dtype).masked_fill(blocked, float("-inf"))
    lead = (batch or 1) * nhead if kind.startswith("per_head") else None
    shape = (L, S) if lead is None else (lead, L, S)
    if kind in ("random_bool", "random_inf", "per_head_bool"):
        blocked = torch.rand(shape, generator=g) < 0.3
        blocked[..., 0] = False
        if kind == "random_inf":
            return torch.zeros(shape, dtype=dtype).masked_fill(blocked, float("-inf"))
        return blocked
    if kind in ("additive", "per_head_additive"):  # finite additive biases, like relative-position terms
        return (2.0 * torch.randn(shape, generator=g, dtype=torch.float64)).to(dtype)
    raise ValueError(f"attention mask kind must be one of {ATTN_MASKS}, got {kind!r}")


def draw_padding_mask(kind: str, batch: int | None, S: int, dtype: torch.dtype, g: torch.Generator) -> Tensor | None:
    """A key padding mask of ``kind``: (N, S), or (S,) when unbatched; True / -inf / a penalty at pads."""
    if kind == "none":
        return None
    n = batch or 1
    lengths = torch.randint(1, S + 1, (n,), generator=g)
    pad = torch.arange(S).unsqueeze(0) >= lengths.unsqueeze(1)  # (N, S), right padding
    if kind == "bool":
        mask = pad
    elif kind == "float_inf":
        mask = torch.zeros(n, S, dtype=dtype).masked_fill(pad, float("-inf"))
    elif kind == "float_finite":
        mask = (pad * -3.0 * torch.rand(n, S, generator=g, dtype=torch.float64)).to(dtype)
    else:
        raise ValueError(f"padding mask kind must be one of {PADDING_MASKS}, got {kind!r}")
    return mask if batch is not None else mask[0]


T = TypeVar("T")


class SameByDefault:
    """The adaptations that exist for one kind of case only (see reference/cases/kinds.py): every other kind
    answers them with itself."""

    def as_called(self: T) -> T:
        return self

    def without_weights(self: T) -> T:
        return self

    def one_dimensional(self: T) -> T:
        return self

    def with_one_layer_count(self: T) -> T:
        return self


@dataclass(frozen=True)
class Case(SameByDefault):
    """One whole-model example: configuration, sizes (batch None = unbatched), mask kinds, hints, seed."""

    config: Config
    _: KW_ONLY  # the configuration may come first; everything else by name
    batch: int | None = 2
    src_len: int = 5
    tgt_len: int = 4
    src_mask: str = "none"
    tgt_mask: str = "none"
    memory_mask: str = "none"
    src_key_padding_mask: str = "none"
    tgt_key_padding_mask: str = "none"
    memory_key_padding_mask: str = "none"
    src_is_causal: bool | None = None
    tgt_is_causal: bool | None = None
    memory_is_causal: bool = False
    weight_scale: float = 1.0
    seed: int = 0

    def replace(self, **changes: Any) -> Case:
        return dataclasses.replace(self, **changes)

    # What the runners ask of every kind of case (reference/cases/kinds.py has the others):

    @property
    def batch_first(self) -> bool:
        return self.config.batch_first

    @property
    def width(self) -> int:
        """The model width, d_model."""
        return self.config.d_model

    @property
    def heads(self) -> int:
        return self.config.nhead

    def options(self) -> dict[str, Any]:
        """The configuration as the built-in's keyword arguments (what the user's constructor is given)."""
        return self.config.kwargs()

    def with_options(self, changes: dict[str, Any]) -> Case:
        """This case with configuration options replaced (those a target's code fixes, sizes it has), and the
        masks and hints a target fixes (one that is always causal)."""
        known = {k: v for k, v in changes.items() if k in _CONFIG_FIELDS}
        fields = {k: v for k, v in changes.items() if k in _CAUSAL_FIELDS}
        case = self.replace(config=dataclasses.replace(self.config, **known)) if known else self
        return case.replace(**fields) if fields else case

    def sizes(self) -> dict[str, Any]:
        """The sizes in canonical names (what reference/inference/sizes.py reads from a model)."""
        return {k: getattr(self.config, k) for k in ("d_model", "nhead", "dim_feedforward", "num_encoder_layers",
                                                      "num_decoder_layers")}

    def with_batch(self, size: int | None) -> Case:
        return self.replace(batch=size)

    def unmasked(self) -> Case:
        """Without masks and batched with N != L: the sample discovery measures on."""
        fields = {f for masks in CASE_MASKS.values() for f in masks.values()}
        return self.replace(**{f: "none" for f in fields}, src_is_causal=None, tgt_is_causal=None,
                            memory_is_causal=False, batch=3 if self.batch is None else self.batch)

    def long_enough(self, length: int = 4) -> Case:
        """Every sequence at least ``length`` long (heads are measured on longer sequences)."""
        return self.replace(src_len=max(self.src_len, length), tgt_len=max(self.tgt_len, length))

    def only_masks(self, taken: tuple[str, ...], level: str) -> Case:
        """Without the masks the target takes no argument for at ``level`` (and their hints)."""
        drop = {field for keyword, field in CASE_MASKS.get(level, {}).items() if keyword not in taken}
        hints = dict(HINTS[f] for f in drop if f in HINTS)
        return self.replace(**{f: "none" for f in drop}, **hints)

    def as_case(self) -> Case:
        """The whole-model view of the case (what the catalogue's ``shows_on`` reads): itself."""
        return self

    def plant_options(self) -> dict[str, Any]:
        """The keyword arguments a catalogue deviation is planted with."""
        return self.config.kwargs()

    def inputs_apart(self, names: tuple[str, ...]) -> bool:
        """Whether an attention in a model run on this case gets the inputs ``names`` (of query, key, value)
        as distinct tensors: a decoder's cross-attention has its query apart from its keys, but every
        attention takes one tensor as key and value."""
        return len(names) < 2 or "query" in names

    def with_one_layer_count(self) -> Case:
        """As many decoder layers as encoder layers (a target taking one count for both stacks)."""
        return self.with_options({"num_decoder_layers": self.config.num_encoder_layers})

    def tensors(self, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor, dict[str, object]]:
        """(src, tgt, forward kwargs) on the CPU at ``dtype``: values drawn in float64 then rounded."""
        g = torch.Generator().manual_seed(self.seed)
        c, n, S, T = self.config, self.batch, self.src_len, self.tgt_len

        def sequence(length: int) -> Tensor:
            x = torch.randn(length, n or 1, c.d_model, generator=g, dtype=torch.float64)
            x = x[:, 0] if n is None else (x.transpose(0, 1) if c.batch_first else x)
            return x.contiguous().to(dtype)

        src, tgt = sequence(S), sequence(T)
        kwargs: dict[str, object] = {
            "src_mask": draw_attn_mask(self.src_mask, S, S, n, c.nhead, dtype, g),
            "tgt_mask": draw_attn_mask(self.tgt_mask, T, T, n, c.nhead, dtype, g),
            "memory_mask": draw_attn_mask(self.memory_mask, T, S, n, c.nhead, dtype, g),
            "src_key_padding_mask": draw_padding_mask(self.src_key_padding_mask, n, S, dtype, g),
            "tgt_key_padding_mask": draw_padding_mask(self.tgt_key_padding_mask, n, T, dtype, g),
            "memory_key_padding_mask": draw_padding_mask(self.memory_key_padding_mask, n, S, dtype, g),
            "src_is_causal": self.src_is_causal,
            "tgt_is_causal": self.tgt_is_causal,
            "memory_is_causal": self.memory_is_causal,
        }
        return src, tgt, kwargs

    def describe(self) -> str:
        """One line naming what is not default: for failure messages and reports."""
        shape = "unbatched" if self.batch is None else f"N={self.batch}"
        masks = [f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self)
                 if f.name.endswith(("mask", "causal")) and getattr(self, f.name) not in ("none", None, False)]
        return f"{self.config} {shape} S={self.src_len} T={self.tgt_len} {' '.join(masks)} seed={self.seed}"
