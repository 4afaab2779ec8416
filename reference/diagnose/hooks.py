"""Forward hooks that record the calls and outputs of the modules standing for each site, and optionally feed
and replace them.

A site (mapping.Span) is one module, or an entry and an exit module: its input is recorded where the entry is
called and its output where the exit returns. **Everything kept is a copy**, as torch.ao.ns's loggers keep
theirs: an output changed in place after its module returned (``nn.ReLU(inplace=True)`` after a Linear,
``h += x`` on an attention's output) is recorded as the module returned it, and a tensor fed or substituted
into the target is a copy the target may change without touching the built-in's recording.

Tensors are matched by shape between layouts ((L, N, E) against (N, L, E), unbatched), so one recorder
serves the built-in and a target that keeps its tensors in another layout.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from reference.diagnose.mapping import Span
from reference.verdict.tolerance import judge


def _copy(value: Any) -> Any:
    """``value`` with every tensor in it detached and cloned (tuples, lists and dicts followed)."""
    if isinstance(value, Tensor):
        return value.detach().clone()
    if isinstance(value, (tuple, list)):
        return type(value)(_copy(v) for v in value)
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    return value


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
    """(built-in -> target layout, target -> built-in layout) when ``shape`` is ``ref`` rearranged: the other
    of batch- and sequence-first first, then features first (a convolution's (N, C, L))."""
    if shape == ref:
        return (lambda t: t), (lambda t: t)
    if len(ref) == 3 and tuple(shape) == (ref[1], ref[0], ref[2]):
        return (lambda t: t.transpose(0, 1)), (lambda t: t.transpose(0, 1))
    if len(ref) == 3:  # features first (a convolution's (N, C, L)): the first permutation the shapes allow
        for p in ((0, 2, 1), (1, 2, 0), (2, 0, 1), (2, 1, 0)):
            if tuple(shape) == tuple(ref[i] for i in p):
                back = tuple(p.index(i) for i in range(3))
                return (lambda t, p=p: t.permute(*p)), (lambda t, b=back: t.permute(*b))
    if len(ref) == 2 and tuple(shape) == (1, *ref):
        return (lambda t: t.unsqueeze(0)), (lambda t: t.squeeze(0))
    if len(ref) == 2 and tuple(shape) == (ref[0], 1, ref[1]):
        return (lambda t: t.unsqueeze(1)), (lambda t: t.squeeze(1))
    return None


class _Recorder:
    """Hooks one model's modules: records inputs/outputs per name; optionally feeds and replaces them."""

    def __init__(self, spans: Mapping[str, Span], order: dict[str, int]) -> None:
        # per module, one slot per call: (the site whose input this call is, the site whose output it is)
        self.slots: dict[int, list[tuple[str | None, str | None]]] = {}
        self.objects: dict[int, nn.Module] = {}
        for name in sorted(spans, key=lambda n: order.get(n, 1 << 30)):
            span = spans[name]
            if span.entry is span.exit:
                self._slot(span.entry, (name, name))
            else:
                self._slot(span.entry, (name, None))
                self._slot(span.exit, (None, name))
        self.count: dict[int, int] = {}
        # per module, which of its calls are its slots, when the target calls it more often than the built-in
        # calls the sites' modules (``picks``, measured on a first run): else its first calls are
        self.pick: dict[int, list[int]] = {}
        self.events: list[tuple[int, int]] = []  # (module, its call index) in the order the calls returned
        self.done: dict[str, int] = {}  # site -> the index in ``events`` at which it returned
        self.result: object = None  # what the whole model returned on the run these hooks watched
        self.stack: dict[int, list[tuple[str | None, int]]] = {}
        self.calls: dict[str, tuple[tuple, dict]] = {}
        self.inputs: dict[str, list[Tensor]] = {}
        self.fed: dict[str, Any] = {}  # the input the target gave a module, against the built-in's (a Verdict)
        self.fed_tensor: dict[str, Tensor] = {}
        self.outputs: dict[str, Tensor] = {}
        self.order: list[str] = []
        self.feed: dict[str, list[Tensor]] | None = None
        self.replace: dict[str, Tensor] | None = None

    def _slot(self, module: nn.Module, slot: tuple[str | None, str | None]) -> None:
        self.slots.setdefault(id(module), []).append(slot)
        self.objects[id(module)] = module

    def _pre(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        k = self.count.get(id(module), 0)
        self.count[id(module)] = k + 1
        calls, pick = self.slots[id(module)], self.pick.get(id(module))
        j = k if pick is None else pick.index(k) if k in pick else -1
        name, exit_name = calls[j] if 0 <= j < len(calls) else (None, None)
        self.stack.setdefault(id(module), []).append((exit_name, k))
        if name is None:
            return None
        self.calls[name] = _copy((args, dict(kwargs)))
        self.inputs[name] = [a.detach().clone() for a in args if isinstance(a, Tensor)]
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
            own = layout[1](mine.detach().to("cpu", torch.float64, copy=True))
            fed = judge(f"{name} input", own, ref)
            self.fed_tensor.setdefault(name, own)
            if name not in self.fed or fed.max_abs > self.fed[name].max_abs:
                self.fed[name] = fed
            value = layout[0](ref).to(mine.device, mine.dtype, copy=True)  # the target may change it in place
            if where == "a":
                new_args[key] = value
            else:
                new_kwargs[key] = value
        return tuple(new_args), new_kwargs

    def _post(self, module: nn.Module, args: tuple, kwargs: dict, output: object) -> object:
        name, k = self.stack[id(module)].pop()
        self.events.append((id(module), k))
        if name is not None:
            self.done[name] = len(self.events) - 1
        out = _first_tensor(output)
        if name is None or out is None:
            return None
        self.order.append(name)  # completion order: a layer's parts before the layer
        self.outputs[name] = out.detach().clone()  # a later in-place change (ReLU(inplace), +=) must not reach it
        if self.replace is None or name not in self.replace:
            return None
        layout = _layout(self.replace[name].shape, out.shape)
        if layout is None:
            return None
        return _replace_first(output, layout[0](self.replace[name]).to(out.device, out.dtype, copy=True))

    def picks(self, order: dict[str, int]) -> dict[int, list[int]]:
        """After a run: for each module called more often than it has slots, the calls that are its slots, in
        the built-in's order: each slot takes the module's first call returning after the site before it (in
        ``order``, whose module is called as often as its slots) returned. ``norm(x)`` added on the residual
        before the sublayer runs is not the norm after it; a self-attention called again as the cross-attention
        is the self-attention first."""
        extra = {m for m, n in self.count.items() if n > len(self.slots[m])}
        plain = {n: i for n, i in self.done.items() if not any(n in slot for m in extra for slot in self.slots[m])}
        when = {ev: i for i, ev in enumerate(self.events)}
        picks: dict[int, list[int]] = {}
        for m in extra:
            chosen: list[int] = []
            for entry, exit_name in self.slots[m]:
                rank = order.get(exit_name or entry or "", 0)
                after = max((i for n, i in plain.items() if order.get(n, 1 << 30) < rank), default=-1)
                later = [k for k in range(self.count[m]) if k > (chosen[-1] if chosen else -1)
                         and when.get((m, k), -1) > after]
                chosen.append(later[0] if later else (chosen[-1] + 1 if chosen else 0))
            picks[m] = chosen
        return picks

    def attach(self) -> list:
        handles = []
        for module in self.objects.values():
            handles.append(module.register_forward_pre_hook(self._pre, with_kwargs=True))
            handles.append(module.register_forward_hook(self._post, with_kwargs=True))
        return handles
