"""Construct a user's module from a level's configuration, through its constructor's own signature.

A level's configuration is written with torch's keyword names (``nn.Transformer``'s ``d_model``, ``nhead``,
``dim_feedforward``, ... or ``nn.MultiheadAttention``'s ``embed_dim``, ``num_heads``). ``plan`` reads the
constructor's parameters (kinds, defaults, annotations) and its source: each option goes to the parameter
that spells it (reference/inference/roles.py); defaulted parameters keep their defaults; a config parameter gets an
instance of the user's own config class, or a namespace answering by attribute and by key
(reference/inference/configs.py); a ``**kwargs`` takes the parameters of whatever it is passed to
(reference/inference/source.py); a required parameter no option names gets a trial value by its role, and the
sizes of a module built so are read from it afterwards (reference/inference/sizes.py). ``build`` constructs; what
the constructor does not take is returned as "not taken", so the caller knows what it cannot vary (a nanoGPT
block has no ``norm_first``). Only when nothing constructs is it a ConstructionError, saying which parameters
and how to pass a factory.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from torch import nn

import reference.inference.configs as configs
import reference.inference.hints as hints
import reference.inference.parts as parts
import reference.inference.sizes as fixed_sizes
import reference.inference.source as source
import reference.inference.stacks as stacks
import reference.inference.uses as uses
from reference.inference.configs import AliasNamespace, FieldNotSetError
from reference.inference.declined import DeclinedError, declines, shown_value
from reference.inference.roles import (
    ALIASES,
    MAX_LENGTH,
    SIZES,
    WHOLE_LEVEL,
    ConstructionError,
    aliases,
    canonical_options,
    option_of,
    options_for,
)

__all__ = ["ALIASES", "MAX_LENGTH", "AliasNamespace", "Built", "ConstructionError", "Plan", "build",
           "canonical_options", "plan", "sizes_from_model"]

CONFIG_NAMES = ("config", "cfg", "conf", "args", "hparams", "params", "opt", "opts", "hp")
UNTYPED = (inspect.Parameter.empty, Any, object)


@dataclass(frozen=True, kw_only=True)
class Plan:
    """How a class is constructed: ``kwargs`` for its constructor, and the options it does not take."""

    kind: str  # "class", "config" (a config object among its arguments), "factory" or "instance"
    kwargs: dict[str, Any] = field(default_factory=dict)
    config: Any = None  # the (first) config object passed (kind "config")
    taken: dict[str, str] = field(default_factory=dict)  # option -> the constructor's (or config's) name for it
    not_taken: dict[str, Any] = field(default_factory=dict)  # option -> value the constructor cannot be given
    trials: dict[str, Any] = field(default_factory=dict)  # parameter or field -> trial value given by its role
    positional: tuple[str, ...] = ()  # positional-only parameters, passed in this order
    parts: dict[str, str] = field(default_factory=dict)  # parameter -> the sub-module built for it

    def describe(self) -> str:
        taken = ", ".join(f"{k} as {v}" if k != v else k for k, v in self.taken.items()) or "nothing"
        missing = ", ".join(f"{k}={v!r}" for k, v in self.not_taken.items()) or "nothing"
        trials = ("; trial values by role (sizes are read from the built model): "
                  + ", ".join(f"{k}={v!r}" for k, v in self.trials.items())) if self.trials else ""
        built = ("; sub-modules: " + ", ".join(f"{k}: {v}" for k, v in self.parts.items())) if self.parts else ""
        return f"constructed ({self.kind}) taking {taken}; not taken: {missing}{trials}{built}"


@dataclass
class Built:
    """A constructed module and how: the plan it was built by."""

    model: nn.Module
    plan: Plan

    @property
    def not_taken(self) -> dict[str, Any]:
        return self.plan.not_taken


def _config_kind(param: inspect.Parameter, annotation: Any, reads: Mapping[str, set[str]]) -> Any:
    """What config object a parameter takes: the user's class, "mapping", "untyped", or None (no config)."""
    if option_of(param.name) is not None:
        return None
    cls = configs.config_class(annotation)
    said = param.name.lower() in CONFIG_NAMES or param.name in reads  # a config's name, or read as one
    if cls is dict:
        return "mapping" if said else None
    if cls is not None:
        return cls
    untyped = annotation in UNTYPED or (inspect.isclass(annotation) and configs.outside(annotation)
                                        and annotation not in configs.PRIMITIVE)
    if untyped and said:
        return "untyped"
    return None


def _config_object(cls: Any, kind: Any, fields: set[str], opts: dict[str, Any],
                   level: str) -> tuple[Any, dict[str, str], dict[str, Any]]:
    """(config object, option -> field, field -> trial value) for a config parameter of ``cls``."""
    if inspect.isclass(kind):
        return configs.instance_of(kind, opts, level)
    if kind == "untyped" and fields:  # the user's own class, when one has every field the constructor reads
        found = configs.user_config(cls, fields, opts, level)
        if found is not None:
            return found
    return AliasNamespace(opts, source.defaulted_fields(cls)), {}, {}


def plan(obj: Any, options: Mapping[str, Any], level: str) -> Plan:
    """How ``obj`` (a class, a zero-argument factory or an nn.Module instance) is constructed for ``options``.

    Raises ConstructionError when a required parameter has no value (naming it and the names tried) or
    when ``obj`` is none of the three kinds.
    """
    opts = canonical_options(options, level)
    if not inspect.isclass(obj):
        return _built_already(obj, opts)
    all_params = _parameters(obj)
    params = [p for p in all_params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    given: dict[str, Any] = {}
    through: dict[str, str] = {}
    if stacks.layer_parameter(params, level) is not None:  # Encoder(encoder_layer, num_layers, norm): the layer first
        given, through = stacks.stack_arguments(obj, params, opts, level, build, ConstructionError)
    values, part_taken, shown = _parts(obj, level, set(given), opts)
    given, through = {**given, **values}, {**part_taken, **through}
    scope = source.scope_of(obj)
    reads = source.config_reads(cast(Any, obj))
    names: dict[str, tuple[Any, Any, bool]] = {}
    wanted_configs: dict[str, Any] = {}
    for p in params:
        if p.name in given:
            continue
        annotation = source.resolved(p.annotation, scope)
        kind = _config_kind(p, annotation, reads)
        if kind is None:
            names[p.name] = (annotation, p.default, p.default is p.empty)
        else:
            wanted_configs[p.name] = kind
    if any(p.kind is p.VAR_KEYWORD for p in all_params):  # **kwargs: the parameters of what it is passed to
        for name, info in source.passed_down(cast(Any, obj)).items():
            if option_of(name) not in WHOLE_LEVEL or info[2]:  # one sub-module's bias is not the level's
                names.setdefault(name, info)
    filled = options_for(names, opts, level, uses.flag_parameters(cast(Any, obj)), frozenset(through))
    if filled.missing:
        raise ConstructionError(_missing(obj, filled.missing, names, opts, level))
    values = {**given, **filled.values}
    taken, trials = {**through, **filled.taken}, dict(filled.trials)
    first = None
    for name, kind in wanted_configs.items():
        values[name], config_taken, config_trials = _config_object(obj, kind, reads.get(name, set()), opts, level)
        first = values[name] if first is None else first
        taken = {**config_taken, **taken}
        trials |= config_trials
    positional = tuple(p.name for p in params if p.kind is p.POSITIONAL_ONLY)
    return Plan(kind="config" if wanted_configs else "class", kwargs=values, config=first, taken=taken,
                not_taken=_not_taken(opts, taken), trials=trials,
                positional=positional, parts=shown)


def _parts(obj: Any, level: str, given: set[str], opts: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str],
                                                                             dict[str, str]]:
    """Layer(d_model, self_attn, feed_forward): modules of the user's own classes for the parameters its source
    uses as modules (reference/inference/parts.py); ConstructionError when one has no class to play it."""
    wanted_parts = parts.wanted(obj, level, given)
    if not wanted_parts:
        modules = [p for p in uses.module_parameters(obj) if p not in given and option_of(p) is None]
        if modules:  # a whole model assembled from parts (Seq2Seq(encoder, decoder, ...)): no level builds them
            raise ConstructionError(hints.assembled(_name(obj), level, modules))
        return {}, {}, {}
    values, part_taken, shown = parts.arguments(obj, wanted_parts, opts, level, build)
    unbuilt = {n: p for n, p in wanted_parts.items() if n not in values}
    if unbuilt:
        raise ConstructionError(
            f"cannot construct {_name(obj)} for level {level!r}: its source uses "
            f"{', '.join(f'{n} (as its {p})' for n, p in unbuilt.items())} as a module, and no nn.Module class "
            f"in {obj.__module__} builds from the level's configuration, measures as that part and takes the "
            f"inputs it is called with. Pass a zero-argument factory (functools.partial({_name(obj)}, ...)) or an "
            "instance")
    return values, part_taken, shown


def _built_already(obj: Any, opts: dict[str, Any]) -> Plan:
    """The plan for an nn.Module instance or a zero-argument factory: every option is the object's own."""
    if isinstance(obj, nn.Module):
        return Plan(kind="instance", not_taken=dict(opts))
    if not callable(obj):
        raise ConstructionError(f"the target must be a class, a zero-argument factory or an nn.Module, "
                                f"got a {type(obj).__name__}")
    needed = [p.name for p in _parameters(obj) if p.default is inspect.Parameter.empty
              and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if needed:
        raise ConstructionError(f"a factory target is called with no arguments, but {_name(obj)} requires "
                                f"{', '.join(needed)}; pass the class itself or a functools.partial")
    return Plan(kind="factory", not_taken=dict(opts))


def _missing(obj: Any, missing: list[str], names: Mapping[str, tuple[Any, Any, bool]], opts: dict[str, Any],
             level: str) -> str:
    def shown(name: str) -> str:
        annotation = names[name][0]
        return name + (f": {getattr(annotation, '__name__', annotation)}" if annotation not in UNTYPED else "")

    known = ", ".join(f"{o}: {'/'.join(aliases(o))}" for o in opts if o in ALIASES)
    return (f"cannot construct {_name(obj)} for level {level!r}: no value for required parameter(s) "
            f"{', '.join(shown(n) for n in missing)}. The level sets {', '.join(sorted(opts))}, each looked up "
            f"under its usual names ({known}); a parameter none of them names gets a trial value by its role "
            "(an int a size, a float a rate or an eps, a bool a flag, a length or index by its name), which these do "
            f"not have. Give them defaults, or pass a zero-argument factory (functools.partial({_name(obj)}, ...)) "
            "or an instance")


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
    constructor's parameters (see ``plan``). An untyped config that asks for a field the level does not set is
    replaced, once per such field, by an instance of the class in the user's code that has it. Raises
    ConstructionError (see ``plan``; a constructor that fails on trial values), TypeError when the result is not
    an nn.Module; the constructor's own errors (including NotImplementedError, a declined configuration) propagate.
    """
    how = plan(obj, options, level)
    if how.kind == "instance":
        model = obj
    elif how.kind == "factory":
        model = obj()
    else:
        model, how = _construct(obj, how, canonical_options(options, level), level)
    if not isinstance(model, nn.Module):
        raise TypeError(f"{_name(obj)} built a {type(model).__name__}, but should build an nn.Module")
    return Built(model, how)


def _construct(cls: Any, how: Plan, opts: dict[str, Any], level: str, tries: int = 3) -> tuple[Any, Plan]:
    args = [how.kwargs[n] for n in how.positional]
    kwargs = {k: v for k, v in how.kwargs.items() if k not in how.positional}
    try:
        with configs.recording(how.config) as read:
            model = cls(*args, **kwargs)
    except FieldNotSetError as exc:  # measured: the field it asked for; the user's class that has it, if any
        spaces = {n: v for n, v in how.kwargs.items() if isinstance(v, AliasNamespace)}
        for name, space in spaces.items():
            fields = {*space._read.values(), *space._trials, exc.field}
            found = configs.user_config(cls, fields, opts, level) if tries else None
            if found is not None:
                taken = {**found[1], **{o: n for o, n in how.taken.items() if o not in space._read}}
                retry = dataclasses.replace(how, kwargs={**how.kwargs, name: found[0]}, taken=taken,
                                            trials={**how.trials, **found[2]},
                                            config=found[0] if how.config is space else how.config)
                return _construct(cls, retry, opts, level, tries - 1)
        raise ConstructionError(
            f"cannot construct {_name(cls)} for level {level!r}: its config reads {exc.field!r}, which the level "
            f"does not set, whose role (rate, eps, length, flag) its name does not say, and which no config class "
            f"in its code has; the level sets {', '.join(sorted(opts))}. Give the field a default in your config "
            f"class, annotate the parameter with that class, or pass a zero-argument factory or an instance") from exc
    except NotImplementedError:
        raise
    except Exception as exc:
        declined = declines(cls, how.kwargs, how.positional, how.taken, opts)
        if declined:
            shown = ", ".join(f"{k}={shown_value(v)} (it constructs with {shown_value(was)})"
                              for k, (v, was) in declined.items())
            raise DeclinedError(f"the constructor of {_name(cls)} declines {shown}: it raised {type(exc).__name__}: "
                                f"{exc}") from exc
        if not how.trials:
            raise
        retried = _reassigned(cls, how, opts, level) if tries else None
        if retried is not None:
            return retried
        raise ConstructionError(
            f"cannot construct {_name(cls)} for level {level!r}: given trial values by role for what the level "
            f"cannot name ({', '.join(f'{k}={v!r}' for k, v in how.trials.items())}, then the level's other sizes "
            f"in their place), it raised "
            f"{type(exc).__name__}: {exc}. Give those parameters defaults, or pass a zero-argument factory "
            f"(functools.partial({_name(cls)}, ...)) or an instance") from exc
    if read is not None:  # a config field counts as taken only when something read it (a Block that never
        # reads n_layer is one layer whatever the config says): what it did not read is measured from the model
        unread = {o for o, n in how.taken.items() if n not in how.kwargs and "." not in n and n not in read
                  and hasattr(how.config, n)}
        taken = {o: n for o, n in how.taken.items() if o not in unread}
        how = dataclasses.replace(how, taken=taken, not_taken=_not_taken(opts, taken))
    used = [v for v in how.kwargs.values() if isinstance(v, AliasNamespace)]
    if used:  # what the constructor read from its namespace is what it took
        asked = {o: n for space in used for o, n in space._read.items()}
        trials = {n: v for space in used for n, v in space._trials.items()}
        taken = {**how.taken, **asked}
        how = dataclasses.replace(how, taken=taken, not_taken=_not_taken(opts, taken), trials={**how.trials, **trials})
    return model, how


def _reassigned(cls: Any, how: Plan, opts: dict[str, Any], level: str) -> tuple[Any, Plan] | None:
    """Built with the level's sizes assigned otherwise to the integer trial parameters (a width read as a count),
    the first assignment that constructs; None when none does."""
    names = [n for n, v in how.trials.items() if type(v) is int and n in how.kwargs][:3]
    pool = sorted({v for k, v in opts.items() if k in SIZES and type(v) is int})
    for combo in itertools.product(pool, repeat=len(names)):
        values = dict(zip(names, combo, strict=True))
        if all(how.kwargs[n] == v for n, v in values.items()):
            continue
        retry = dataclasses.replace(how, kwargs={**how.kwargs, **values}, trials={**how.trials, **values})
        try:
            return _construct(cls, retry, opts, level, 0)
        except Exception:
            continue
    return None


def sizes_from_model(model: nn.Module) -> dict[str, int]:
    """Sizes read from the parameters' shapes: ``d_model`` (the commonest dimension), ``dim_feedforward``
    (a width X with both (X, d_model) and (d_model, X) matrices, not 3 x d_model) and ``num_layers`` (the
    longest ModuleList or Sequential of alike modules, ``None`` holes left out). Only what can be read."""
    if not any(True for _ in model.parameters()):
        return {}
    d_model = fixed_sizes.model_width(model)
    sizes = {"d_model": d_model}
    shapes = {tuple(p.shape) for p in model.parameters() if p.dim() == 2}
    widths = sorted({x for (a, b) in shapes for x in (a, b) if x != d_model
                     and ((x, d_model) in shapes) and ((d_model, x) in shapes) and x != 3 * d_model})
    if widths:
        sizes["dim_feedforward"] = widths[-1]
    stacks = [len(layers) for m in model.modules() if (layers := fixed_sizes.layers_of(m)) is not None]
    if stacks:
        sizes["num_layers"] = max(stacks)
    return sizes
