"""Config objects for a constructor that takes one: an instance of the user's own class, or a namespace.

- A parameter annotated with a config class (a dataclass, a plain class whose fields have defaults, a class of
  class attributes) gets an instance of that class with only what the level decides set, through the class's
  own names; required fields no option names get trial values by role (reference/inference/roles.py).
- An untyped one (``def __init__(self, config)``) gets an instance of the class in the target's code whose
  fields include every field the constructor reads from it (found from its source, or by measurement: the
  field it asked for first), else an ``AliasNamespace``, which answers the level's options by any usual name,
  by attribute (``cfg.n_embd``) or by key (``cfg["emb_dim"]``, ``cfg.get(...)``), and fields whose name says
  their role (a rate, an eps, a length, a flag), except those the code reads with a default of its own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import sys
from collections.abc import Iterator, Mapping
from typing import Any

from torch import Tensor, nn

import reference.inference.source as source
from reference.inference.roles import (
    ConstructionError,
    aliases,
    option_of,
    options_for,
    role_for_field,
    trial_value,
)

PRIMITIVE = (int, float, bool, str, bytes, tuple, list, set, frozenset, type, Tensor)
MAPPINGS = (dict, Mapping)


class FieldNotSetError(AttributeError, KeyError):
    """A config field the level does not set and whose name says no role."""

    def __init__(self, field: str) -> None:
        super().__init__(f"the level's configuration has no {field!r}")
        self.field = field

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class AliasNamespace:
    """A config object for a constructor that takes an untyped ``config``: every usual name of an option reads it.

    ``config.n_embd`` and ``config["emb_dim"]`` answer ``d_model``; ``config.drop_rate`` a rate (the level's
    dropout), ``config.context_length`` a length above every drawn one; a name it does not know raises
    FieldNotSetError (an AttributeError and a KeyError), so ``getattr(config, "bias", True)`` falls back to the code's
    default. The names read are recorded (``_read``: option -> name; ``_trials``: name -> value by role).
    """

    def __init__(self, options: dict[str, Any], defaulted: frozenset[str] = frozenset()) -> None:
        self._options = options
        self._defaulted = defaulted
        self._read: dict[str, str] = {}
        self._trials: dict[str, Any] = {}

    def _answer(self, name: str) -> Any:
        option = option_of(name)
        if option is not None and option in self._options:
            self._read.setdefault(option, name)
            return self._options[option]
        role = role_for_field(name) if name not in self._defaulted else None
        if role == "rate" and "dropout" in self._options:
            self._read.setdefault("dropout", name)
            return self._options["dropout"]
        if role is not None:
            value = self._trials[name] = trial_value(role, [])
            return value
        raise FieldNotSetError(name)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return self._answer(name)

    def __getitem__(self, name: str) -> Any:
        return self._answer(name)

    def get(self, name: str, default: Any = None) -> Any:
        try:
            return self._answer(name)
        except FieldNotSetError:
            return default

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and option_of(name) in self._options

    def keys(self) -> list[str]:
        return list(self._options)

    def __iter__(self) -> Iterator[str]:
        return iter(self._options)


def outside(cls: type) -> bool:
    """A class of the standard library, torch or numpy (a ``Namespace``, a ``dtype``): not the user's own."""
    root = cls.__module__.split(".")[0]
    return root in sys.stdlib_module_names or root in ("builtins", "torch", "numpy")


def config_class(annotation: Any) -> Any:
    """The user's config class an annotation names (a dataclass or a plain class of the user's that is no
    module), ``dict`` for a mapping, else None."""
    if annotation in MAPPINGS or getattr(annotation, "__origin__", None) in MAPPINGS or (
            inspect.isclass(annotation) and issubclass(annotation, Mapping)):
        return dict  # read by key: answered by a namespace that takes keys
    if not inspect.isclass(annotation) or issubclass(annotation, (nn.Module, *PRIMITIVE)) or outside(annotation):
        return None
    return annotation


def _fields(cls: type) -> dict[str, tuple[Any, Any, bool]]:
    """A config class's settable names: its dataclass fields or constructor parameters, and its public
    non-callable class attributes (a class of class attributes is configured by setting them)."""
    scope = source.scope_of(cls)
    if dataclasses.is_dataclass(cls):
        names = {f.name: (source.resolved(f.type, scope), f.default,
                          f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
                 for f in dataclasses.fields(cls) if f.init}
    else:
        try:
            params = inspect.signature(cls).parameters.values()
        except (TypeError, ValueError):
            params = []  # type: ignore[assignment]
        names = {p.name: (source.resolved(p.annotation, scope), p.default, p.default is p.empty) for p in params
                 if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    for name, value in vars(cls).items():
        if not name.startswith("_") and not callable(value) and not isinstance(value, (property, classmethod,
                                                                                       staticmethod)):
            names.setdefault(name, (type(value), value, False))
    return names


def instance_of(cls: type, options: dict[str, Any], level: str) -> tuple[Any, dict[str, str], dict[str, Any]]:
    """(an instance of ``cls`` with what the level decides set, option -> field, field -> trial value).

    Raises ConstructionError naming the required fields no option or role can give."""
    fields = _fields(cls)
    filled = options_for(fields, options, level)
    if filled.missing:
        raise ConstructionError(f"cannot construct a {cls.__qualname__} for level {level!r}: no value for its "
                                f"required field(s) {', '.join(filled.missing)}, which no option of the level names "
                                "and whose role (size, rate, eps, flag, length) their type or name does not say")
    if dataclasses.is_dataclass(cls):
        init = {f.name for f in dataclasses.fields(cls) if f.init}
    else:
        try:
            init = set(inspect.signature(cls).parameters)
        except (TypeError, ValueError):
            init = set()
    obj = cls(**{k: v for k, v in filled.values.items() if k in init})
    for name, value in filled.values.items():
        if name not in init:
            setattr(obj, name, value)
    return obj, filled.taken, filled.trials


def _candidates(target: Any) -> Iterator[type]:
    """Config classes the target's code can see: its module's own classes first, then those it imports from
    code outside the standard library and torch."""
    module = sys.modules.get(getattr(target, "__module__", "") or "")
    if module is None:
        return
    own = getattr(target, "__module__", None)
    found = [v for v in vars(module).values() if config_class(v) not in (None, dict)]
    found.sort(key=lambda c: c.__module__ != own)
    yield from found


def user_config(target: Any, fields: set[str], options: dict[str, Any], level: str) -> tuple[Any, dict[str, str],
                                                                                          dict[str, Any]] | None:
    """An instance of the first config class in ``target``'s code that has every field in ``fields`` (the
    fields its constructor reads), configured for the level; None when no class has them all."""
    for cls in _candidates(target):
        try:
            obj, taken, trials = instance_of(cls, options, level)
        except Exception:  # a class that cannot be built so is not the config
            continue
        if all(hasattr(obj, f) for f in fields):
            return obj, taken, trials
    return None


def read_options(namespace: AliasNamespace) -> tuple[dict[str, str], dict[str, Any]]:
    """(option -> name, name -> trial value) a namespace was asked for."""
    return dict(namespace._read), dict(namespace._trials)


def usual_names(option: str) -> str:
    return "/".join(aliases(option))


@contextlib.contextmanager
def recording(obj: Any) -> Iterator[set[str] | None]:
    """The attribute names read from the user's config object ``obj`` while the block runs (by anyone: the
    constructor and every sub-module it builds); None when its class cannot be swapped for a recording subclass
    (a namespace records itself, a class with slots cannot)."""
    cls = type(obj)
    if isinstance(obj, AliasNamespace) or config_class(cls) in (None, dict) or not hasattr(obj, "__dict__"):
        yield None
        return
    read: set[str] = set()

    def __getattribute__(self: Any, name: str) -> Any:  # noqa: N807
        if not name.startswith("__"):
            read.add(name)
        return cls.__getattribute__(self, name)  # type: ignore[call-arg]  # the class's own lookup

    recorder = type(cls.__name__, (cls,), {"__getattribute__": __getattribute__, "__module__": cls.__module__,
                                           "__qualname__": cls.__qualname__})
    try:
        object.__setattr__(obj, "__class__", recorder)
    except TypeError:
        yield None
        return
    try:
        yield read
    finally:
        object.__setattr__(obj, "__class__", cls)
