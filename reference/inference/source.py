"""What a constructor's source says about its parameters: which are read as config objects (``cfg.n_embd``,
``cfg["emb_dim"]``), which config fields are read with a default (``getattr(cfg, "bias", True)``), and where a
``**kwargs`` parameter goes (``self.attn = Attention(d_model, **kwargs)``: the callee's parameters are the
constructor's too).

Read with ``ast`` from ``inspect.getsource`` (once per class: the answers are cached, not to be changed);
code whose source cannot be read (built in a notebook cell by ``exec``, a C extension) says nothing, and
construction goes on from the signature alone.
"""

from __future__ import annotations

import ast
import builtins
import inspect
import sys
import textwrap
import types
import typing
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from torch import nn

Names = dict[str, tuple[Any, Any, bool]]  # name -> (annotation, default, required)


def resolved(annotation: Any, scope: dict[str, Any]) -> Any:
    """An annotation as an object: a string one evaluated in ``scope`` (as ``typing.get_type_hints`` does),
    ``X | None`` and ``Optional[X]`` as ``X``; ``inspect.Parameter.empty`` when it cannot be read."""
    if isinstance(annotation, str):
        try:
            annotation = eval(annotation, dict(scope))
        except Exception:
            return inspect.Parameter.empty
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else inspect.Parameter.empty
    return annotation


def scope_of(obj: Any) -> dict[str, Any]:
    """The globals a class's (or a function's) annotations are written in."""
    init = _init(obj)
    module = sys.modules.get(getattr(obj, "__module__", "") or "")
    return dict(getattr(init, "__globals__", None) or (vars(module) if module is not None else {}))


def _tree(func: Any) -> ast.AST | None:
    try:
        return ast.parse(textwrap.dedent(inspect.getsource(func)))
    except (OSError, TypeError, SyntaxError, IndentationError):
        return None


def _init(cls: Any) -> Callable[..., Any] | None:
    init = cls.__init__ if inspect.isclass(cls) else cls
    return init if inspect.isfunction(init) else None


@lru_cache(maxsize=256)
def config_reads(cls: Any) -> dict[str, set[str]]:
    """Per parameter of ``cls``'s constructor: the fields its source reads from it directly, as ``p.name`` or
    ``p["name"]`` (not ``getattr(p, "name", default)``). Empty when the source cannot be read."""
    init = _init(cls)
    tree = _tree(init) if init is not None else None
    if init is None or tree is None:
        return {}
    params = set(inspect.signature(init).parameters)
    reads: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in params \
                and node.value.id != "self":
            reads.setdefault(node.value.id, set()).add(node.attr)
        elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id in params \
                and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
            reads.setdefault(node.value.id, set()).add(node.slice.value)
    for name in params:  # methods of the object (cfg.get, cfg.keys) are not fields
        reads.get(name, set()).difference_update({"get", "keys", "items", "values", "copy", "update", "pop"})
    return {k: v for k, v in reads.items() if v}


@lru_cache(maxsize=64)
def _module_defaulted(module_name: str) -> frozenset[str]:
    module = sys.modules.get(module_name)
    tree = _tree(module) if module is not None else None
    found: set[str] = set()
    for node in ast.walk(tree) if tree is not None else ():
        if not isinstance(node, ast.Call) or len(node.args) < 2 or not isinstance(node.args[1], ast.Constant):
            continue
        is_getattr = isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr") and \
            (len(node.args) == 3 or node.func.id == "hasattr")
        is_get = isinstance(node.func, ast.Attribute) and node.func.attr in ("get", "pop", "setdefault") \
            and len(node.args) == 2 and isinstance(node.args[0], ast.Constant)
        if is_getattr and isinstance(node.args[1].value, str):
            found.add(node.args[1].value)
        elif is_get and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            found.add(node.args[0].value)
    return frozenset(found)


def defaulted_fields(cls: Any) -> frozenset[str]:
    """Config fields the target's module reads with a default (``getattr(cfg, "x", d)``, ``cfg.get("x", d)``):
    the config must not answer them by role, so the code's own default applies."""
    module = getattr(cls, "__module__", None)
    return _module_defaulted(module) if isinstance(module, str) else frozenset()


def _resolve(func: ast.expr, scope: dict[str, Any], cls: Any) -> Any:
    """The object a call's function expression names (``Attention``, ``nn.Linear``, ``super().__init__``)."""
    if isinstance(func, ast.Attribute) and func.attr == "__init__" and isinstance(func.value, ast.Call) \
            and isinstance(func.value.func, ast.Name) and func.value.func.id == "super" and inspect.isclass(cls):
        parents = [c for c in cls.__mro__[1:] if "__init__" in vars(c)]
        return parents[0] if parents and parents[0] not in (nn.Module, object) else None
    parts: list[str] = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if not isinstance(func, ast.Name):
        return None
    value = scope.get(func.id, getattr(builtins, func.id, None))
    for part in reversed(parts):
        value = getattr(value, part, None)
    return value if callable(value) else None


@lru_cache(maxsize=256)
def passed_down(cls: Any, depth: int = 0) -> Names:
    """The parameters a constructor's ``**kwargs`` reaches: those of every callee it is passed to, less the ones
    the call gives itself (by position or keyword); only names every such callee accepts."""
    init = _init(cls)
    tree = _tree(init) if init is not None else None
    if init is None or tree is None or depth > 3:
        return {}
    varkw = next((p.name for p in inspect.signature(init).parameters.values() if p.kind is p.VAR_KEYWORD), None)
    if varkw is None:
        return {}
    scope = dict(getattr(init, "__globals__", {}))
    found: Names = {}
    accepted: set[str] | None = None  # names every callee takes (None: any)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not any(k.arg is None and isinstance(k.value, ast.Name)
                                                     and k.value.id == varkw for k in node.keywords):
            continue
        callee = _resolve(node.func, scope, cls)
        try:
            params = list(inspect.signature(callee).parameters.values()) if callee is not None else []
        except (TypeError, ValueError):
            params = []
        if not params:
            continue
        given = {k.arg for k in node.keywords if k.arg is not None}
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)][:len(node.args)]
        where = scope_of(callee)
        names: Names = {p.name: (resolved(p.annotation, where), p.default, p.default is p.empty) for p in params
                        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in given
                        and p not in positional}
        if any(p.kind is p.VAR_KEYWORD for p in params):
            names = {**passed_down(callee, depth + 1), **names}
        else:
            accepted = set(names) if accepted is None else accepted & set(names)
        for name, info in names.items():
            found.setdefault(name, info)
    return {k: v for k, v in found.items() if accepted is None or k in accepted}
