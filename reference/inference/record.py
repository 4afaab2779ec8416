"""Record how a module uses its parameters in one forward pass: order, orientation and role of each.

A ``TorchFunctionMode`` sees every torch operation and its tensor arguments, whatever the code is written
with: ``F.linear``, ``@``/``matmul``, ``einsum``, ``addmm`` (GPT-2's ``Conv1D``), ``F.layer_norm``, or a
LayerNorm written by hand (``gamma * x_hat + beta``). Views of a parameter (``W.T``, ``W[:E]``,
``W.view(...)``) are followed back to it. For each parameter it records

- ``order``: the index of the first operation that touched it (its place in the forward pass);
- ``orientation`` of a matrix at its first product: ``"out_in"`` (``F.linear``'s (out, in), ``W @ x``) or
  ``"in_out"`` (``x @ W``, ``addmm(b, x, W)``), None when the operation does not say;
- ``kind`` of a vector at its first use: ``"scale"`` (multiplied, a norm's weight) or ``"shift"`` (added,
  a bias), ``"matrix"`` for a degenerate matrix in a product (``(1, E)``), None when the operation does not say;
- ``group``: the parameters first touched by the same operation, in argument order (a tie to break);
- ``partner`` of a shift: the matrix (or scale) whose result it is added to (``linear(x, W, b)``, ``x @ W + b``,
  ``gain * x_hat + shift``): activations are tagged with the parameter whose product made them, so a bias is
  paired with the built-in's bias of the projection its matrix holds, not with the next free one by order.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

# operations that return a view or copy of their tensor argument: the result still stands for the parameter
DERIVE = {"t", "T", "mT", "H", "transpose", "permute", "view", "reshape", "__getitem__", "split", "chunk", "unbind",
          "contiguous", "to", "type_as", "float", "double", "half", "bfloat16", "unsqueeze", "squeeze", "expand",
          "expand_as", "clone", "detach", "flatten", "unflatten", "narrow", "view_as", "reshape_as", "stack", "cat",
          "tensor_split", "split_with_sizes", "movedim", "swapaxes", "swapdims", "repeat", "__get__"}
SHIFT = {"add", "__add__", "__radd__", "__iadd__", "add_", "sub", "__sub__", "__rsub__", "sub_"}
SCALE = {"mul", "__mul__", "__rmul__", "__imul__", "mul_", "div", "__truediv__", "__rtruediv__"}
PRODUCT = {"matmul", "mm", "__matmul__", "__rmatmul__", "addmm", "linear", "einsum", "bmm", "baddbmm", "tensordot"}


@dataclass(kw_only=True)
class Use:
    """How one parameter is used in the recorded forward pass."""

    order: int
    op: str = ""
    orientation: str | None = None
    kind: str | None = None
    uses: int = 0  # operations that consumed it (products, sums, norms)
    group: tuple[str, ...] = ()
    position: int = 0  # its place among the parameters first touched by the same operation
    partner: str | None = None  # a shift's: the matrix or scale whose result it was first added to


@dataclass
class _Derived:
    root: str
    transposed: bool = False
    reshaped: bool = False


def _op_name(func: Any) -> str:
    name = getattr(func, "__name__", str(func))
    if name == "__get__":
        return str(getattr(getattr(func, "__self__", None), "__name__", name))
    return name


def _transposes(name: str, args: tuple[Any, ...], kwargs: dict[str, Any], source: Tensor) -> bool:
    if name in ("t", "T", "mT", "H", "swapaxes", "swapdims"):
        return source.dim() == 2 or name in ("mT", "swapaxes", "swapdims")
    if name == "transpose":
        dims = [a for a in args[1:3] if isinstance(a, int)]
        return len(dims) == 2 and {d % max(source.dim(), 1) for d in dims} == {source.dim() - 2, source.dim() - 1}
    if name == "permute":
        dims = list(args[1:]) if len(args) > 2 else list(args[1]) if len(args) > 1 else []
        return dims == [1, 0]
    return False


def _einsum_orientation(args: tuple[Any, ...], index: int) -> str | None:
    """(out, in) or (in, out) of operand ``index`` (a 2-d matrix) of an einsum, by which index is summed."""
    equation = args[0] if args and isinstance(args[0], str) else None
    if equation is None:
        return None
    eq = equation.replace(" ", "")
    lhs, _, out = eq.partition("->")
    terms = lhs.split(",")
    if not _:
        letters = re.sub(r"[^a-zA-Z]", "", lhs)
        out = "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    if index >= len(terms) or len(terms[index]) != 2:
        return None
    a, b = terms[index][0], terms[index][1]
    others = "".join(t for i, t in enumerate(terms) if i != index)
    summed = [c for c in (a, b) if c not in out and c in others]
    if summed == [a]:
        return "in_out"
    if summed == [b]:
        return "out_in"
    return None


class _Recorder(TorchFunctionMode):
    def __init__(self, names: dict[int, str], matrices: set[str], tables: set[str] | None = None) -> None:
        super().__init__()
        self.matrices = matrices  # parameters with two or more dimensions longer than 1
        self.tables = tables or set()  # parameters with two or more dimensions (a (1, E) matrix too)
        self.derived: dict[int, _Derived] = {pid: _Derived(name) for pid, name in names.items()}
        self.keep: list[Any] = []  # derived tensors stay alive, so their ids are not reused
        self.uses: dict[str, Use] = {}
        self.step = 0
        self.made_by: dict[int, str] = {}  # activation id -> the matrix or scale whose product made it

    def _tag(self, outs: list[Tensor], root: str | None) -> None:
        if root is None:
            return
        for o in outs:
            self.made_by[id(o)] = root
            self.keep.append(o)

    def _made_by(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
        for t in tree_flatten((args, kwargs))[0]:
            if isinstance(t, Tensor) and id(t) in self.made_by and id(t) not in self.derived:
                return self.made_by[id(t)]
        return None

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = _op_name(func)
        tensors: list[tuple[int, str | None, Tensor, _Derived]] = []
        for i, arg in enumerate(args):
            tensors += [(i, None, t, self.derived[id(t)]) for t in tree_flatten(arg)[0]
                        if isinstance(t, Tensor) and id(t) in self.derived]
        for key, arg in kwargs.items():
            tensors += [(-1, key, t, self.derived[id(t)]) for t in tree_flatten(arg)[0]
                        if isinstance(t, Tensor) and id(t) in self.derived]
        if not tensors:
            if self.made_by and (name in DERIVE or name in SHIFT or name in SCALE):  # a view of a product, a sum
                # with one, or one scaled (a norm's ``scale * (x - mean) / std``: its shift is still the scale's)
                self._tag([o for o in tree_flatten(out)[0] if isinstance(o, Tensor)], self._made_by(args, kwargs))
            return out
        self.step += 1
        outs = [o for o in tree_flatten(out)[0] if isinstance(o, Tensor)]
        if not outs:  # .shape, .size(), .dim(): looking, not using
            return out
        first = [d.root for _, _, _, d in tensors if d.root not in self.uses]
        matrices_first = sorted(dict.fromkeys(first), key=lambda r: 0 if r in self.matrices else 1)
        for position, root in enumerate(matrices_first):
            self.uses[root] = Use(order=self.step, op=name, group=tuple(matrices_first), position=position)
        scaled = name in SCALE and len(tensors) == 1 and not any(  # times a constant: still the parameter
            isinstance(a, Tensor) for a in tree_flatten((args, kwargs))[0] if a is not tensors[0][2])
        if name in DERIVE or scaled:
            source, info = tensors[0][2], tensors[0][3]
            flip = _transposes(name, args, kwargs, source)
            for o in outs:
                reshaped = info.reshaped or (name in ("view", "reshape", "flatten", "unflatten", "view_as")
                                             and o.dim() != source.dim())
                self.derived[id(o)] = _Derived(info.root, info.transposed != flip, reshaped)
                self.keep.append(o)
            return out
        for position, kwarg, tensor, info in tensors:
            self._consume(name, args, position, kwarg, tensor, info)
        self._pair(name, tensors, args, kwargs, outs)
        return out

    def _pair(self, name: str, tensors: list[tuple[int, str | None, Tensor, _Derived]], args: tuple[Any, ...],
              kwargs: dict[str, Any], outs: list[Tensor]) -> None:
        """A shift's partner (the matrix or scale of the same operation, or whose product it is added to), and
        the outputs tagged with the matrix or scale that made them."""
        roots = [d.root for _, _, _, d in tensors]
        maker = next((r for r in roots if r in self.tables or self.uses[r].kind == "scale"), None)
        if name in SHIFT or name in ("linear", "addmm", "layer_norm", "group_norm", "rms_norm"):
            partner = maker or self._made_by(args, kwargs)
            for root in roots:
                use = self.uses[root]
                if use.partner is None and use.kind == "shift" and partner is not None and partner != root:
                    use.partner = partner
        self._tag(outs, maker if maker is not None else self._made_by(args, kwargs) if name in SHIFT else None)

    def _consume(self, name: str, args: tuple[Any, ...], position: int, kwarg: str | None, tensor: Tensor,
                 info: _Derived) -> None:
        """Orientation or kind from the first operation that consumes the parameter (or a view of it)."""
        use = self.uses[info.root]
        use.uses += 1
        if use.uses > 1:
            return
        if info.root in self.matrices and sum(1 for d in tensor.shape if d != 1) >= 2:
            orientation = None if info.reshaped else _orientation(name, args, position, kwarg, tensor)
            if orientation is not None and info.transposed:
                orientation = "in_out" if orientation == "out_in" else "out_in"
            use.orientation = orientation
        elif name in PRODUCT and tensor.dim() >= 2 and not (name == "addmm" and position == 0):
            use.kind = "matrix"  # a (1, E) or (1, 1) matrix: not a bias however few its elements
        else:
            use.kind = _kind(name, position, kwarg) or use.kind


def _orientation(name: str, args: tuple[Any, ...], position: int, kwarg: str | None, tensor: Tensor) -> str | None:
    """How operation ``name`` reads a matrix at argument ``position``: out_in (as nn.Linear) or in_out."""
    if name == "linear" and (position == 1 or kwarg == "weight"):
        return "out_in"
    if name in ("matmul", "mm", "__matmul__"):
        return "in_out" if position == 1 else "out_in"
    if name == "__rmatmul__":
        return "in_out" if position == 0 else "out_in"
    if name == "addmm":
        return "in_out" if position == 2 else "out_in" if position == 1 else None
    if name == "einsum":
        operands = args[1] if len(args) == 2 and isinstance(args[1], (list, tuple)) else args[1:]
        index = next((i for i, o in enumerate(operands) if o is tensor), -1)
        return _einsum_orientation((args[0], *operands), index)
    return None


def _kind(name: str, position: int, kwarg: str | None) -> str | None:
    """A vector's role in operation ``name``: a scale (multiplies) or a shift (adds); None if neither."""
    if name == "layer_norm":
        return "scale" if position == 2 or kwarg == "weight" else "shift"
    if (name == "linear" and (position == 2 or kwarg == "bias")) or (name == "addmm" and position == 0) \
            or name in SHIFT:
        return "shift"
    return "scale" if name in SCALE else None


@dataclass
class Recording:
    """Each parameter's use in one forward pass, by its name; ``unused``: parameters the pass never touched."""

    uses: dict[str, Use] = field(default_factory=dict)
    unused: tuple[str, ...] = ()

    def ordered(self) -> list[str]:
        return sorted(self.uses, key=lambda n: (self.uses[n].order, self.uses[n].position))


def record_uses(model: nn.Module, run: Callable[[nn.Module], Any]) -> Recording:
    """Run ``run(model)`` once under a recording mode; how each of ``model``'s parameters was used."""
    names = {id(p): name for name, p in model.named_parameters()}
    matrices = {name for name, p in model.named_parameters() if sum(1 for d in p.shape if d != 1) >= 2}
    recorder = _Recorder(names, matrices, {name for name, p in model.named_parameters() if p.dim() >= 2})
    with recorder:
        run(model)
    unused = tuple(n for n in names.values() if n not in recorder.uses)
    return Recording(recorder.uses, unused)
