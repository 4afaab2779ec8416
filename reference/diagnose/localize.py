"""Where the target first parts from the built-in: submodule by submodule, in the order they finish.

Forward hooks record every tracked submodule of the built-in (attentions, norms, the feed-forward linears,
layers, stacks) and the target's modules that stand for them. Which target module stands for which name:

- an adapter's ``submodules(model)``; a drop-in class or handmade: its modules of the same names;
- anything inferred: the **weight map** says it: the target module is the smallest one holding every
  parameter paired with that built-in submodule's and nothing paired elsewhere (``h.0.attn`` for
  ``layers.0.self_attn``); else the fewest modules that together do (an attention split into a ``self`` and
  an ``output`` part); a module holding several built-in submodules exactly stands for them together
  (``layers.0.linear1+linear2``). Functional code that keeps attention weights in the layer maps at the layer.

Two modes. *Propagated*: each model runs on its own activations. *Isolated*: each mapped target module is
fed the built-in's recorded input and its output replaced by the built-in's after it is recorded, so each
error is the module's own; the input the target itself gave the module is compared too ("fed").

Layouts may differ ((L, N, E) against (N, L, E), unbatched): tensors are matched by shape (the probe cases
use distinct sizes). NaN/inf where the built-in is finite are localized like any difference, and a target
that raises is localized to the module that raised (``where_raised``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from reference.diagnose.hooks import _first_tensor, _layout, _Recorder
from reference.diagnose.mapping import GROUP, builtin_spans, target_map, tracked
from reference.diagnose.owners import set_aside, split_layers
from reference.diagnose.runs import Observation, as_case
from reference.inference.prepare import fastpath
from reference.verdict.tolerance import judge


@dataclass(kw_only=True)
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


@dataclass(kw_only=True)
class Localization:
    """One mode's table, in the built-in's forward order, and what could not be compared."""

    mode: str
    case: str
    rows: list[SubmoduleError] = field(default_factory=list)
    not_called: list[str] = field(default_factory=list)
    note: str = ""
    set_aside: dict[str, str] = field(default_factory=dict)  # a split layer not measured to return its output

    @property
    def first(self) -> SubmoduleError | None:
        """The first whose own output differs; else the first fed a different input."""
        return next((r for r in self.rows if not r.passed), None) or next((r for r in self.rows if r.diverges), None)

    @property
    def diverging(self) -> list[SubmoduleError]:
        return [r for r in self.rows if r.diverges]


@dataclass(kw_only=True)
class Replay:
    """What the isolated run recorded, for probes at one place: the built-in's calls and both outputs."""

    calls: dict[str, tuple[tuple, dict]]  # built-in name -> (args, kwargs) it was called with
    expected: dict[str, Tensor]  # built-in name -> its output
    got: dict[str, Tensor]  # the target module's output fed the built-in's input, in the built-in's layout
    fed: dict[str, Tensor]  # the first tensor input the target itself gave it, in the built-in's layout
    modules: dict[str, nn.Module]  # built-in name -> the built-in's submodule
    targets: dict[str, nn.Module] = field(default_factory=dict)  # built-in name -> the one target module for it
    target_calls: dict[str, tuple[tuple, dict]] = field(default_factory=dict)  # its own call (before feeding)


def _run(obs: Observation, recorder: _Recorder | None) -> Exception | None:
    """Run the target's model on the observation's inputs with ``recorder``'s hooks; the exception if it raised."""
    assert obs.candidate is not None and obs.model is not None
    handles = recorder.attach() if recorder is not None else []
    try:
        with torch.no_grad():  # copies: a target may change its inputs in place
            result = obs.candidate.call(obs.model, obs.entry.call, {k: v.clone() for k, v in obs.inputs.items()},
                                        dict(obs.kwargs))
        if recorder is not None:
            recorder.result = result
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
        ref_rec = _Recorder(builtin_spans(obs, mapping), {})
        handles = ref_rec.attach()
        ref_rec.result = obs.entry.call(obs.builtin, **obs.inputs, **obs.kwargs)
        for h in handles:
            h.remove()
        order = {n: i for i, n in enumerate(ref_rec.order)}
        unmapped = [n for n in names if n not in mapping and GROUP not in n]  # the sums between sites read these
        whole = _Recorder(builtin_spans(obs, unmapped), {})
        handles = whole.attach() if unmapped else []
        if unmapped:
            obs.entry.call(obs.builtin, **obs.inputs, **obs.kwargs)
        for h in handles:
            h.remove()
        results, replay = [], None
        counter = _Recorder(mapping, order)
        picks = counter.picks(order) if _run(obs, counter) is None else {}
        split = split_layers(mapping)
        for mode in ("propagated", "isolated"):
            rec = _Recorder(mapping, order)
            rec.pick = picks
            if mode == "isolated":
                rec.feed = ref_rec.inputs  # a split layer's last part does not return the layer's output
                rec.replace = {n: t for n, t in ref_rec.outputs.items() if n not in split}
            error = _run(obs, rec)
            if error is not None:
                where = where_raised(obs)[0]
                results.append(Localization(mode=mode, case=_describe(obs.case), note=f"the target raised "
                                            f"{type(error).__name__}: {error}" + (f" ({where})" if where else "")))
                continue
            _last_site(ref_rec, rec)
            table = _table(mode, obs.case, ref_rec, rec, note)
            table.set_aside = set_aside(table.rows, split, ref_rec.outputs, rec.outputs,
                                        {n: s.label for n, s in mapping.items()})
            for row in table.rows:
                span = mapping[row.name]
                row.target_module = span.label or module_names.get(id(span.exit), "") or type(span.exit).__name__
            results.append(table)
            if mode == "isolated":
                replay = _replay(ref_rec, rec, obs.builtin)
                replay.calls, replay.expected = {**whole.calls, **replay.calls}, {**whole.outputs, **replay.expected}
                replay.targets = {n: s.entry for n, s in mapping.items() if s.entry is s.exit and GROUP not in n}
                replay.target_calls = dict(rec.calls)
    return results, "", replay


def _output(result: object) -> Tensor | None:
    out = result.get("output") if isinstance(result, dict) else result
    return out if isinstance(out, Tensor) else _first_tensor(out)


def _last_site(ref: _Recorder, mine: _Recorder) -> None:
    """The site the built-in finishes last, when its output is the built-in's output and the target never calls
    the module standing for it (a final norm computed by F.layer_norm from its parameters): the target's output
    is that site's output, so the place can be the code after the last module it calls."""
    last = ref.order[-1] if ref.order else None
    builtin_out, out = _output(ref.result), _output(mine.result)
    if last is None or last in mine.outputs or builtin_out is None or out is None:
        return
    if ref.outputs[last].shape == builtin_out.shape and bool((ref.outputs[last] == builtin_out).all()):
        mine.outputs[last] = out.detach().clone()


def _replay(ref: _Recorder, mine: _Recorder, builtin: nn.Module) -> Replay:
    got, fed = {}, {}
    for name, expected in ref.outputs.items():
        out = mine.outputs.get(name)
        layout = None if out is None else _layout(expected.shape, out.shape)
        if out is not None and layout is not None:
            got[name] = layout[1](out.to("cpu", torch.float64))
        if name in mine.fed_tensor:
            fed[name] = mine.fed_tensor[name]
    modules = {n: builtin.get_submodule(n) for n in ref.outputs if GROUP not in n}  # a group is no one module
    return Replay(calls=ref.calls, expected=dict(ref.outputs), got=got, fed=fed, modules=modules)


def _table(mode: str, case: Any, ref: _Recorder, mine: _Recorder, note: str) -> Localization:
    table = Localization(mode=mode, case=_describe(case), note=note)
    for name in ref.order:
        if name not in mine.outputs:
            table.not_called.append(name)  # mapped, but the target never ran it
            continue
        expected, got = ref.outputs[name], mine.outputs[name]
        layout = _layout(expected.shape, got.shape)
        if layout is None:
            table.rows.append(SubmoduleError(name=name, passed=False, max_abs=float("inf"), bound=0.0, worst={},
                                             candidate=0.0, oracle=0.0,
                                             note=f"output shape {tuple(got.shape)}, the built-in's "
                                             f"{tuple(expected.shape)}: no layout matches"))
            continue
        v = judge(name, layout[1](got.to("cpu", torch.float64)), expected)
        row = SubmoduleError(name=name, passed=v.passed, max_abs=v.max_abs, bound=v.bound, worst=_worst(v.worst_index,
                                                                                                        case),
                                                                                                        candidate=v.candidate_value,
                             oracle=v.oracle_value, note=v.note)
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
    standing = {id(m): n for n, span in mapping.items() for m in (span.entry, span.exit)}
    for path in reversed(stack):
        mapped = standing.get(id(obs.model.get_submodule(path)))
        if mapped is not None:
            inside = "" if path == inner else f", inside the target's {path or 'model'}"
            return f"{here}{inside}, which stands for {mapped or 'the module itself'}", mapped
    return here, ""
