"""Drawn cases as a user's module is checked on them: its configuration as constructor options, and the case
with options replaced (those its code fixes, the sizes it has) or masks left out (those it takes no argument for).

Every level draws one of three kinds of case (reference/cases/strategies.py): a whole-model ``Case`` (the layers,
wrapped in a ``StackCase`` for the stacks), an ``AttentionCase`` or a ``LayerNormCase``. Options are written
with the built-in's canonical names (``d_model``, ``nhead``, ``layer_norm_eps``, ...), whatever the case calls
them (``embed_dim``, ``num_heads``, ``eps``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from reference.builtin.config import Config
from reference.cases.case import Case
from reference.cases.strategies import AttentionCase, LayerNormCase, StackCase

CASE_NAMES = {  # canonical option -> the field of an AttentionCase or a LayerNormCase
    "layer_norm_eps": "eps", "d_model": "embed_dim", "nhead": "num_heads",
}
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


def options_of(case: Any) -> dict[str, Any]:
    """A case's configuration as the built-in's keyword arguments (what the user's constructor is given)."""
    if isinstance(case, StackCase):
        return {**case.case.config.kwargs(), "final_norm": case.final_norm}
    if isinstance(case, Case):
        return case.config.kwargs()
    if isinstance(case, AttentionCase):
        return {"embed_dim": case.embed_dim, "num_heads": case.num_heads, "dropout": case.dropout, "bias": case.bias,
                "add_bias_kv": case.add_bias_kv, "add_zero_attn": case.add_zero_attn, "kdim": case.kdim,
                "vdim": case.vdim, "batch_first": case.batch_first}
    if isinstance(case, LayerNormCase):
        return {"normalized_shape": case.normalized_shape, "eps": case.eps,
                "elementwise_affine": case.elementwise_affine, "bias": case.bias}
    raise TypeError(f"no options for a {type(case).__name__}")


def with_options(case: Any, changes: dict[str, Any]) -> Any:
    """``case`` with configuration options replaced (those a target's code fixes, sizes it has)."""
    if not changes:
        return case
    if isinstance(case, StackCase):
        changes = dict(changes)
        final = changes.pop("final_norm", case.final_norm)
        return StackCase(with_options(case.case, changes), final)
    if isinstance(case, Case):
        known = {f.name for f in dataclasses.fields(Config)}
        return case.replace(config=dataclasses.replace(case.config, **{k: v for k, v in changes.items() if k in known}))
    fields = {f.name for f in dataclasses.fields(case)}
    named = {CASE_NAMES.get(k, k): v for k, v in changes.items()}
    return dataclasses.replace(case, **{k: v for k, v in named.items() if k in fields})


def config_of(case: Any) -> Config | None:
    """The whole-model configuration a layer or stack case is drawn from (None for attention and norms)."""
    return case.case.config if isinstance(case, StackCase) else case.config if isinstance(case, Case) else None


def batch_first(case: Any) -> bool:
    config = config_of(case)
    return config.batch_first if config is not None else bool(getattr(case, "batch_first", False))


def batch(case: Any) -> int | None:
    return case.case.batch if isinstance(case, StackCase) else getattr(case, "batch", 1)


def with_batch(case: Any, size: int | None) -> Any:
    if isinstance(case, StackCase):
        return StackCase(case.case.replace(batch=size), case.final_norm)
    return case.replace(batch=size) if hasattr(case, "batch") else case


def unmasked(case: Any) -> Any:
    """``case`` without masks and batched with N != L: the sample discovery measures on."""
    if isinstance(case, StackCase):
        return StackCase(unmasked(case.case), case.final_norm)
    if isinstance(case, Case):
        fields = {f for masks in CASE_MASKS.values() for f in masks.values()}
        return case.replace(**{f: "none" for f in fields}, src_is_causal=None, tgt_is_causal=None,
                            memory_is_causal=False, batch=3 if case.batch is None else case.batch)
    if isinstance(case, AttentionCase):
        return case.replace(attn_mask="none", key_padding_mask="none", is_causal=False, batch=case.batch or 3)
    return case


def long_enough(case: Any, length: int = 4) -> Any:
    """``case`` with every sequence at least ``length`` long: with one key, attention is the same for any
    number of heads, so the heads are measured on longer sequences."""
    if isinstance(case, StackCase):
        return StackCase(long_enough(case.case, length), case.final_norm)
    if isinstance(case, Case):
        return case.replace(src_len=max(case.src_len, length), tgt_len=max(case.tgt_len, length))
    if isinstance(case, AttentionCase):
        key_len = max(case.key_len, length + (0 if case.self_attention else 1))
        return case.replace(query_len=key_len if case.self_attention else max(case.query_len, length), key_len=key_len)
    return case


def only_masks(case: Any, taken: tuple[str, ...], level: str) -> Any:
    """``case`` without the masks the target takes no argument for (noted once by the report, not failed)."""
    if level == "decoder_only":
        return case
    if isinstance(case, StackCase):
        return StackCase(only_masks(case.case, taken, level), case.final_norm)
    if isinstance(case, Case):
        drop = {field for keyword, field in CASE_MASKS.get(level, {}).items() if keyword not in taken}
        hints = dict(HINTS[f] for f in drop if f in HINTS)
        return case.replace(**{f: "none" for f in drop}, **hints)
    if isinstance(case, AttentionCase):
        changes: dict[str, Any] = {}
        if "attn_mask" not in taken:
            changes |= {"attn_mask": "none", "is_causal": False}
        if "key_padding_mask" not in taken and "attn_mask" not in taken:
            changes["key_padding_mask"] = "none"
        return case.replace(**changes)
    return case


def width_of(case: Any) -> int:
    """The model width: d_model, or an attention case's embed_dim (0 for a norm case)."""
    config = config_of(case)
    return config.d_model if config is not None else int(getattr(case, "embed_dim", 0))


def heads_of(case: Any) -> int:
    config = config_of(case)
    return config.nhead if config is not None else int(getattr(case, "num_heads", 1))


def sizes_of(case: Any) -> dict[str, Any]:
    """The case's sizes in canonical names (what reference/inference/sizes.py reads from a model)."""
    config = config_of(case)
    if config is not None:
        return {k: getattr(config, k) for k in ("d_model", "nhead", "dim_feedforward", "num_encoder_layers",
                                                "num_decoder_layers")}
    if isinstance(case, AttentionCase):
        return {"d_model": case.embed_dim, "nhead": case.num_heads}
    return {"normalized_shape": case.normalized_shape}
