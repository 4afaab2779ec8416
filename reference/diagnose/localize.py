"""Where the target first parts from the built-in: submodule by submodule, in the order they finish.

Forward hooks record every tracked submodule of the built-in (attentions, norms, the feed-forward linears,
layers, stacks) and the target's modules that stand for them. Which target module stands for which name:

- an adapter's ``submodules(model)``; a drop-in class or handmade: its modules of the same names;
- anything inferred: the **weight map** says it: the target module is the smallest one holding every
  parameter paired with that built-in submodule's and nothing paired elsewhere (``h.0.attn`` for
  ``layers.0.self_attn``). Functional code that keeps attention weights in the layer maps at the layer.

Two modes. *Propagated*: each model runs on its own activations. *Isolated*: each mapped target module is
fed the built-in's recorded input and its output replaced by the built-in's after it is recorded, so each
error is the module's own; the input the target itself gave the module is compared too ("fed").

Layouts may differ ((L, N, E) against (N, L, E), unbatched): tensors are matched by shape (the probe cases
use distinct sizes). NaN/inf where the built-in is finite are localized like any difference, and a target
that raises is localized to the module that raised (``where_raised``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from reference.compare import TargetCandidate, fastpath
from reference.diagnose.runs import Observation, as_case
from reference.engine import HandmadeTwin
from reference.tolerance import judge

_PART = r"(self_attn|multihead_attn|linear1|linear2|norm[123])"
TRACKED = re.compile(rf"^((encoder|decoder)\.)?(norm|layers\.\d+(\.{_PART})?)$|^(encoder|decoder)$|^{_PART}$")


@dataclass
class SubmoduleError:
    """One submodule's output against the built-in's: errors and the worst element (batch, position, feature)."""

    name: str
    passed: bool
    max_abs: float
    bound: float
    worst: dict[str, int | None]
    candidate: float
    oracle: float
    note: str = ""
    fed_max_abs: float = 0.0  # isolated mode: how far the input the target gave it is from the built-in's
    fed_passed: bool = True
    target_module: str = ""  # the target's module standing for ``name``

    @property
    def diverges(self) -> bool:
        return not (self.passed and self.fed_passed)


@dataclass
class Localization:
    """One mode's table, in the built-in's forward order, and what could not be compared."""

    mode: str
    case: str
    rows: list[SubmoduleError] = field(default_factory=list)
    not_called: list[str] = field(default_factory=list)
    note: str = ""

    @property
    def first(self) -> SubmoduleError | None:
        """The first whose own output differs; else the first fed a different input."""
        return next((r for r in self.rows if not r.passed), None) or next((r for r in self.rows if r.diverges), None)

    @property
    def diverging(self) -> list[SubmoduleError]:
        return [r for r in self.rows if r.diverges]


@dataclass
class Replay:
    """What the isolated run recorded, for probes at one place: the built-in's calls and both outputs."""

    calls: dict[str, tuple[tuple, dict]]  # built-in name -> (args, kwargs) it was called with
    expected: dict[str, Tensor]  # built-in name -> its output
    got: dict[str, Tensor]  # the target module's output fed the built-in's input, in the built-in's layout
    fed: dict[str, Tensor]  # the first tensor input the target itself gave it, in the built-in's layout
    modules: dict[str, nn.Module]  # built-in name -> the built-in's submodule


def _first_tensor(value: object) -> Tensor | None:
    if isinstance(value, Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], Tensor):
        return value[0]
    return None


def _replace_first(value: object, tensor: Tensor) -> object:
    if isinstance(value, Tensor):
        return tensor
    return type(value)([tensor, *value[1:]]) if isinstance(value, (tuple, list)) else value


def _layout(ref: torch.Size, shape: torch.Size) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]] | None:
    """(built-in -> target layout, target -> built-in layout) when ``shape`` is ``ref`` rearranged."""
    if shape == ref:
        return (lambda t: t), (lambda t: t)
    if len(ref) == 3 and tuple(shape) == (ref[1], ref[0], ref[2]):
        return (lambda t: t.transpose(0, 1)), (lambda t: t.transpose(0, 1))
    if len(ref) == 2 and tuple(shape) == (1, *ref):
        return (lambda t: t.unsqueeze(0)), (lambda t: t.squeeze(0))
    if len(ref) == 2 and tuple(shape) == (ref[0], 1, ref[1]):
        return (lambda t: t.unsqueeze(1)), (lambda t: t.squeeze(1))
    return None


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


class _Recorder:
    """Hooks one model's modules: records inputs/outputs per name; optionally feeds and replaces them."""

    def __init__(self, modules: dict[str, nn.Module], order: dict[str, int]) -> None:
        self.names: dict[int, list[str]] = {}
        self.objects: dict[int, nn.Module] = {}
        for name, module in modules.items():
            self.names.setdefault(id(module), []).append(name)
            self.objects[id(module)] = module
        for names in self.names.values():
            names.sort(key=lambda n: order.get(n, 1 << 30))
        self.count: dict[int, int] = {}
        self.stack: dict[int, list[str | None]] = {}
        self.calls: dict[str, tuple[tuple, dict]] = {}
        self.inputs: dict[str, list[Tensor]] = {}
        self.fed: dict[str, Any] = {}  # the input the target gave a module, against the built-in's (a Verdict)
        self.fed_tensor: dict[str, Tensor] = {}
        self.outputs: dict[str, Tensor] = {}
        self.order: list[str] = []
        self.feed: dict[str, list[Tensor]] | None = None
        self.replace: dict[str, Tensor] | None = None

    def _pre(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        k = self.count.get(id(module), 0)
        self.count[id(module)] = k + 1
        names = self.names[id(module)]
        name = names[k] if k < len(names) else None
        self.stack.setdefault(id(module), []).append(name)
        if name is None:
            return None
        self.calls[name] = (args, dict(kwargs))
        self.inputs[name] = [a.detach() for a in args if isinstance(a, Tensor)]
        if self.feed is None or name not in self.feed:
            return None
        new_args, new_kwargs = list(args), dict(kwargs)
        slots = [("a", i) for i, a in enumerate(args) if isinstance(a, Tensor)]
        slots += [("k", key) for key, v in kwargs.items() if isinstance(v, Tensor)]
        for (where, key), ref in zip(slots, self.feed[name], strict=False):
            mine = new_args[key] if where == "a" else new_kwargs[key]
            layout = _layout(ref.shape, mine.shape)
            if layout is None or not mine.is_floating_point():
                break
            own = layout[1](mine.detach().to("cpu", torch.float64))
            fed = judge(f"{name} input", own, ref)
            self.fed_tensor.setdefault(name, own)
            if name not in self.fed or fed.max_abs > self.fed[name].max_abs:
                self.fed[name] = fed
            value = layout[0](ref).to(mine.device, mine.dtype)
            if where == "a":
                new_args[key] = value
            else:
                new_kwargs[key] = value
        return tuple(new_args), new_kwargs

    def _post(self, module: nn.Module, args: tuple, kwargs: dict, output: object) -> object:
        name = self.stack[id(module)].pop()
        out = _first_tensor(output)
        if name is None or out is None:
            return None
        self.order.append(name)  # completion order: a layer's parts before the layer
        self.outputs[name] = out.detach()
        if self.replace is None or name not in self.replace:
            return None
        layout = _layout(self.replace[name].shape, out.shape)
        if layout is None:
            return None
        return _replace_first(output, layout[0](self.replace[name]).to(out.device, out.dtype))

    def attach(self) -> list:
        handles = []
        for module in self.objects.values():
            handles.append(module.register_forward_pre_hook(self._pre, with_kwargs=True))
            handles.append(module.register_forward_hook(self._post, with_kwargs=True))
        return handles


def _run(obs: Observation, recorder: _Recorder | None) -> Exception | None:
    """Run the target's model on the observation's inputs with ``recorder``'s hooks; the exception if it raised."""
    assert obs.candidate is not None and obs.model is not None
    handles = recorder.attach() if recorder is not None else []
    try:
        with torch.no_grad():
            obs.candidate.call(obs.model, obs.entry.call, dict(obs.inputs), dict(obs.kwargs))
    except Exception as exc:
        return exc
    finally:
        for h in handles:
            h.remove()
    return None


def _worst(index: tuple[int, ...], case: Any) -> dict[str, int | None]:
    """An index of a tensor in the built-in's layout as (batch, position, feature) of the caller's layout."""
    if len(index) == 2:
        return {"batch": None, "position": index[0], "feature": index[1]}
    if len(index) != 3:
        return {"batch": None, "position": None, "feature": None}
    b, p = (index[0], index[1]) if as_case(case).config.batch_first else (index[1], index[0])
    return {"batch": b, "position": p, "feature": index[2]}


def _describe(case: Any) -> str:
    return str(case.describe())


def localize(obs: Observation) -> tuple[list[Localization], str, Replay | None]:
    """Propagated and isolated tables for ``obs``'s case; the reason when nothing can be localized."""
    names = tracked(obs.builtin)
    mapping, note = target_map(obs, names)
    if not mapping:
        return [], note, None
    module_names = {id(m): n for n, m in obs.model.named_modules()} if obs.model is not None else {}
    with fastpath(False), torch.no_grad():
        ref_rec = _Recorder({n: obs.builtin.get_submodule(n) for n in mapping}, {})
        handles = ref_rec.attach()
        obs.entry.call(obs.builtin, **obs.inputs, **obs.kwargs)
        for h in handles:
            h.remove()
        order = {n: i for i, n in enumerate(ref_rec.order)}
        results, replay = [], None
        for mode in ("propagated", "isolated"):
            rec = _Recorder(mapping, order)
            if mode == "isolated":
                rec.feed, rec.replace = ref_rec.inputs, ref_rec.outputs
            error = _run(obs, rec)
            if error is not None:
                where = where_raised(obs)[0]
                results.append(Localization(mode, _describe(obs.case), note=f"the target raised "
                                            f"{type(error).__name__}: {error}" + (f" ({where})" if where else "")))
                continue
            table = _table(mode, obs.case, ref_rec, rec, note)
            for row in table.rows:
                module = mapping[row.name]
                row.target_module = module_names.get(id(module), "") or type(module).__name__  # root: its class
            results.append(table)
            if mode == "isolated":
                replay = _replay(ref_rec, rec, obs.builtin)
    return results, "", replay


def _replay(ref: _Recorder, mine: _Recorder, builtin: nn.Module) -> Replay:
    got, fed = {}, {}
    for name, expected in ref.outputs.items():
        out = mine.outputs.get(name)
        layout = None if out is None else _layout(expected.shape, out.shape)
        if out is not None and layout is not None:
            got[name] = layout[1](out.to("cpu", torch.float64))
        if name in mine.fed_tensor:
            fed[name] = mine.fed_tensor[name]
    return Replay(ref.calls, dict(ref.outputs), got, fed, {n: builtin.get_submodule(n) for n in ref.outputs})


def _table(mode: str, case: Any, ref: _Recorder, mine: _Recorder, note: str) -> Localization:
    table = Localization(mode, _describe(case), note=note)
    for name in ref.order:
        if name not in mine.outputs:
            table.not_called.append(name)  # mapped, but the target never ran it
            continue
        expected, got = ref.outputs[name], mine.outputs[name]
        layout = _layout(expected.shape, got.shape)
        if layout is None:
            table.rows.append(SubmoduleError(name, False, float("inf"), 0.0, {}, 0.0, 0.0,
                                             f"output shape {tuple(got.shape)}, the built-in's "
                                             f"{tuple(expected.shape)}: no layout matches"))
            continue
        v = judge(name, layout[1](got.to("cpu", torch.float64)), expected)
        row = SubmoduleError(name, v.passed, v.max_abs, v.bound, _worst(v.worst_index, case), v.candidate_value,
                             v.oracle_value, v.note)
        if name in mine.fed:
            row.fed_max_abs, row.fed_passed = mine.fed[name].max_abs, mine.fed[name].passed
        table.rows.append(row)
    return table


def where_raised(obs: Observation) -> tuple[str, str]:
    """(where the target raised, in words; the built-in submodule its innermost mapped running module stands
    for): the target's innermost module running when it raised."""
    if obs.model is None or obs.candidate is None:
        return "", ""
    stack: list[str] = []

    def enter(name: str) -> Callable[..., None]:
        return lambda module, args: stack.append(name)

    def leave(module: nn.Module, args: object, output: object) -> None:  # returns None: the output stays
        if stack:
            stack.pop()

    handles = []
    for name, module in obs.model.named_modules():
        handles.append(module.register_forward_pre_hook(enter(name)))
        handles.append(module.register_forward_hook(leave))
    try:
        error = _run(obs, None)
    finally:
        for h in handles:
            h.remove()
    if error is None:
        return "", ""
    if not stack:
        return "raised outside the target's modules (in its adapter or its top-level forward code)", ""
    inner = stack[-1]
    here = f"raised in {inner or 'the model'} ({type(obs.model.get_submodule(inner)).__name__})"
    mapping, _ = target_map(obs, tracked(obs.builtin))
    standing = {id(m): n for n, m in mapping.items()}
    for path in reversed(stack):
        mapped = standing.get(id(obs.model.get_submodule(path)))
        if mapped is not None:
            inside = "" if path == inner else f", inside the target's {path or 'model'}"
            return f"{here}{inside}, which stands for {mapped or 'the module itself'}", mapped
    return here, ""
