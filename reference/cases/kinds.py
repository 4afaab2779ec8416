"""The case types of the levels below the whole model, each answering what the runners ask of a case.

Every kind of case (these and ``reference.cases.case.Case``) has the same methods: its ``options()`` as the
built-in's keyword arguments and ``with_options(changes)``; its ``sizes()``, ``width``, ``heads``, ``batch``
and ``batch_first``; ``config`` (the whole-model configuration, None for attention and norm cases); its
``unmasked()``, ``long_enough()`` and ``only_masks()`` forms; ``with_batch()``; ``as_case()``, its
whole-model view, and ``plant_options()``, what a catalogue deviation is planted with; ``inputs_apart()``,
whether an attention run on it gets given inputs as distinct tensors. A few adaptations exist for one kind
only (``AttentionCase.as_called``, ``without_weights``; ``LayerNormCase.one_dimensional``;
``Case.with_one_layer_count``); the other kinds answer them with themselves (``SameByDefault``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from reference.builtin.config import Config
from reference.cases.case import Case, SameByDefault

# an option as the built-in's canonical name -> the field of a level case that holds it
CASE_NAMES = {"layer_norm_eps": "eps", "d_model": "embed_dim", "nhead": "num_heads"}


def _with_fields(case: Any, changes: dict[str, Any]) -> Any:
    """``case`` with the options in ``changes`` that it has as fields replaced (canonical names mapped)."""
    fields = {f.name for f in dataclasses.fields(case)}
    named = {CASE_NAMES.get(k, k): v for k, v in changes.items()}
    known = {k: v for k, v in named.items() if k in fields}
    return dataclasses.replace(case, **known) if known else case


@dataclass(frozen=True, kw_only=True)
class AttentionCase(SameByDefault):
    """A bare multi-head attention example: every nn.MultiheadAttention option, call flags, masks and seed."""

    embed_dim: int = 8
    num_heads: int = 2
    bias: bool = True
    add_bias_kv: bool = False
    add_zero_attn: bool = False
    kdim: int | None = None
    vdim: int | None = None
    batch_first: bool = False
    dropout: float = 0.0
    batch: int | None = 2
    query_len: int = 3
    key_len: int = 4
    self_attention: bool = False  # one input: query, key and value are the same tensor
    key_is_value: bool = False  # cross-attention whose keys and values are one tensor (a decoder's memory)
    equal_lengths: bool = False  # keys as long as the queries, whatever key_len says (a target taking no other)
    attn_mask: str = "none"
    key_padding_mask: str = "none"
    need_weights: bool = True
    average_attn_weights: bool = True
    is_causal: bool = False
    seed: int = 0
    weight_scale: float = 1.0

    def replace(self, **changes: Any) -> AttentionCase:
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        """One line for failure messages."""
        return " ".join(f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self))

    @property
    def config(self) -> None:
        """No whole-model configuration: attention options are its own fields."""
        return None

    @property
    def width(self) -> int:
        return self.embed_dim

    @property
    def heads(self) -> int:
        return self.num_heads

    def options(self) -> dict[str, Any]:
        return {"embed_dim": self.embed_dim, "num_heads": self.num_heads, "dropout": self.dropout, "bias": self.bias,
                "add_bias_kv": self.add_bias_kv, "add_zero_attn": self.add_zero_attn, "kdim": self.kdim,
                "vdim": self.vdim, "batch_first": self.batch_first}

    def with_options(self, changes: dict[str, Any]) -> AttentionCase:
        return _with_fields(self, changes)

    def sizes(self) -> dict[str, Any]:
        return {"d_model": self.embed_dim, "nhead": self.num_heads}

    def with_batch(self, size: int | None) -> AttentionCase:
        return self.replace(batch=size)

    def unmasked(self) -> AttentionCase:
        return self.replace(attn_mask="none", key_padding_mask="none", is_causal=False, batch=self.batch or 3)

    def long_enough(self, length: int = 4) -> AttentionCase:
        key_len = max(self.key_len, length + (0 if self.self_attention else 1))
        return self.replace(query_len=key_len if self.self_attention else max(self.query_len, length), key_len=key_len)

    def only_masks(self, taken: tuple[str, ...], level: str) -> AttentionCase:
        changes: dict[str, Any] = {}
        if "attn_mask" not in taken:
            changes |= {"attn_mask": "none", "is_causal": False}
        if "key_padding_mask" not in taken and "attn_mask" not in taken:
            changes["key_padding_mask"] = "none"
        return self.replace(**changes)

    def as_case(self) -> Case:
        config = Config(d_model=self.embed_dim, nhead=self.num_heads, bias=self.bias, batch_first=self.batch_first,
                        dropout=self.dropout)
        return Case(config, batch=self.batch, src_len=self.query_len, tgt_len=self.query_len, src_mask=self.attn_mask,
                    src_key_padding_mask=self.key_padding_mask, src_is_causal=self.is_causal or None, seed=self.seed)

    def plant_options(self) -> dict[str, Any]:
        return {**self.as_case().config.kwargs(), "embed_dim": self.embed_dim, "num_heads": self.num_heads}

    def as_called(self) -> AttentionCase:
        """The sizes its call shape gives: self-attention's keys are the queries, keys-as-values share a width,
        equal lengths make the keys as long as the queries."""
        case = self
        if case.self_attention:
            case = case.replace(key_len=case.query_len, kdim=None, vdim=None)
        if case.key_is_value:
            case = case.replace(vdim=case.kdim)
        if case.equal_lengths:
            case = case.replace(key_len=case.query_len)
        return case

    def without_weights(self) -> AttentionCase:
        return self.replace(need_weights=False)

    def inputs_apart(self, names: tuple[str, ...]) -> bool:
        """Whether an attention run on this case gets the inputs ``names`` (of query, key, value) as distinct
        tensors."""
        return len(names) < 2 or (not self.self_attention
                                  and not (self.key_is_value and set(names) <= {"key", "value"}))


@dataclass(frozen=True, kw_only=True)
class LayerNormCase(SameByDefault):
    """A layer-norm example: every nn.LayerNorm option, the input's leading shape, its offset, seed."""

    normalized_shape: tuple[int, ...] = (8,)
    eps: float = 1e-5
    elementwise_affine: bool = True
    bias: bool = True
    lead_shape: tuple[int, ...] = (3,)
    offset: float = 0.0
    seed: int = 0
    weight_scale: float = 1.0

    def replace(self, **changes: Any) -> LayerNormCase:
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        """One line for failure messages."""
        return " ".join(f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self))

    config = None  # no whole-model configuration
    batch_first = False
    batch = 1
    width = 0  # no attention width
    heads = 1

    def options(self) -> dict[str, Any]:
        return {"normalized_shape": self.normalized_shape, "eps": self.eps,
                "elementwise_affine": self.elementwise_affine, "bias": self.bias}

    def with_options(self, changes: dict[str, Any]) -> LayerNormCase:
        return _with_fields(self, changes)

    def sizes(self) -> dict[str, Any]:
        return {"normalized_shape": self.normalized_shape}

    def with_batch(self, size: int | None) -> LayerNormCase:
        return self

    def unmasked(self) -> LayerNormCase:
        return self

    def long_enough(self, length: int = 4) -> LayerNormCase:
        return self

    def only_masks(self, taken: tuple[str, ...], level: str) -> LayerNormCase:
        return self

    def as_case(self) -> Case:
        return Case(Config(layer_norm_eps=self.eps, bias=self.bias), seed=self.seed)

    def plant_options(self) -> dict[str, Any]:
        return {**self.as_case().config.kwargs(), "eps": self.eps, "normalized_shape": self.normalized_shape}

    def one_dimensional(self) -> LayerNormCase:
        """Normalized over one dimension of the same size (a map pairs one-dimensional norm weights)."""
        return self.replace(normalized_shape=(math.prod(self.normalized_shape),))

    def inputs_apart(self, names: tuple[str, ...]) -> bool:
        return len(names) < 2


@dataclass(frozen=True)
class StackCase(SameByDefault):
    """An encoder or decoder stack example: a whole-model case, with or without the stack's final norm."""

    case: Case
    final_norm: bool = True

    @property
    def seed(self) -> int:
        return self.case.seed

    @property
    def weight_scale(self) -> float:
        return self.case.weight_scale

    def describe(self) -> str:
        """One line for failure messages."""
        return self.case.describe() + ("" if self.final_norm else " (no final norm)")

    def replace(self, **changes: Any) -> StackCase:
        """``final_norm`` changes the stack; every other field the whole-model case inside it."""
        final_norm = changes.pop("final_norm", self.final_norm)
        return StackCase(self.case.replace(**changes) if changes else self.case, final_norm)

    @property
    def config(self) -> Config:
        return self.case.config

    @property
    def batch(self) -> int | None:
        return self.case.batch

    @property
    def batch_first(self) -> bool:
        return self.case.batch_first

    @property
    def width(self) -> int:
        return self.case.width

    @property
    def heads(self) -> int:
        return self.case.heads

    def options(self) -> dict[str, Any]:
        return {**self.case.options(), "final_norm": self.final_norm}

    def with_options(self, changes: dict[str, Any]) -> StackCase:
        changes = dict(changes)
        final = changes.pop("final_norm", self.final_norm)
        return StackCase(self.case.with_options(changes), final)

    def sizes(self) -> dict[str, Any]:
        return self.case.sizes()

    def with_batch(self, size: int | None) -> StackCase:
        return StackCase(self.case.with_batch(size), self.final_norm)

    def unmasked(self) -> StackCase:
        return StackCase(self.case.unmasked(), self.final_norm)

    def long_enough(self, length: int = 4) -> StackCase:
        return StackCase(self.case.long_enough(length), self.final_norm)

    def only_masks(self, taken: tuple[str, ...], level: str) -> StackCase:
        return StackCase(self.case.only_masks(taken, level), self.final_norm)

    def as_case(self) -> Case:
        return self.case

    def plant_options(self) -> dict[str, Any]:
        return self.case.plant_options()

    def inputs_apart(self, names: tuple[str, ...]) -> bool:
        return self.case.inputs_apart(names)


@dataclass(frozen=True)
class Seq2SeqCase(SameByDefault):
    """A token-level example for the sequence-to-sequence wrapper."""

    case: Case
    src_vocab: int = 11
    tgt_vocab: int = 7
    max_len: int = 16

    def describe(self) -> str:
        """One line for failure messages."""
        return f"src_vocab={self.src_vocab} tgt_vocab={self.tgt_vocab} max_len={self.max_len} {self.case.describe()}"
