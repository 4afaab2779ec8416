"""How a constructor's source uses its parameters, beyond config objects (reference/inference/source.py): which
are modules (called, deep-copied, stored as an attribute the class calls or iterates over, in the order the class
uses them) and which are flags (tested for truth, or passed to a parameter whose default is a bool).

Read with ``ast`` from ``inspect.getsource``, once per class; code whose source cannot be read says nothing.
"""

from __future__ import annotations

import ast
import inspect
from functools import lru_cache
from typing import Any

from torch import nn

import reference.inference.source as source


def _self_attr(node: ast.AST) -> str | None:
    """``x`` for ``self.x``, else None."""
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
        return node.attr
    return None


def _assigned_attrs(tree: ast.AST, params: set[str], copied: set[str]) -> dict[str, str]:
    """Parameter -> the attribute it is stored in (``self.a = a``, ``self.a, self.b = a, b``, ``self.a =
    copy.deepcopy(a)``, ``self.layers = clones(a, n)``: a parameter copied by the call)."""
    out: dict[str, str] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Assign):
            continue
        for target in node.targets:
            pairs = zip(target.elts, node.value.elts, strict=False) if isinstance(target, ast.Tuple) and \
                isinstance(node.value, ast.Tuple) else [(target, node.value)]
            for left, right in pairs:
                attr = _self_attr(left)
                names = [right.id] if isinstance(right, ast.Name) and right.id in params else [
                    n.id for n in ast.walk(right) if isinstance(n, ast.Name) and n.id in copied]
                if attr is not None and names:
                    out.setdefault(names[0], attr)
    return out


def _copied(tree: ast.AST, params: set[str], scope: dict[str, Any], depth: int) -> set[str]:
    """Parameters the constructor calls, deep-copies, or hands to a function of the user's that does."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        if isinstance(node.func, ast.Name) and node.func.id in params:
            found.add(node.func.id)  # called: p(...)
        func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        args = [a.id if isinstance(a, ast.Name) else None for a in node.args]
        if func == "deepcopy":
            found |= {a for a in args if a in params}
            continue
        callee = scope.get(func) if isinstance(node.func, ast.Name) else None
        if depth < 2 and inspect.isfunction(callee) and callee.__module__.split(".")[0] not in ("torch", "copy"):
            inner = source._tree(callee)
            names = list(inspect.signature(callee).parameters)
            used = _copied(inner, set(names), dict(callee.__globals__), depth + 1) if inner is not None else set()
            found |= {a for a, n in zip(args, names, strict=False) if a in params and n in used}
    return found


def _class_uses(cls: Any) -> tuple[dict[str, int], set[str]]:
    """(attribute -> where ``self.attr`` is first used outside the constructor, in source order; the attributes
    it calls, iterates over or hands to a sub-module it calls: ``self.attr(...)``, ``self.attr[i](...)``,
    ``for m in self.attr``, ``self.wrap(x, self.attr)``)."""
    first: dict[str, int] = {}
    used: set[str] = set()
    trees = [t for c in getattr(cls, "__mro__", (cls,)) if c.__module__.split(".")[0] not in ("torch", "builtins")
             and (t := source._tree(c)) is not None]  # a subclass's methods are mostly its base's
    methods = [n for tree in trees for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name != "__init__"]
    for method in methods:
        for node in ast.walk(method):
            attr = _self_attr(node)
            if attr is not None and isinstance(node, ast.expr):
                first[attr] = min(first.get(attr, 1 << 30), node.lineno * 1000 + node.col_offset)
            if isinstance(node, ast.Call):
                func = node.func.value if isinstance(node.func, ast.Subscript) else node.func
                called = _self_attr(func)
                used |= {called} if called is not None else set()
                if called is not None:  # handed to a sub-module: ``self.sublayer[1](x, self.feed_forward)``
                    used |= {a for a in map(_self_attr, node.args) if a is not None}
            if isinstance(node, (ast.For, ast.comprehension)) and _self_attr(node.iter) is not None:
                used.add(_self_attr(node.iter) or "")
    return first, used


@lru_cache(maxsize=256)
def module_parameters(cls: Any) -> dict[str, int]:
    """The constructor's required, unannotated-or-module parameters its source uses as modules, each with where
    the class first uses it (source order, for the order of a layer's sub-modules): called, deep-copied (or
    handed to a function that deep-copies it), or stored as an attribute the class calls or iterates over."""
    init = source._init(cls)
    tree = source._tree(init) if init is not None else None
    if init is None or tree is None:
        return {}
    scope = source.scope_of(cls)
    params = {p.name for p in inspect.signature(init).parameters.values() if p.default is p.empty
              and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"
              and _module_annotation(source.resolved(p.annotation, scope))}
    copied = _copied(tree, params, scope, 0)
    attrs = _assigned_attrs(tree, params, copied)
    first, used = _class_uses(cls)
    found = {p: first.get(attrs.get(p, ""), 1 << 30) for p in copied}
    found |= {p: first.get(a, 1 << 30) for p, a in attrs.items() if a in used}
    found |= {p: at for p, at in _through_super(cls, tree, params).items() if p not in found}
    order = list(inspect.signature(init).parameters)
    return dict(sorted(found.items(), key=lambda kv: (kv[1], order.index(kv[0]))))


def _through_super(cls: Any, tree: ast.AST, params: set[str]) -> dict[str, int]:
    """Parameters handed on unchanged to ``super().__init__(...)`` where the parent's constructor uses them as
    modules (a subclass that changes a norm and passes the attention and feed-forward up), with the parent's
    order of use."""
    parent = next((c for c in cls.__mro__[1:] if "__init__" in vars(c)), None)
    if parent is None or parent.__module__.startswith("torch"):
        return {}
    inherited = module_parameters(parent)
    try:
        names = [n for n in inspect.signature(vars(parent)["__init__"]).parameters if n != "self"]
    except (TypeError, ValueError):
        return {}
    out: dict[str, int] = {}
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "__init__"
                and isinstance(node.func.value, ast.Call) and isinstance(node.func.value.func, ast.Name)
                and node.func.value.func.id == "super"):
            continue
        passed = [(names[i] if i < len(names) else None, a) for i, a in enumerate(node.args)]
        passed += [(k.arg, k.value) for k in node.keywords]
        out |= {a.id: inherited[name] for name, a in passed
                if isinstance(a, ast.Name) and a.id in params and name in inherited}
    return out


def _module_annotation(annotation: Any) -> bool:
    """Unannotated, or annotated with a module class (a parameter that may be a module)."""
    if annotation in (inspect.Parameter.empty, Any, object):
        return True
    return inspect.isclass(annotation) and issubclass(annotation, nn.Module)


def module_list_parameters(cls: Any) -> set[str]:
    """Required parameters annotated as a ModuleList/Sequential, or iterated over by the constructor."""
    init = source._init(cls)
    if init is None:
        return set()
    scope = source.scope_of(cls)
    out = {p.name for p in inspect.signature(init).parameters.values() if p.default is p.empty and inspect.isclass(
        a := source.resolved(p.annotation, scope)) and issubclass(a, (nn.ModuleList, nn.Sequential))}
    tree = source._tree(init)
    for node in ast.walk(tree) if tree is not None else ():
        if isinstance(node, (ast.For, ast.comprehension)) and isinstance(node.iter, ast.Name):
            out.add(node.iter.id)
    return out & set(inspect.signature(init).parameters)


def _truth_tested(tree: ast.AST) -> tuple[set[str], set[str]]:
    """(names, self attributes) tested for truth: ``if x:``, ``x and y``, ``not x``, ``a if x else b``."""
    tests: list[ast.expr] = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.If, ast.While, ast.IfExp, ast.Assert)):
            tests.append(node.test)
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            tests.append(node.operand)
    for test in list(tests):  # ``if a and b``: both tested (``x = a or b`` picks a value: no test)
        tests.extend(n for n in ast.walk(test) if isinstance(n, ast.expr) and not isinstance(n, ast.BoolOp)
                     and any(n in b.values for b in ast.walk(test) if isinstance(b, ast.BoolOp)))
    names = {t.id for t in tests if isinstance(t, ast.Name)}
    return names, {a for t in tests if (a := _self_attr(t)) is not None}


def _bool_arguments(tree: ast.AST, params: set[str], scope: dict[str, Any], cls: Any) -> set[str]:
    """Parameters passed by keyword to a callee's parameter whose default is a bool."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        given = {k.arg: k.value.id for k in node.keywords if k.arg and isinstance(k.value, ast.Name)
                 and k.value.id in params}
        callee = source._resolve(node.func, scope, cls) if given else None
        try:
            signature = inspect.signature(callee) if callee is not None else None
        except (TypeError, ValueError):
            signature = None
        for arg, name in given.items():
            p = signature.parameters.get(arg) if signature is not None else None
            if p is not None and isinstance(p.default, bool):
                found.add(name)
    return found


@lru_cache(maxsize=256)
def flag_parameters(cls: Any) -> frozenset[str]:
    """Untyped required parameters the source uses as flags: tested for truth (directly, or as the attribute it is
    stored in, anywhere in the class), or passed to a parameter whose default is a bool."""
    init = source._init(cls)
    tree = source._tree(init) if init is not None else None
    if init is None or tree is None:
        return frozenset()
    params = {p.name for p in inspect.signature(init).parameters.values() if p.default is p.empty
              and p.annotation is p.empty and p.name != "self"}
    names, _ = _truth_tested(tree)
    whole = source._tree(cls) if inspect.isclass(cls) else None
    _, attrs = _truth_tested(whole) if whole is not None else (set(), set())
    stored = _assigned_attrs(tree, params, set())
    found = (names & params) | {p for p, a in stored.items() if a in attrs}
    return frozenset(found | _bool_arguments(tree, params, source.scope_of(cls), cls))


@lru_cache(maxsize=256)
def call_arities(cls: Any) -> dict[str, int]:
    """Per module parameter stored as an attribute: the most positional arguments the class calls it with
    (``self.cross(x, memory, mask)``: 3), for a candidate's forward to be checked against."""
    init = source._init(cls)
    tree, whole = (source._tree(init) if init is not None else None), source._tree(cls)
    if init is None or tree is None or whole is None:
        return {}
    params = set(module_parameters(cls))
    attrs = {a: p for p, a in _assigned_attrs(tree, params, set()).items()}
    found: dict[str, int] = {}
    for node in ast.walk(whole):
        attr = _self_attr(node.func) if isinstance(node, ast.Call) else None
        if attr in attrs and isinstance(node, ast.Call) and not any(isinstance(a, ast.Starred) for a in node.args):
            found[attrs[attr]] = max(found.get(attrs[attr], 0), len(node.args))
    return found
