"""Which module of the target stands for each tracked submodule of the built-in (localization's map).

An adapter's ``submodules(model)``; a drop-in class or handmade: its modules of the same names; anything
inferred: the weight map says it (the smallest module holding exactly the parameters paired with that
submodule's; a ModuleDict or ModuleList holder is never called, so the module running it stands instead).
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn

from reference.diagnose.runs import Observation
from reference.inference.prepare import TargetCandidate
from reference.verdict.engine import HandmadeTwin

_PART = r"(self_attn|multihead_attn|linear1|linear2|norm[123])"
TRACKED = re.compile(rf"^((encoder|decoder)\.)?(norm|layers\.\d+(\.{_PART})?)$|^(encoder|decoder)$|^{_PART}$")



def tracked(builtin: nn.Module) -> list[str]:
    """The built-in's submodules localization compares; the module itself when it has none (attention, norm)."""
    names = [n for n, _ in builtin.named_modules() if n and TRACKED.match(n)]
    return names or [""]


def _inferred_map(weight_map: Any, model: nn.Module, names: list[str]) -> dict[str, nn.Module]:
    """Built-in name -> the smallest target module holding exactly the parameters paired with it."""
    found: dict[str, nn.Module] = {}
    links = list(weight_map.links)
    for name in names:
        prefix = f"{name}." if name else ""
        mine = [link.target for link in links if any(s.name.startswith(prefix) for s in link.sources)]
        if not mine:
            continue
        paths = [t.split(".")[:-1] for t in mine]
        common: list[str] = []
        for parts in zip(*paths, strict=False):
            if len(set(parts)) != 1:
                break
            common.append(parts[0])
        while common and isinstance(model.get_submodule(".".join(common)), (nn.ModuleDict, nn.ModuleList)):
            common.pop()  # a container is never called: the module that holds it and runs its parts is
        owner = ".".join(common)
        inside = [link for link in links if not owner or link.target.startswith(f"{owner}.")]
        if all(all(s.name.startswith(prefix) for s in link.sources) for link in inside):
            found[name] = model.get_submodule(owner)
    return found


def target_map(obs: Observation, names: list[str]) -> tuple[dict[str, nn.Module], str]:
    """Built-in name -> target module, and why it is empty when it is."""
    cand, model = obs.candidate, obs.model
    if model is None:
        return {}, "the target could not be built or loaded, so nothing can be compared inside it"
    if isinstance(cand, HandmadeTwin):
        return {n: model.get_submodule(n) for n in names}, ""
    inference = getattr(cand, "inference", None)
    if inference is not None:
        found = _inferred_map(inference.weight_map, model, names)
        return found, "" if found else "the inferred weight map pairs no target module with a built-in submodule"
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
        return {n: m for n, m in mapping.items() if n in names and isinstance(m, nn.Module)}, note
    if not target.is_drop_in:
        return {}, ("the adapter has no submodules(model) map, so the outputs can only be compared whole; add "
                    "submodules() returning {nn.Transformer submodule name: your module} (docs/plugins.md), or "
                    "pass the class itself, whose weight map is then inferred")
    found = {}
    for name in names:
        try:
            found[name] = model.get_submodule(name)
        except AttributeError:
            continue
    if not found:
        return {}, ("the drop-in class has no modules named like nn.Transformer's (encoder.layers.0.self_attn, ...), "
                    "so the outputs can only be compared whole")
    return found, ""
