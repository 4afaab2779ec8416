"""Construct a user's module from a level's configuration, through its constructor's own parameter names.

A level's configuration is written with torch's keyword names (``nn.Transformer``'s ``d_model``, ``nhead``,
``dim_feedforward``, ... or ``nn.MultiheadAttention``'s ``embed_dim``, ``num_heads``). A user's class says
``n_embd``, ``heads``, ``d_ff`` or takes one config dataclass; ``plan`` maps one onto the other through the
usual aliases, ``build`` constructs, and whatever the constructor does not take is returned as "not taken",
so the caller knows what it cannot vary (a nanoGPT block has no ``norm_first``). ``sizes_from_model`` reads
the sizes the constructor fixed itself (a feed-forward width of 4 x d_model) from the built parameters.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

import reference.inference.stacks as stacks

# canonical (torch) option -> the names a constructor may give it, most specific first
# A config's sequence-length limit (minGPT/nanoGPT's block_size, for a tril buffer): set above every drawn length.
LENGTH_LIMITS = ("block_size", "max_len", "max_seq_len", "max_length", "n_positions", "seq_len", "context_length",
                 "max_position_embeddings", "n_ctx", "seq_length")
MAX_LENGTH = 64
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
    "bias": ("bias", "use_bias", "biases", "qkv_bias"),
    "batch_first": ("batch_first",),
    "norm_first": ("norm_first", "pre_norm", "prenorm", "pre_ln"),
    "activation": ("activation", "act", "activation_fn", "act_fn"),
    "elementwise_affine": ("elementwise_affine", "affine"),
    "kdim": ("kdim",),
    "vdim": ("vdim",),
    "add_bias_kv": ("add_bias_kv",),
    "add_zero_attn": ("add_zero_attn",),
}
# a level's option names that are spellings of a canonical one
CANONICAL = {"embed_dim": "d_model", "num_heads": "nhead", "eps": "layer_norm_eps"}
# a one-stack level's layer count, in nn.Transformer's configuration
STACK_LAYERS = {"encoder": "num_encoder_layers", "decoder_only": "num_encoder_layers", "decoder": "num_decoder_layers"}
CONFIG_NAMES = ("config", "cfg", "conf", "args", "hparams", "params", "opt", "opts", "hp")


class ConstructionError(TypeError):
    """The target cannot be constructed from the level's configuration (a required parameter has no value)."""


@dataclass(frozen=True)
class Plan:
    """How a class is constructed: ``args``/``kwargs`` for its constructor, and the options it does not take."""

    kind: str  # "class", "config" (one config object), "factory" or "instance"
    kwargs: dict[str, Any] = field(default_factory=dict)
    config: Any = None  # the config object passed as the only argument (kind "config")
    taken: dict[str, str] = field(default_factory=dict)  # option -> the constructor's (or config's) name for it
    not_taken: dict[str, Any] = field(default_factory=dict)  # option -> value the constructor cannot be given

    def describe(self) -> str:
        taken = ", ".join(f"{k} as {v}" if k != v else k for k, v in self.taken.items()) or "nothing"
        missing = ", ".join(f"{k}={v!r}" for k, v in self.not_taken.items()) or "nothing"
        return f"constructed ({self.kind}) taking {taken}; not taken: {missing}"


@dataclass
class Built:
    """A constructed module and how: the plan it was built by."""

    model: nn.Module
    plan: Plan

    @property
    def not_taken(self) -> dict[str, Any]:
        return self.plan.not_taken


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


def _aliases(option: str) -> tuple[str, ...]:
    return ALIASES.get(option, (option,))


def _fill(names: list[str], required: set[str], options: dict[str, Any], level: str,
          what: str) -> tuple[dict[str, Any], dict[str, str]]:
    """Values for ``names`` (a constructor's or a dataclass's) from ``options``; ConstructionError if a required
    one has none."""
    values: dict[str, Any] = {}
    taken: dict[str, str] = {}
    lower = {n.lower(): n for n in names}
    wanted = dict(options)
    if level == "transformer" and "num_layers" not in wanted:  # one layer count for both stacks, when equal
        counts = {wanted.get("num_encoder_layers"), wanted.get("num_decoder_layers")} - {None}
        if len(counts) == 1:
            wanted["num_layers"] = counts.pop()
    for option, value in wanted.items():
        for alias in _aliases(option):
            name = alias if alias in names else lower.get(alias.lower())
            if name is not None and name not in values:
                if option == "normalized_shape" and name != "normalized_shape" and len(value) == 1:
                    value = value[0]
                values[name] = value
                taken[option] = name
                break
    if "num_layers" in taken and level == "transformer":  # both counts went through the one layer count
        for k in ("num_encoder_layers", "num_decoder_layers"):
            taken.setdefault(k, taken["num_layers"])
        del taken["num_layers"]
    missing = sorted(required - set(values))
    if missing:
        hints = []
        for name in missing:
            options_for = [o for o, al in ALIASES.items() if name in al or name.lower() in map(str.lower, al)]
            tried = f" (an alias of {', '.join(options_for)}, which the level does not set)" if options_for else ""
            hints.append(f"{name}{tried}")
        known = ", ".join(f"{o}: {'/'.join(_aliases(o))}" for o in wanted if o in ALIASES)
        raise ConstructionError(
            f"cannot construct {what} for level {level!r}: no value for required parameter(s) "
            f"{', '.join(hints)}. The level sets {', '.join(sorted(wanted))}; the names tried were {known}. "
            "Give those parameters defaults, rename them, or pass a zero-argument factory or an instance")
    return values, taken


def _config_class(param: inspect.Parameter, cls: Any) -> Any:
    """The dataclass a single constructor parameter is annotated with, or None."""
    annotation = param.annotation
    if isinstance(annotation, str):
        try:
            annotation = typing.get_type_hints(cls.__init__).get(param.name, annotation)
        except Exception:
            module = inspect.getmodule(cls)
            annotation = getattr(module, annotation, annotation)
    return annotation if dataclasses.is_dataclass(annotation) and isinstance(annotation, type) else None


class AliasNamespace:
    """A config object for a constructor that takes an untyped ``config``: every alias reads its option.

    ``config.n_embd`` answers ``d_model``; a name it does not know raises AttributeError, so
    ``getattr(config, "bias", True)`` falls back to the class's default. The names read are recorded.
    """

    def __init__(self, options: dict[str, Any]) -> None:
        self._options = options
        self._read: dict[str, str] = {}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        for option, value in self._options.items():
            if name in _aliases(option) or name.lower() in (a.lower() for a in _aliases(option)):
                self._read[option] = name
                return value
        if name.lower() in LENGTH_LIMITS:  # a causal-mask buffer or position table: longer than any drawn case
            return MAX_LENGTH
        raise AttributeError(f"the level's configuration has no {name!r}")


def plan(obj: Any, options: Mapping[str, Any], level: str) -> Plan:
    """How ``obj`` (a class, a zero-argument factory or an nn.Module instance) is constructed for ``options``.

    Raises ConstructionError when a required parameter has no value (naming it and the aliases tried) or
    when ``obj`` is none of the three kinds.
    """
    opts = canonical_options(options, level)
    if isinstance(obj, nn.Module):
        return Plan("instance", not_taken=dict(opts))
    if not inspect.isclass(obj):
        if not callable(obj):
            raise ConstructionError(f"the target must be a class, a zero-argument factory or an nn.Module, "
                                    f"got a {type(obj).__name__}")
        needed = [p.name for p in _parameters(obj) if p.default is inspect.Parameter.empty
                  and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if needed:
            raise ConstructionError(f"a factory target is called with no arguments, but {_name(obj)} requires "
                                    f"{', '.join(needed)}; pass the class itself or a functools.partial")
        return Plan("factory", not_taken=dict(opts))
    params = [p for p in _parameters(obj) if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    required = {p.name for p in params if p.default is inspect.Parameter.empty}
    if stacks.layer_parameter(params, level) is not None:  # Encoder(encoder_layer, num_layers, norm): the layer first
        given, through = stacks.stack_arguments(obj, params, opts, level, build, ConstructionError)
        values, taken = _fill([p.name for p in params if p.name not in given], required - set(given), opts, level,
                              _name(obj))
        taken = {**through, **taken}
        return Plan("class", kwargs={**given, **values}, taken=taken, not_taken=_not_taken(opts, taken))
    if len(params) >= 1 and len(required) <= 1:  # one config object as the only (required) argument?
        first = params[0]
        config_cls = _config_class(first, obj)
        if config_cls is not None or (first.name.lower() in CONFIG_NAMES and required <= {first.name}
                                      and not any(first.name in al for al in ALIASES.values())):
            return _config_plan(config_cls, opts, level, _name(obj))
    values, taken = _fill([p.name for p in params], required, opts, level, _name(obj))
    return Plan("class", kwargs=values, taken=taken, not_taken=_not_taken(opts, taken))


def _config_plan(config_cls: Any, opts: dict[str, Any], level: str, what: str) -> Plan:
    if config_cls is None:
        return Plan("config", config=AliasNamespace(opts))
    fields = [f for f in dataclasses.fields(config_cls) if f.init]
    required = {f.name for f in fields
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    values, taken = _fill([f.name for f in fields], required, opts, level, f"{what}'s {config_cls.__name__}")
    return Plan("config", config=config_cls(**values), taken=taken, not_taken=_not_taken(opts, taken))


def _not_taken(opts: dict[str, Any], taken: dict[str, str]) -> dict[str, Any]:
    skip = {"normalized_shape"} if "d_model" in taken else {"d_model"} if "normalized_shape" in taken else set()
    if {"num_encoder_layers", "num_decoder_layers"} & set(taken):
        skip.add("num_layers")
    return {k: v for k, v in opts.items() if k not in taken and k not in skip}


def _parameters(obj: Callable[..., Any]) -> list[inspect.Parameter]:
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return []
    return list(signature.parameters.values())


def _name(obj: Any) -> str:
    return getattr(obj, "__qualname__", None) or type(obj).__name__


def build(obj: Any, options: Mapping[str, Any], level: str) -> Built:
    """Construct ``obj`` for the level's ``options``: ``Built(model, plan)`` with ``plan.not_taken``.

    An instance is returned as is (not copied); a factory is called with no arguments; a class gets its
    constructor's parameters (or one config dataclass) filled from the aliases. Raises ConstructionError
    (see ``plan``), TypeError when the result is not an nn.Module; the constructor's own errors (including
    NotImplementedError, a declined configuration) propagate.
    """
    how = plan(obj, options, level)
    if how.kind == "instance":
        model = obj
    elif how.kind == "factory":
        model = obj()
    elif how.kind == "config":
        try:
            model = obj(how.config)
        except AttributeError as exc:
            if "the level's configuration has no" not in str(exc):
                raise
            raise ConstructionError(f"cannot construct {_name(obj)} for level {level!r}: its config reads a field the "
                                    f"level does not set ({exc}); the level sets {', '.join(sorted(options))}. "
                                    "Give the field a default in your config class, or pass a zero-argument "
                                    "factory or an instance") from exc
        if isinstance(how.config, AliasNamespace):
            read = dict(how.config._read)
            opts = canonical_options(options, level)
            how = dataclasses.replace(how, taken=read, not_taken=_not_taken(opts, read))
    else:
        model = obj(**how.kwargs)
    if not isinstance(model, nn.Module):
        raise TypeError(f"{_name(obj)} built a {type(model).__name__}, but should build an nn.Module")
    return Built(model, how)


def sizes_from_model(model: nn.Module) -> dict[str, int]:
    """Sizes read from the parameters' shapes: ``d_model`` (the commonest dimension), ``dim_feedforward``
    (a width X with both (X, d_model) and (d_model, X) matrices, not 3 x d_model) and ``num_layers`` (the
    longest ModuleList or Sequential of alike modules). Only what can be read is returned."""
    dims = Counter(d for p in model.parameters() for d in p.shape)
    if not dims:
        return {}
    d_model = dims.most_common(1)[0][0]
    sizes = {"d_model": d_model}
    shapes = {tuple(p.shape) for p in model.parameters() if p.dim() == 2}
    widths = sorted({x for (a, b) in shapes for x in (a, b) if x != d_model
                     and ((x, d_model) in shapes) and ((d_model, x) in shapes) and x != 3 * d_model})
    if widths:
        sizes["dim_feedforward"] = widths[-1]
    stacks = [len(m) for m in model.modules() if isinstance(m, (nn.ModuleList, nn.Sequential)) and len(m) > 0
              and len({type(c) for c in m}) == 1 and any(True for _ in m[0].parameters())]
    if stacks:
        sizes["num_layers"] = max(stacks)
    return sizes
