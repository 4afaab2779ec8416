"""The built-in's parameters as slots a target tensor can fill, and the target's tensors as what fills them.

A built-in parameter is a slot, and so is each part of it a target may hold separately: the q, k and v
thirds of ``in_proj_weight``/``in_proj_bias``, k and v together, and, within each third, one head's
rows. Each slot knows its shape in torch's (out, in) orientation, its kind (matrix, a norm's scale, a
bias-like shift) and its role (q/k/v/kv). The target's side is read from its names (``W_q``, ``query``,
``to_k`` give a role) and from the recorded use (order, orientation, kind).
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass

from torch import nn

from reference.inference.record import Recording, Use

ROLES = ("q", "k", "v")
ROLE_WORDS = {"q": {"q", "query", "queries", "wq", "toq", "qproj", "qlin", "wquery", "toqueries", "toquery"},
              "k": {"k", "key", "keys", "wk", "tok", "kproj", "klin", "wkey", "tokeys", "tokey"},
              "v": {"v", "value", "values", "wv", "tov", "vproj", "vlin", "wvalue", "tovalues", "tovalue"},
              "kv": {"kv", "tokv", "kvproj", "wkv", "keyvalue", "kvlin"}}
NORMS: tuple[type[nn.Module], ...] = (nn.LayerNorm, nn.RMSNorm) if hasattr(nn, "RMSNorm") else (nn.LayerNorm,)


@dataclass(frozen=True, kw_only=True)
class Slot:
    """Rows ``rows`` of built-in parameter ``name``."""

    name: str
    rows: tuple[int, int]
    shape: tuple[int, ...]
    kind: str  # "matrix", "scale", "shift" or "tensor"
    role: str | None
    order: float

    def describe(self, full: int) -> str:
        return self.name if self.rows == (0, full) else f"{self.name}[rows {self.rows[0]}:{self.rows[1]}]"


def builtin_slots(builtin: nn.Module, recording: Recording) -> tuple[list[Slot], dict[str, tuple[int, ...]]]:
    """Every slot of the built-in's parameters, in the order the recorded pass used them."""
    order = {name: i for i, name in enumerate(recording.ordered())}
    shapes = {name: tuple(p.shape) for name, p in builtin.named_parameters()}
    owners = {f"{prefix}.{leaf}" if prefix else leaf: module for prefix, module in builtin.named_modules()
              for leaf, _ in module.named_parameters(recurse=False)}
    slots: list[Slot] = []
    for name, shape in shapes.items():
        base = order.get(name, len(order) + len(slots))
        leaf = name.rpartition(".")[2]
        owner = owners.get(name)
        rows0 = (0, shape[0] if shape else 1)
        if isinstance(owner, nn.MultiheadAttention) and leaf in ("in_proj_weight", "in_proj_bias"):
            kind = "matrix" if leaf.endswith("weight") else "shift"
            slots.append(Slot(name=name, rows=rows0, shape=shape, kind=kind, role=None, order=base))
            E, H = owner.embed_dim, owner.num_heads
            kv = (E, 3 * E)  # k and v packed together (a cross-attention's ``to_kv``)
            slots.append(Slot(name=name, rows=kv, shape=(2 * E, *shape[1:]), kind=kind, role="kv", order=base + 0.25))
            for r, role in enumerate(ROLES):
                rows = (r * E, (r + 1) * E)
                slots.append(Slot(name=name, rows=rows, shape=(E, *shape[1:]), kind=kind, role=role,
                                  order=base + (r + 1) / 10))
                if H > 1:
                    D = E // H
                    for h in range(H):
                        hrows = (r * E + h * D, r * E + (h + 1) * D)
                        slots.append(Slot(name=name, rows=hrows, shape=(D, *shape[1:]), kind=kind, role=role,
                                          order=base + (r + 1) / 10 + h / 1000))
            continue
        if isinstance(owner, nn.MultiheadAttention) and leaf.endswith("_proj_weight"):
            slots.append(Slot(name=name, rows=rows0, shape=shape, kind="matrix", role=leaf[0], order=base))
            continue
        if isinstance(owner, NORMS):
            kind = "scale" if leaf == "weight" else "shift"
        elif len(shape) == 2:
            kind = "matrix"
        elif len(shape) == 1 or math.prod(shape) == max(shape, default=1):
            kind = "shift" if leaf == "bias" else "tensor"
        else:
            kind = "tensor"
        slots.append(Slot(name=name, rows=rows0, shape=shape, kind=kind, role=None, order=base))
    return slots, shapes


def companions(builtin: nn.Module, recording: Recording) -> dict[str, str]:
    """Matrix or scale -> the shift the built-in adds to its result (``out_proj.weight`` -> ``out_proj.bias``,
    ``in_proj_weight`` and ``q_proj_weight`` -> ``in_proj_bias``, a norm's weight -> its bias): from the
    built-in's modules, and from the recorded pass where it sees more."""
    found = {use.partner: name for name, use in recording.uses.items() if use.partner is not None
             and use.kind == "shift"}
    for prefix, module in builtin.named_modules():
        own = {name for name, _ in module.named_parameters(recurse=False)}
        at = f"{prefix}." if prefix else ""
        if {"weight", "bias"} <= own:
            found[f"{at}weight"] = f"{at}bias"
        if isinstance(module, nn.MultiheadAttention) and "in_proj_bias" in own:
            found |= {f"{at}{w}": f"{at}in_proj_bias" for w in own if w.endswith("proj_weight")}
    return found


def companion(of: Slot, slots: list[Slot], partners: dict[str, str],
              shapes: dict[str, tuple[int, ...]]) -> tuple[Slot, ...]:
    """The slots of the built-in's shift for matrix slot ``of``: the same rows of its bias (a q/k/v third, one
    head), or, where the bias is packed and the matrix is not (``q_proj_weight``), the third of its role."""
    name = partners.get(of.name)
    if name is None or not shapes.get(name) or not shapes.get(of.name):
        return ()
    if shapes[name][0] == shapes[of.name][0]:
        return tuple(s for s in slots if s.name == name and s.rows == of.rows)
    third = shapes[name][0] // 3
    if of.role in ROLES and shapes[name][0] == 3 * shapes[of.name][0]:
        return tuple(s for s in slots if s.name == name and s.role == of.role and s.rows[1] - s.rows[0] == third)
    return ()


def words(name: str) -> list[str]:
    """A dotted parameter name as lower-case words: ``attn.W_q.weight`` -> attn, w, q, wq, weight."""
    out: list[str] = []
    for part in name.split("."):
        spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", part)
        pieces = [p.lower() for p in re.split(r"[_\W]+", spaced) if p]
        out += [*pieces, "".join(pieces)]
    return out


@functools.lru_cache(maxsize=4096)
def role_of(name: str) -> str | None:
    """q, k or v when the name says so (``W_q``, ``query``, ``to_k``, ``v_proj``), otherwise None."""
    found = {role for role, ws in ROLE_WORDS.items() for w in words(name)[:-1] if w in ws}
    return found.pop() if len(found) == 1 else None


def vector_like(shape: tuple[int, ...]) -> bool:
    return len(shape) >= 1 and sum(1 for d in shape if d != 1) <= 1


@dataclass(frozen=True)
class Fit:
    """How a target tensor fills a slot: transposed or not."""

    slot: Slot
    transpose: bool


def fits(shape: tuple[int, ...], use: Use | None, slot: Slot) -> Fit | None:
    """Whether a target tensor of ``shape``, used as ``use`` records, can fill ``slot``, and how. A convolution
    of kernel size 1 (``(out, in, 1)``) is a matrix in torch's (out, in) orientation."""
    if len(shape) > 2 and slot.kind == "matrix" and all(d == 1 for d in shape[2:]):
        return Fit(slot, False) if shape[:2] == slot.shape else None
    if len(shape) == 2 and slot.kind == "matrix" and len(shape) == len(slot.shape):
        orientation = use.orientation if use else None
        same, flipped = shape == slot.shape, shape == slot.shape[::-1]
        if orientation == "out_in":
            return Fit(slot, False) if same else None
        if orientation == "in_out":
            return Fit(slot, True) if flipped else None
        return Fit(slot, False) if same else Fit(slot, True) if flipped else None
    stacked = len(shape) >= 2 and use is not None and use.kind is not None and use.orientation is None
    if (vector_like(shape) or stacked) and slot.kind in ("scale", "shift", "tensor") and vector_like(slot.shape):
        if math.prod(shape) != math.prod(slot.shape):
            return None
        kind = use.kind if use else None
        if kind is not None and slot.kind in ("scale", "shift") and kind != slot.kind:
            return None
        return Fit(slot, False)
    if shape == slot.shape and slot.kind == "tensor":
        return Fit(slot, False)
    return None
