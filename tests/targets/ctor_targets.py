"""Targets whose constructors take their sub-modules as instances (tests/inference/test_ctor_parts.py).

Every nn.Module class in this file is a candidate part for the others (the harness looks in the target's own
module), so the file holds one family: a norm (first, and position-wise: never taken for a feed-forward),
a sequence-first attention written from einsum, a GELU-free two-matrix
feed-forward, a post-norm ``Cell(width, attend, transform)`` built from them, its one-bug twin, a
``Tower(template, count)`` that replicates its template through a helper, ``Column(width, floors)`` that takes
its layers as a ModuleList, and a decoder layer ``Deck(width, own, other, transform)`` whose two attentions are
told apart by how it calls them (one input, or a sequence and a memory).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn


class RowNorm(nn.Module):
    """A norm over the last dimension (position-wise, like a feed-forward, but no part of one: it has no matrix)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.ones(width))

    def forward(self, seq: Tensor) -> Tensor:
        return self.gain * seq / seq.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()


class EinsumAttention(nn.Module):
    """Multi-head self-attention on (L, N, E) input, from four matrices and einsum."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value, self.mix = (nn.Linear(width, width) for _ in range(4))

    def forward(self, seq: Tensor) -> Tensor:
        length, batch, width = seq.shape
        split = [f(seq).reshape(length, batch, self.heads, width // self.heads) for f in
                 (self.query, self.key, self.value)]
        scores = torch.einsum("lnhd,snhd->nhls", split[0], split[1]) / (width // self.heads) ** 0.5
        mixed = torch.einsum("nhls,snhd->lnhd", scores.softmax(-1), split[2])
        return self.mix(mixed.reshape(length, batch, width))


class TwoMatrix(nn.Module):
    """Position-wise feed-forward: widen, ReLU, narrow."""

    def __init__(self, width: int, inner: int) -> None:
        super().__init__()
        self.widen, self.narrow = nn.Linear(width, inner), nn.Linear(inner, width)

    def forward(self, seq: Tensor) -> Tensor:
        return self.narrow(torch.relu(self.widen(seq)))


class Cell(nn.Module):
    """Post-norm encoder layer whose attention and feed-forward are given, feed-forward listed first."""

    def __init__(self, width, transform, attend) -> None:  # type: ignore[no-untyped-def]
        super().__init__()
        self.attend = attend
        self.transform = transform
        self.after_attend, self.after_transform = nn.LayerNorm(width), nn.LayerNorm(width)

    def forward(self, seq: Tensor) -> Tensor:
        seq = self.after_attend(seq + self.attend(seq))
        return self.after_transform(seq + self.transform(seq))


class CellBug(Cell):
    """Bug: the feed-forward's residual is dropped."""

    def forward(self, seq: Tensor) -> Tensor:
        seq = self.after_attend(seq + self.attend(seq))
        return self.after_transform(self.transform(seq))


def _replicate(template: nn.Module, times: int) -> nn.ModuleList:
    return nn.ModuleList(copy.deepcopy(template) for _ in range(times))


class Tower(nn.Module):
    """An encoder stack of ``count`` copies of a layer it is given, no final norm."""

    def __init__(self, template, count: int) -> None:  # type: ignore[no-untyped-def]
        super().__init__()
        self.storeys = _replicate(template, count)

    def forward(self, seq: Tensor) -> Tensor:
        for storey in self.storeys:
            seq = storey(seq)
        return seq


class Column(nn.Module):
    """An encoder stack given its layers as a ModuleList, no final norm."""

    def __init__(self, width: int, floors: nn.ModuleList) -> None:
        super().__init__()
        self.floors = floors
        self.width = width

    def forward(self, seq: Tensor) -> Tensor:
        for floor in self.floors:
            seq = floor(seq)
        return seq


class CrossEinsum(nn.Module):
    """Multi-head attention of a (L, N, E) sequence over a (S, N, E) memory, from four matrices and einsum."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value, self.mix = (nn.Linear(width, width) for _ in range(4))

    def forward(self, seq: Tensor, memory: Tensor) -> Tensor:
        (length, batch, width), steps = seq.shape, memory.shape[0]
        size = width // self.heads
        q = self.query(seq).reshape(length, batch, self.heads, size)
        k, v = (f(memory).reshape(steps, batch, self.heads, size) for f in (self.key, self.value))
        scores = torch.einsum("lnhd,snhd->nhls", q, k) / size ** 0.5
        return self.mix(torch.einsum("nhls,snhd->lnhd", scores.softmax(-1), v).reshape(length, batch, width))


class Deck(nn.Module):
    """Post-norm decoder layer given its self-attention, its attention over the memory and its feed-forward."""

    def __init__(self, width, own, other, transform) -> None:  # type: ignore[no-untyped-def]
        super().__init__()
        self.own, self.other, self.transform = own, other, transform
        self.norms = nn.ModuleList(nn.LayerNorm(width) for _ in range(3))

    def forward(self, seq: Tensor, memory: Tensor) -> Tensor:
        seq = self.norms[0](seq + self.own(seq))
        seq = self.norms[1](seq + self.other(seq, memory))
        return self.norms[2](seq + self.transform(seq))
