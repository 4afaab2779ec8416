"""Which modules of the target stand for each tracked submodule of the built-in (localization's map).

An adapter's ``submodules(model)``; a drop-in class or handmade: its modules of the same names; anything
inferred: the weight map says it. For each built-in submodule, the smallest target module holding exactly
the parameters paired with it (a ModuleDict or ModuleList holder is never called, so the module running it
stands instead). Real code does not always keep one module per built-in one, so a site is a ``Span``:

- one built-in submodule may stand for **several target modules**: when no single module holds exactly its
  parameters, the fewest modules that each do (an attention split into a ``self`` part holding q/k/v and an
  ``output`` part whose ``dense`` is the output projection, next to the residual norm). The site's input is
  the input of the one called first, its output the output of the one returning last (measured on a run);
- one target module may stand for **several built-in submodules** (a feed-forward module holding both
  matrices as raw parameters): the built-in submodules it holds exactly, named ``layers.0.linear1+linear2``,
  compared from the input of the first to the output of the last.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from reference.diagnose.runs import Observation
from reference.inference.prepare import TargetCandidate
from reference.verdict.engine import HandmadeTwin

_PART = r"(self_attn|multihead_attn|linear1|linear2|norm[123])"
TRACKED = re.compile(rf"^((encoder|decoder)\.)?(norm|layers\.\d+(\.{_PART})?)$|^(encoder|decoder)$|^{_PART}$")
GROUP = "+"  # joins the built-in names one target module stands for: layers.0.linear1+linear2


@dataclass(frozen=True)
class Span:
    """The modules standing for one site: its input is ``entry``'s, its output ``exit``'s (often one module)."""

    entry: nn.Module
    exit: nn.Module
    label: str = ""  # the modules' names, for the report

    @staticmethod
    def of(module: nn.Module, label: str = "") -> Span:
        return Span(module, module, label)


def tracked(builtin: nn.Module) -> list[str]:
    """The built-in's submodules localization compares; the module itself when it has none (attention, norm)."""
    names = [n for n, _ in builtin.named_modules() if n and TRACKED.match(n)]
    return names or [""]


def members(name: str) -> list[str]:
    """The built-in submodules a site stands for: ``layers.0.linear1+linear2`` -> both; a plain name -> itself."""
    if GROUP not in name:
        return [name]
    parent, _, last = name.rpartition(".")
    return [f"{parent}.{part}" if parent else part for part in last.split(GROUP)]


def run_order(run: Callable[[], object], modules: Iterable[nn.Module]) -> tuple[list[int], list[int]]:
    """(module ids in the order they are first called, in the order they last return) in one run of ``run``."""
    starts: list[int] = []
    ends: list[int] = []
    handles = []

    def start(module: nn.Module, args: object) -> None:
        if id(module) not in starts:
            starts.append(id(module))

    for m in dict.fromkeys(modules):
        handles.append(m.register_forward_pre_hook(start))
        handles.append(m.register_forward_hook(lambda mod, args, out: ends.append(id(mod))))
    try:
        with torch.no_grad():
            run()
    except Exception:
        pass
    finally:
        for h in handles:
            h.remove()
    last = list(dict.fromkeys(reversed(ends)))[::-1]  # by the last time each returned
    return starts, last


def _span(modules: list[nn.Module], order: tuple[list[int], list[int]], label: str) -> Span:
    """The first of ``modules`` to be called and the last to return (definition order where the run saw none)."""
    starts, ends = order
    first = min(modules, key=lambda m: starts.index(id(m)) if id(m) in starts else len(starts))
    last = max(modules, key=lambda m: ends.index(id(m)) if id(m) in ends else -1)
    return Span(first, last, label)


def builtin_spans(obs: Observation, names: Iterable[str]) -> dict[str, Span]:
    """The built-in's side of each site (a group: from its first member's input to its last member's output)."""
    names = list(names)
    groups = [n for n in names if GROUP in n]
    order = run_order(lambda: obs.entry.call(obs.builtin, **obs.inputs, **obs.kwargs),
                      [obs.builtin.get_submodule(m) for g in groups for m in members(g)]) if groups else ([], [])
    return {n: _span([obs.builtin.get_submodule(m) for m in members(n)], order, n) for n in names}


class _Holdings:
    """Which built-in tensors the target's parameters under each module hold (from the weight map's links)."""

    def __init__(self, weight_map: Any, model: nn.Module) -> None:
        self.links = list(weight_map.links)
        self.model = model

    def params_of(self, prefix: str) -> list[list[str]]:
        """The module path (as parts) of every target parameter paired with a built-in tensor under ``prefix``."""
        return [link.target.split(".")[:-1] for link in self.links
                if any(s.name.startswith(prefix) for s in link.sources)]

    def pure(self, path: list[str], prefixes: list[str]) -> bool:
        """Whether every paired parameter under ``path`` holds only built-in tensors under ``prefixes``."""
        owner = ".".join(path)
        inside = [link for link in self.links if not owner or link.target.startswith(f"{owner}.")]
        return all(all(any(s.name.startswith(p) for p in prefixes) for s in link.sources) for link in inside)

    def runs(self, path: list[str]) -> list[str]:
        """The module that runs ``path``: itself, or the nearest holder above a ModuleDict/ModuleList."""
        path = list(path)
        while path and isinstance(self.model.get_submodule(".".join(path)), (nn.ModuleDict, nn.ModuleList)):
            path.pop()
        return path

    def cover(self, params: list[list[str]], prefixes: list[str]) -> list[str] | None:
        """The fewest called modules that each hold only these built-in tensors and together hold every one."""
        common: list[str] = []
        for parts in zip(*params, strict=False):
            if len(set(parts)) != 1:
                break
            common.append(parts[0])
        owner = self.runs(common)
        if self.pure(owner, prefixes):
            return [".".join(owner)]
        if any(len(p) == len(common) for p in params):
            return None  # a parameter held directly by a module that holds others too
        groups: dict[str, list[list[str]]] = {}
        for p in params:
            groups.setdefault(p[len(common)], []).append(p)
        out: list[str] = []
        for group in groups.values():
            found = self.cover(group, prefixes)
            if found is None:
                return None
            out += found
        return out


def _inferred_map(weight_map: Any, model: nn.Module, names: list[str]) -> dict[str, list[str]]:
    """Built-in name (or group of names) -> the target modules standing for it (paths; several when split)."""
    held = _Holdings(weight_map, model)
    found: dict[str, list[str]] = {}
    alone: dict[str, list[str]] = {}  # unmapped name -> the smallest module holding its tensors (and others)
    for name in names:
        prefix = f"{name}." if name else ""
        params = held.params_of(prefix)
        if not params:
            continue
        cover = held.cover(params, [prefix])
        if cover is not None:
            found[name] = cover
            continue
        shared: list[str] = []
        for column in zip(*params, strict=False):
            if len(set(column)) != 1:
                break
            shared.append(column[0])
        alone[name] = held.runs(shared)
    used = {p for paths in found.values() for p in paths}
    by_owner: dict[str, list[str]] = {}
    for name, parts in alone.items():
        by_owner.setdefault(".".join(parts), []).append(name)
    for holder, group in by_owner.items():
        parents = {n.rpartition(".")[0] for n in group}
        if len(group) < 2 or len(parents) != 1 or holder in used:
            continue
        if held.pure(holder.split(".") if holder else [], [f"{n}." for n in group]):
            parent = parents.pop()
            joined = GROUP.join(n.rpartition(".")[2] for n in group)
            found[f"{parent}.{joined}" if parent else joined] = [holder]
    return found


def _spans(obs: Observation, paths: dict[str, list[str]]) -> dict[str, Span]:
    """Each site's entry and exit modules, from one run of the target when a site has several."""
    model = obs.model
    assert model is not None and obs.candidate is not None
    split = [p for ps in paths.values() if len(ps) > 1 for p in ps]
    cand = obs.candidate
    order = run_order(lambda: cand.call(model, obs.entry.call, {k: v.clone() for k, v in obs.inputs.items()},
                                        dict(obs.kwargs)),
                      [model.get_submodule(p) for p in split]) if split else ([], [])
    out = {}
    for name, ps in paths.items():
        span = _span([model.get_submodule(p) for p in ps], order, "")
        label = " + ".join(p for p in ps if model.get_submodule(p) in (span.entry, span.exit)) if len(ps) > 1 else ps[0]
        out[name] = Span(span.entry, span.exit, label)
    return out


def target_map(obs: Observation, names: list[str]) -> tuple[dict[str, Span], str]:
    """Built-in name -> the target's modules standing for it, and why it is empty when it is (never silently)."""
    cand, model = obs.candidate, obs.model
    if model is None:
        return {}, "the target could not be built or loaded, so nothing can be compared inside it"
    if isinstance(cand, HandmadeTwin):
        return {n: Span.of(model.get_submodule(n), n) for n in names}, ""
    inference = getattr(cand, "inference", None)
    if inference is not None:
        found = _spans(obs, _inferred_map(inference.weight_map, model, names))
        return found, "" if found else ("the inferred weight map pairs no target module (nor group of modules) "
                                        "with exactly the tensors of a built-in submodule")
    if not isinstance(cand, TargetCandidate):
        return {}, f"no map from the built-in's submodules to a {type(cand).__name__}'s"
    target = cand.target
    try:
        mapping = target.submodules(model)
    except Exception as exc:  # the target's own map failed: say so, compare whole outputs only
        return {}, f"submodules(model) raised {type(exc).__name__}: {exc}"
    if mapping is not None:
        unknown = sorted(set(mapping) - set(names))
        note = f"ignored names the built-in does not have: {', '.join(unknown[:5])}" if unknown else ""
        labels = {id(m): n for n, m in model.named_modules()}
        found = {n: Span.of(m, labels.get(id(m), n)) for n, m in mapping.items()
                 if n in names and isinstance(m, nn.Module)}
        if not found:
            note = note or ("submodules(model) maps no module here" + ("" if mapping else ": it returned an empty map"
                                                                       " for this configuration"))
        return found, note
    if not target.is_drop_in:
        return {}, ("the adapter has no submodules(model) map, so the outputs can only be compared whole; add "
                    "submodules() returning {nn.Transformer submodule name: your module} (docs/plugins.md), or "
                    "pass the class itself, whose weight map is then inferred")
    found = {}
    for name in names:
        try:
            found[name] = Span.of(model.get_submodule(name), name)
        except AttributeError:
            continue
    if not found:
        return {}, ("the drop-in class has no modules named like nn.Transformer's (encoder.layers.0.self_attn, ...), "
                    "so the outputs can only be compared whole")
    return found, ""
