"""The families' changes: one option or one mask kind changed from a base case, per kind of level case.

Each ``Variation`` changes a base case and says whether a case (as the target is checked on it, after
``compare.prepare`` adapted it) still shows what it changes: an option the target's code fixes is not varied.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from reference.builtin.config import Config
from reference.cases.kinds import AttentionCase, LayerNormCase
from reference.catalogue._base import KPM_FIELDS, MASK_FIELDS
from reference.diagnose.runs import as_case

LEVEL_MASKS = {  # the Case fields each level draws masks for
    "transformer": (*MASK_FIELDS, *KPM_FIELDS), "encoder_layer": ("src_mask", "src_key_padding_mask"),
    "encoder": ("src_mask", "src_key_padding_mask"),
    "decoder_layer": ("tgt_mask", "memory_mask", "tgt_key_padding_mask", "memory_key_padding_mask"),
    "decoder": ("tgt_mask", "memory_mask", "tgt_key_padding_mask", "memory_key_padding_mask"),
}



@dataclass(frozen=True)
class Variation:
    """One family: how it changes the base case, and whether a (target-adapted) case still shows it."""

    name: str
    group: str
    change: Callable[[Any], Any]
    shows: Callable[[Any], bool] = lambda case: True


def _config(case: Any) -> Config:
    return as_case(case).config


def _set_config(case: Any, **changes: Any) -> Any:
    return case.replace(config=replace(case.config, **changes))


def _set(case: Any, **fields: Any) -> Any:
    return case.replace(**fields)


def _toggle(option: str, base: Any, values: tuple[Any, Any]) -> Variation:
    now = getattr(_config(base), option)
    new = values[1] if now == values[0] else values[0]
    return Variation(f"{option}={new}", "configuration", lambda c: _set_config(c, **{option: new}),
                     lambda c: getattr(_config(c), option) == new)


def _mask_family(name: str, level: str, fields: dict[str, Any]) -> Variation | None:
    allowed = LEVEL_MASKS.get(level, ())
    kept = {k: v for k, v in fields.items() if k.removesuffix("_is_causal") + "_mask" in allowed or k in allowed}
    if not any(k in allowed for k in kept):
        return None
    return Variation(name, "masks", lambda c: _set(c, **kept),
                     lambda c: any(getattr(as_case(c), k) not in ("none", None) for k in kept if k in allowed))


def _model_variations(level: str, base: Any) -> list[Variation]:
    out = [_toggle("norm_first", base, (False, True)), _toggle("activation", base, ("relu", "gelu")),
           _toggle("batch_first", base, (False, True)), _toggle("bias", base, (True, False))]
    if level == "feed_forward":
        out = [v for v in out if v.name.split("=")[0] in ("activation", "bias")]
    out.append(Variation("dropout=0.1 in eval", "configuration", lambda c: _set_config(c, dropout=0.1),
                         lambda c: _config(c).dropout > 0))
    if level != "feed_forward":
        out.append(Variation("layer_norm_eps=0.01", "configuration", lambda c: _set_config(c, layer_norm_eps=0.01),
                             lambda c: _config(c).layer_norm_eps == 0.01))
    if "final_norm" in base.options():  # a stack: with or without its final norm
        new = not base.final_norm
        out.append(Variation(f"final norm {'on' if new else 'off'}", "configuration",
                             lambda c: c.replace(final_norm=new), lambda c: c.final_norm == new))
    out.append(Variation("unbatched input", "configuration", lambda c: _set(c, batch=None),
                         lambda c: as_case(c).batch is None))
    causal: dict[str, Any] = {"src_mask": "causal_bool", "tgt_mask": "causal_float", "tgt_is_causal": True}
    if level in ("encoder", "encoder_layer"):  # no decoder to carry the hint: the encoder's mask has it
        causal["src_is_causal"] = True
    masks: list[tuple[str, dict[str, Any]]] = [
        ("causal masks + is_causal hints", causal),
        ("bool attention masks", dict.fromkeys(MASK_FIELDS, "random_bool")),
        ("-inf float attention masks", dict.fromkeys(MASK_FIELDS, "random_inf")),
        ("additive float attention masks", dict.fromkeys(MASK_FIELDS, "additive")),
        ("per-head (N*nhead, L, S) masks", {"src_mask": "per_head_bool", "tgt_mask": "per_head_additive",
                                            "memory_mask": "per_head_bool"}),
        ("bool key padding masks", dict.fromkeys(KPM_FIELDS, "bool")),
        ("-inf float key padding masks", dict.fromkeys(KPM_FIELDS, "float_inf")),
        ("finite float key padding masks", dict.fromkeys(KPM_FIELDS, "float_finite")),
    ]
    return out + [v for name, f in masks if (v := _mask_family(name, level, f)) is not None]


def _attention_variations(base: AttentionCase) -> list[Variation]:
    def varied(c: AttentionCase, fields: dict[str, Any]) -> bool:  # the lengths follow the family's 2nd case
        return all(getattr(c, k) == v for k, v in fields.items() if k not in ("query_len", "key_len"))

    def flag(name: str, **fields: Any) -> Variation:
        return Variation(name, "configuration", lambda c: c.replace(**fields), lambda c: varied(c, fields))

    def mask(name: str, **fields: Any) -> Variation:
        return Variation(name, "masks", lambda c: c.replace(**fields), lambda c: varied(c, fields))

    return [
        flag(f"batch_first={not base.batch_first}", batch_first=not base.batch_first),
        flag(f"bias={not base.bias}", bias=not base.bias),
        flag("self-attention (query = key = value)" if not base.self_attention else "cross-attention",
             self_attention=not base.self_attention, key_len=base.query_len if not base.self_attention else 4),
        flag("kdim=5, vdim=3", kdim=5, vdim=3, self_attention=False,
             key_is_value=False, key_len=base.key_len if not base.self_attention else base.query_len + 1),
        flag("per-head weights (average_attn_weights=False)", average_attn_weights=False),
        flag("dropout=0.1 in eval", dropout=0.1), flag("unbatched input", batch=None),
        mask("causal masks + is_causal hints", attn_mask="causal_bool", is_causal=True, self_attention=True,
             key_len=base.query_len),
        mask("bool attention masks", attn_mask="random_bool"),
        mask("-inf float attention masks", attn_mask="random_inf"),
        mask("additive float attention masks", attn_mask="additive"),
        mask("per-head (N*num_heads, L, S) masks", attn_mask="per_head_bool"),
        mask("bool key padding masks", key_padding_mask="bool"),
        mask("-inf float key padding masks", key_padding_mask="float_inf"),
        mask("finite float key padding masks", key_padding_mask="float_finite"),
    ]


def _layer_norm_variations(base: LayerNormCase) -> list[Variation]:
    def flag(name: str, **fields: Any) -> Variation:
        return Variation(name, "configuration", lambda c: c.replace(**fields),
                         lambda c: all(getattr(c, k) == v for k, v in fields.items()))

    return [flag("eps=0.01", eps=0.01), flag(f"bias={not base.bias}", bias=not base.bias),
            flag("elementwise_affine=False", elementwise_affine=False), flag("large mean (offset 100)", offset=100.0),
            flag("3-D input", lead_shape=(2, 3))]


_BY_KIND: dict[type, Callable[[Any], list[Variation]]] = {
    AttentionCase: _attention_variations, LayerNormCase: _layer_norm_variations,
}


def variations(level: str, base: Any) -> list[Variation]:
    """The families of ``base``'s kind of case; a whole-model or stack case's depend on the level."""
    by_kind = _BY_KIND.get(type(base))
    return by_kind(base) if by_kind else _model_variations(level, base)
