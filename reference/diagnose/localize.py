"""Where the target first parts from nn.Transformer: submodule by submodule, in the order they finish.

Forward hooks record every named nn.Transformer submodule's input and output, and the same for the target's
modules that the adapter maps to those names (``submodules(model)``; for a drop-in class, its modules of the
same names, since it loads nn.Transformer's state_dict). Two modes:

- propagated: each model runs on its own activations; errors accumulate downstream;
- isolated: each mapped target module is fed the reference module's recorded input, and its output is
  replaced by the reference's after it is recorded, so each error is the module's own (for a layer: its
  code outside its mapped children, e.g. the residual wiring). The input the target itself gave the
  module is compared too, before it is replaced: when it differs although everything upstream was
  replaced, the code between the mapped modules differs (norm placement, the activation, a residual).

One target module may stand for several names (a module reused): its k-th call is the k-th of those names
in nn.Transformer's forward order. Layouts may differ ((L, N, E) against (N, L, E), unbatched): tensors are
matched by shape, so the probe case uses distinct sizes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from reference.cases import Case
from reference.compare import fastpath, forward_kwargs
from reference.diagnose.runs import build_loaded, reference_model, run_target
from reference.targets import Target, TargetError
from reference.tolerance import Verdict, judge

TRACKED = re.compile(
    r"^(encoder|decoder)(\.norm|\.layers\.\d+(\.(self_attn|multihead_attn|linear1|linear2|norm[123]))?)?$")


@dataclass
class SubmoduleError:
    """One submodule's output against nn.Transformer's: errors and the worst element (batch, position, feature)."""

    name: str
    passed: bool
    max_abs: float
    bound: float
    worst: dict[str, int | None]
    candidate: float
    oracle: float
    note: str = ""
    fed_max_abs: float = 0.0  # isolated mode: how far the input the target gave it is from nn.Transformer's
    fed_passed: bool = True

    @property
    def diverges(self) -> bool:
        return not (self.passed and self.fed_passed)


@dataclass
class Localization:
    """One mode's table, in nn.Transformer's forward order, and what could not be compared."""

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
    """(reference -> target layout, target -> reference layout) when ``shape`` is ``ref`` rearranged."""
    if shape == ref:
        return (lambda t: t), (lambda t: t)
    if len(ref) == 3 and tuple(shape) == (ref[1], ref[0], ref[2]):
        return (lambda t: t.transpose(0, 1)), (lambda t: t.transpose(0, 1))
    if len(ref) == 2 and tuple(shape) == (1, *ref):
        return (lambda t: t.unsqueeze(0)), (lambda t: t.squeeze(0))
    if len(ref) == 2 and tuple(shape) == (ref[0], 1, ref[1]):
        return (lambda t: t.unsqueeze(1)), (lambda t: t.squeeze(1))
    return None


def target_map(target: Target, model: nn.Module, names: list[str]) -> tuple[dict[str, nn.Module], str]:
    """nn.Transformer name -> target module, and why it is empty when it is."""
    try:
        mapping = target.submodules(model)
    except Exception as exc:  # the target's own map failed: say so, compare whole outputs only
        return {}, f"submodules(model) raised {type(exc).__name__}: {exc}"
    if mapping is not None:
        unknown = sorted(set(mapping) - set(names))
        note = f"ignored names nn.Transformer does not have: {', '.join(unknown[:5])}" if unknown else ""
        return {n: m for n, m in mapping.items() if n in names and isinstance(m, nn.Module)}, note
    if not target.is_drop_in:
        return {}, ("the adapter has no submodules(model) map, so the outputs can only be compared whole; add "
                    "submodules() returning {nn.Transformer submodule name: your module} (see the README)")
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
        self.calls: dict[int, int] = {}
        self.stack: dict[int, list[str | None]] = {}
        self.inputs: dict[str, list[Tensor]] = {}
        self.fed: dict[str, Verdict] = {}  # the input the target gave a module, against nn.Transformer's
        self.outputs: dict[str, Tensor] = {}
        self.order: list[str] = []
        self.feed: dict[str, list[Tensor]] | None = None
        self.replace: dict[str, Tensor] | None = None

    def _pre(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        k = self.calls.get(id(module), 0)
        self.calls[id(module)] = k + 1
        names = self.names[id(module)]
        name = names[k] if k < len(names) else None
        self.stack.setdefault(id(module), []).append(name)
        if name is None:
            return None
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
            fed = judge(f"{name} input", layout[1](mine.detach().to("cpu", torch.float64)), ref)
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


def _worst(index: tuple[int, ...], case: Case) -> dict[str, int | None]:
    """An index of a tensor in nn.Transformer's layout as (batch, position, feature) of the caller's layout."""
    if len(index) == 2:
        return {"batch": None, "position": index[0], "feature": index[1]}
    if len(index) != 3:
        return {"batch": None, "position": None, "feature": None}
    b, p = (index[0], index[1]) if case.config.batch_first else (index[1], index[0])
    return {"batch": b, "position": p, "feature": index[2]}


def localize(target: Target, case: Case, device: torch.device | str = "cpu") -> tuple[list[Localization], str]:
    """Propagated and isolated tables for ``case``; the reason when nothing can be localized."""
    with fastpath(False), torch.no_grad():
        reference = reference_model(case)
        names = [n for n, _ in reference.named_modules() if TRACKED.match(n)]
        src, tgt, kwargs = case.tensors(torch.float64)
        kwargs = forward_kwargs(kwargs, "cpu")
        model = build_loaded(target, case, reference, device)
        mapping, note = target_map(target, model, names)
        if not mapping:
            return [], note
        ref_rec = _Recorder({n: reference.get_submodule(n) for n in mapping}, {})
        handles = ref_rec.attach()
        reference(src, tgt, **kwargs)
        for h in handles:
            h.remove()
        order = {n: i for i, n in enumerate(ref_rec.order)}
        results = []
        for mode in ("propagated", "isolated"):
            rec = _Recorder(mapping, order)
            if mode == "isolated":
                rec.feed, rec.replace = ref_rec.inputs, ref_rec.outputs
            handles = rec.attach()
            try:
                run_target(target, model, src, tgt, kwargs, device)
            except TargetError as exc:
                results.append(Localization(mode, case.describe(), note=f"the target crashed: {exc}"))
                continue
            finally:
                for h in handles:
                    h.remove()
            results.append(_table(mode, case, ref_rec, rec, note))
    return results, ""


def _table(mode: str, case: Case, ref: _Recorder, mine: _Recorder, note: str) -> Localization:
    table = Localization(mode, case.describe(), note=note)
    for name in ref.order:
        if name not in mine.outputs:
            table.not_called.append(name)  # mapped, but the target never ran it
            continue
        expected, got = ref.outputs[name], mine.outputs[name]
        layout = _layout(expected.shape, got.shape)
        if layout is None:
            table.rows.append(SubmoduleError(name, False, float("inf"), 0.0, {}, 0.0, 0.0,
                                             f"output shape {tuple(got.shape)}, nn.Transformer's "
                                             f"{tuple(expected.shape)}: no layout matches"))
            continue
        v = judge(name, layout[1](got.to("cpu", torch.float64)), expected)
        row = SubmoduleError(name, v.passed, v.max_abs, v.bound, _worst(v.worst_index, case), v.candidate_value,
                             v.oracle_value, v.note)
        if name in mine.fed:
            row.fed_max_abs, row.fed_passed = mine.fed[name].max_abs, mine.fed[name].passed
        table.rows.append(row)
    return table
