"""A constructor that rejects one value of an option it takes (an activation given as a callable, where the class
takes names only) declines that value: measured by building it with the built-in's default value instead."""

from __future__ import annotations

from typing import Any

from reference.builtin.config import Config
from reference.inference.roles import SIZES, canonical_options


class DeclinedError(NotImplementedError):
    """A constructor raised for a value of an option it takes, and constructs with the built-in's default value of
    it: that value is one it does not support (an activation taken by name only), not a failure."""


def declines(cls: Any, kwargs: dict[str, Any], positional: tuple[str, ...], taken: dict[str, str],
             opts: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The option (not a size) the constructor takes whose value it rejects, measured: it constructs with the
    built-in's default value of that option instead, all else the same. {option: (value, default)}, or {}."""
    defaults = canonical_options(Config().kwargs(), "transformer")
    for option, name in taken.items():
        if option in SIZES or option not in defaults or name not in kwargs or _same(opts.get(option),
                                                                                        defaults[option]):
            continue
        kwargs = {**kwargs, name: defaults[option]}
        try:
            cls(*[kwargs[n] for n in positional], **{k: v for k, v in kwargs.items() if k not in positional})
        except Exception:
            continue
        return {option: (opts.get(option), defaults[option])}
    return {}


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:
        return a is b


def shown_value(value: Any) -> str:
    return getattr(value, "__name__", None) or repr(value)
