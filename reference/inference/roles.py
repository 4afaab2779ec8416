"""What a constructor's parameter (or a config's field) stands for: one of the level's options by name, or a
role (a size, a rate, an eps, a flag, a length, an index) by its annotation, its default and its name.

A level's configuration is written with torch's keyword names (``d_model``, ``nhead``, ``dim_feedforward``, ...).
``options_for`` maps them onto a user's names through the usual spellings; what no spelling names gets a
*trial value* by its role (``trial_value``): a rate 0.0, an eps 1e-5, a flag False, a length longer than any
drawn sequence, a size one of the level's sizes not yet given; each the same whatever the drawn case. A module
built from trial sizes is measured afterwards (reference/inference/sizes.py), so the check runs at the sizes it
really has, and discovery finds what the other trial values make it (its eps, its activation).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class ConstructionError(TypeError):
    """The target cannot be constructed from the level's configuration (a required parameter has no value)."""


# canonical (torch) option -> the names a constructor may give it, most specific first
ALIASES: dict[str, tuple[str, ...]] = {
    "d_model": ("d_model", "embed_dim", "n_embd", "hidden_size", "dim", "d", "d_embed", "emb_dim", "embedding_dim",
                "model_dim", "n_embed", "width", "features", "size", "emb", "ndim", "embed_size", "d_hidden_model"),
    "nhead": ("nhead", "num_heads", "n_head", "n_heads", "heads", "h", "num_attention_heads", "nheads"),
    "dim_feedforward": ("dim_feedforward", "d_ff", "ff_dim", "d_hidden", "hidden_dim", "d_ffn", "ffn_dim",
                        "d_inner", "intermediate_size", "mlp_dim", "ff_hidden"),
    "dropout": ("dropout", "p_drop", "drop", "dropout_p", "dropout_rate", "drop_prob", "p", "pdrop", "attn_pdrop",
                "resid_pdrop", "attn_dropout", "resid_dropout", "hidden_dropout_prob", "attention_probs_dropout_prob"),
    "layer_norm_eps": ("layer_norm_eps", "eps", "ln_eps", "norm_eps", "layer_norm_epsilon", "epsilon"),
    "num_layers": ("num_layers", "n_layer", "n_layers", "N", "depth", "num_blocks", "n_blocks", "layers"),
    "num_encoder_layers": ("num_encoder_layers", "n_enc_layers", "num_enc_layers", "enc_layers", "n_encoder_layers",
                           "encoder_layers"),
    "num_decoder_layers": ("num_decoder_layers", "n_dec_layers", "num_dec_layers", "dec_layers", "n_decoder_layers",
                           "decoder_layers"),
    "bias": ("bias", "use_bias", "biases"),
    "batch_first": ("batch_first",),
    "norm_first": ("norm_first", "pre_norm", "prenorm", "pre_ln"),
    "activation": ("activation", "act", "activation_fn", "act_fn"),
    "elementwise_affine": ("elementwise_affine", "affine"),
    "kdim": ("kdim",),
    "vdim": ("vdim",),
    "add_bias_kv": ("add_bias_kv",),
    "add_zero_attn": ("add_zero_attn",),
}
# options every parameter of that name takes (a layer's several dropouts), not only the first one found
EVERY = ("dropout",)
# options that mean the whole level's behaviour (torch's bias=False drops every bias): a parameter that reaches
# one sub-module through **kwargs is not given them; left at its default, discovery measures what it does
WHOLE_LEVEL = ("bias", "norm_first", "activation", "layer_norm_eps", "elementwise_affine")
# a level's option names that are spellings of a canonical one
CANONICAL = {"embed_dim": "d_model", "num_heads": "nhead", "eps": "layer_norm_eps"}
# a one-stack level's layer count, in nn.Transformer's configuration
STACK_LAYERS = {"encoder": "num_encoder_layers", "decoder_only": "num_encoder_layers", "decoder": "num_decoder_layers"}
# the sizes a trial value may stand for, in the order constructors usually list them, and the trial values:
# the same whatever the case (the module so built has fixed sizes, read from it and checked at them, as an
# instance's are: a size that followed the drawn case would change under the harness's feet)
TRIAL_SIZES = {"d_model": 16, "nhead": 2, "dim_feedforward": 32, "num_layers": 2, "num_encoder_layers": 2,
               "num_decoder_layers": 2}
SIZES = tuple(TRIAL_SIZES)
HEADLESS = ("feed_forward", "layer_norm")  # levels whose code has no heads (the built-in's count is its own)
WIDTHS = ("d_model", "dim_feedforward")  # what a size no name says stands for, in order
COUNTS = ("nhead", "num_layers", "num_encoder_layers", "num_decoder_layers")  # what an unknown count stands for
MAX_LENGTH = 64  # a sequence-length limit (a causal buffer, a position table): above every drawn length
TRIAL_EPS = 1e-5
# words in a name that say its role when no spelling names it
ROLE_WORDS: dict[str, tuple[str, ...]] = {
    "eps": ("eps", "epsilon"),
    "rate": ("drop", "dropout", "pdrop", "rate", "prob"),
    "length": ("len", "length", "ctx", "context", "block", "positions", "position", "seq", "window", "max", "n_ctx"),
    "index": ("idx", "index", "id"),
    "device": ("device",),
    "ratio": ("expansion", "mult", "ratio", "factor", "multiplier"),
    "flag": ("use", "is", "has", "with", "enable", "bias", "causal", "flag"),
    "activation": ("act", "activation", "nonlinearity"),
}


def canonical_options(options: Mapping[str, Any], level: str) -> dict[str, Any]:
    """The level's options under canonical names (embed_dim -> d_model, ...), normalized_shape as d_model, and
    a one-stack level's layer count (num_encoder_layers for encoder and decoder_only) as num_layers."""
    out: dict[str, Any] = {}
    for key, value in options.items():
        if key == "normalized_shape":
            shape = tuple(value) if isinstance(value, (tuple, list)) else (value,)
            out["normalized_shape"] = shape
            if len(shape) == 1:
                out["d_model"] = shape[0]
            continue
        out[CANONICAL.get(key, key)] = value
    stack = STACK_LAYERS.get(level)
    if stack is not None and "num_layers" not in out and stack in out:  # the one stack's count
        out["num_layers"] = out[stack]
        for key in ("num_encoder_layers", "num_decoder_layers"):
            out.pop(key, None)
    if level in ("encoder_layer", "decoder_layer", "feed_forward"):  # one layer: no layer counts
        for key in ("num_encoder_layers", "num_decoder_layers", "num_layers"):
            out.pop(key, None)
    return out


def aliases(option: str) -> tuple[str, ...]:
    return ALIASES.get(option, (option,))


# words that make a name a count of what the other words name (number_of_heads, num_layers, n_head, head_count)
COUNT_WORDS = ("n", "num", "number", "count", "nb", "no", "of")
# what a count counts, by the singular of the word: the level's count options
COUNTED = {"head": "nhead", "layer": "num_layers", "block": "num_layers"}
# a per-head width: a word for a head with a width word (head_dim, d_head), or d_ followed by q/k/v's name
HEAD_WIDTH = (("head",), ("dim", "size", "d", "width"))
PER_HEAD = ("k", "q", "v", "key", "keys", "query", "queries", "value", "values")


def option_of(name: str) -> str | None:
    """The canonical option a name spells, or None: by the usual spellings, else word by word, a count of
    heads or layers (``number_of_heads``, ``n_layer``, ``encoder_layer_count``)."""
    low = name.lower()
    found = next((o for o, al in ALIASES.items() if name in al or low in (a.lower() for a in al)), None)
    return found if found is not None else _counted(name)


def _singular(word: str) -> str:
    return word[:-1] if word.endswith("s") and len(word) > 3 else word


def _counted(name: str) -> str | None:
    words = [_singular(w) for w in _words(name)]
    if not any(w in COUNT_WORDS for w in words):
        return None
    things = [COUNTED[w] for w in words if w in COUNTED]
    if things == ["num_layers"]:
        side = {"encoder", "enc", "decoder", "dec"} & set(words)
        if side:
            return "num_encoder_layers" if side & {"encoder", "enc"} else "num_decoder_layers"
    return things[0] if len(things) == 1 else None


def is_count(name: str) -> bool:
    """A name that says it counts something (``n_attn``, ``num_experts``), whatever it counts."""
    return any(w in COUNT_WORDS for w in _words(name)) and not any(w in ("dim", "size", "width") for w in
                                                                     _words(name))


def per_head(name: str) -> bool:
    """A per-head width: ``head_dim``, ``dim_head``, ``d_head``, ``head_size``, ``d_k``, ``d_v``, ``d_queries``."""
    words = [w for w in re.split(r"[_\W]+", name.lower()) if w]
    if len(words) == 2 and words[0] == "d" and words[1] in PER_HEAD:
        return True
    return any(_singular(w) in HEAD_WIDTH[0] for w in words) and any(w in HEAD_WIDTH[1] for w in words)


def _words(name: str) -> list[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)
    return [w.lower() for w in re.split(r"[_\W\d]+", spaced) if w]


def role_of(name: str, annotation: Any = inspect.Parameter.empty, default: Any = inspect.Parameter.empty) -> str:
    """A parameter's role: "eps", "rate", "length", "index", "flag", "activation", "device", "ratio", "count",
    "head_size", "size", "text" or "object"."""
    given = default is not inspect.Parameter.empty and default is not None
    typed = annotation not in (inspect.Parameter.empty, object, Any, None)
    kind = (annotation if isinstance(annotation, type) else object) if typed else type(default) if given else None
    words = _words(name)
    said = next((role for role, ws in ROLE_WORDS.items() if any(w in ws for w in words)), None)
    if said == "device" and kind is not bool:
        return "device"
    if kind is bool:
        return "flag"
    if kind in (int, None) and (per_head(name) or is_count(name)):
        return "head_size" if per_head(name) else "count"
    if said == "ratio" and kind in (int, float, None):
        return "ratio"
    if kind is float:
        return "eps" if said == "eps" else "rate"
    if kind is str:
        return "activation" if said == "activation" else "text"
    if kind is int:
        return said if said in ("length", "index") else "size"
    if kind is None:
        return said or "size"
    return "object"


@dataclass
class Filled:
    """Values for a constructor's (or a config's) names: by option, by role, and what no role could give."""

    values: dict[str, Any]
    taken: dict[str, str]  # option -> the name that took it
    trials: dict[str, Any]  # name -> the trial value given by its role
    missing: list[str]


def options_for(names: Mapping[str, tuple[Any, Any, bool]], options: Mapping[str, Any], level: str,
                flags: frozenset[str] = frozenset(), given: frozenset[str] = frozenset()) -> Filled:
    """Values for ``names`` ({name: (annotation, default, required)}) from the level's canonical ``options``;
    required names no option spells get trial values by role (``missing`` when none fits); ``flags``: names the
    constructor's source uses as flags; ``given``: options already taken another way (by a sub-module built
    for it), which no trial value stands for."""
    wanted = dict(options)
    if level == "transformer" and "num_layers" not in wanted:  # one layer count for both stacks, when equal
        counts = {wanted.get("num_encoder_layers"), wanted.get("num_decoder_layers")} - {None}
        if len(counts) == 1:
            wanted["num_layers"] = counts.pop()
    values, taken = _by_name(names, wanted)
    if "num_layers" in taken and level == "transformer":  # both counts went through the one layer count
        for k in ("num_encoder_layers", "num_decoder_layers"):
            taken.setdefault(k, taken["num_layers"])
        del taken["num_layers"]
    headless = {k: v for k, v in wanted.items() if k != "nhead"} if level in HEADLESS else wanted
    trials, missing = _by_role(names, values, taken, headless, flags, given)
    return Filled(values, taken, trials, missing)


def _by_name(names: Mapping[str, tuple[Any, Any, bool]], wanted: Mapping[str, Any]) -> tuple[dict[str, Any],
                                                                                              dict[str, str]]:
    """(values, taken): each option given to the parameters that spell it (case aside)."""
    values: dict[str, Any] = {}
    taken: dict[str, str] = {}
    lower = {n.lower(): n for n in names}
    for option, value in wanted.items():
        for alias in aliases(option):
            name = alias if alias in names else lower.get(alias.lower())
            if name is None or name in values:
                continue
            values[name] = value[0] if option == "normalized_shape" and name != option and len(value) == 1 else value
            taken.setdefault(option, name)
            if option not in EVERY:
                break
    for name in names:  # word by word: number_of_heads, n_layer, encoder_layer_count
        counted = _counted(name)
        if name not in values and counted is not None and counted in wanted and counted not in taken:
            values[name], taken[counted] = wanted[counted], name
    return values, taken


def _by_role(names: Mapping[str, tuple[Any, Any, bool]], values: dict[str, Any], taken: dict[str, str],
             wanted: Mapping[str, Any], flags: frozenset[str] = frozenset(),
             given: frozenset[str] = frozenset()) -> tuple[dict[str, Any], list[str]]:
    """(trials, missing): required parameters no option spells, given a value by their role (into ``values``);
    ``flags``: names the source uses as flags (tested for truth)."""
    trials: dict[str, Any] = {}
    missing: list[str] = []
    pools = {"size": [s for s in WIDTHS if s in wanted and s not in taken and s not in given],
             "count": [s for s in COUNTS if s in wanted and s not in taken and s not in given]}
    for name, (annotation, default, required) in names.items():
        if not required or name in values:
            continue
        role = "flag" if name in flags else role_of(name, annotation, default)
        if role == "rate" and "dropout" in wanted:  # a rate no spelling names: the level's dropout
            values[name] = wanted["dropout"]
            taken.setdefault("dropout", name)
            continue
        pool = pools["size"] if role == "count" and not pools["count"] else pools.get(role, [])  # n_state: a width
        option = pool[0] if pool else None
        trial = trial_value(role, pool, wanted)
        if trial is inspect.Parameter.empty:
            missing.append(name)
        else:
            values[name] = trials[name] = trial
            if role == "count" and option == "nhead":  # built with the drawn count of heads, which no shape shows:
                taken.setdefault(option, name)  # not measured once per width (they follow the drawn count)
    return trials, missing


def trial_value(role: str, sizes: list[str], wanted: Mapping[str, Any] | None = None) -> Any:
    """A plausible value for a role (``sizes``: the level's widths or counts no name took yet, consumed in order,
    each the drawn value, ``wanted``, where the level has one, so the built-in can be built at what is read back;
    a width once they are spent gets the model width, a count 1);
    ``inspect.Parameter.empty`` when the role has none. What the value stands for is measured afterwards: the
    sizes read from the built module, the configuration (eps, activation, flags) found by discovery."""
    drawn = {**TRIAL_SIZES, **{k: v for k, v in (wanted or {}).items() if k in TRIAL_SIZES}}
    constants = {"rate": 0.0, "eps": TRIAL_EPS, "flag": False, "length": MAX_LENGTH, "index": 0, "activation": "relu",
                 "device": str((wanted or {}).get("device", "cpu"))}
    if role in constants:
        return constants[role]
    if role in ("size", "count"):  # a width beyond the level's own ones: the model width, where most widths return
        return drawn[sizes.pop(0)] if sizes else drawn["d_model"] if role == "size" else 1
    if role == "head_size":
        return max(drawn["d_model"] // max(drawn["nhead"], 1), 1)
    if role == "ratio":
        return drawn["dim_feedforward"] // drawn["d_model"] if drawn["dim_feedforward"] % drawn["d_model"] == 0 else 4
    return inspect.Parameter.empty


def role_for_field(name: str) -> str | None:
    """The role a config field read by name only (no annotation, no default) has, when its name says it: a rate,
    an eps, a length, a flag or an activation's name; None for sizes and anything else (a value not to be
    guessed from a name alone)."""
    role = role_of(name, inspect.Parameter.empty, inspect.Parameter.empty)
    return role if role in ("rate", "eps", "length", "flag", "activation") else None
