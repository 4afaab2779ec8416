"""Targets with traits real code has that the harness once could not take (issue 18), each correct and with one
bug: an attention that keeps its last attention probabilities on itself (a tensor that is not a graph leaf, which
``copy.deepcopy`` refuses), and a fixed-size attention whose heads are separate modules (the number of heads is
only seen by pairing)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class KeepsProbabilities(nn.Module):
    """Projections in a list, a raw output matrix, keys and values apart, the probabilities of the last call kept
    for inspection."""

    softmax_dim = -1

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.project = nn.ModuleList(nn.Linear(width, width) for _ in range(3))
        self.w_out = nn.Parameter(torch.empty(width, width))
        self.b_out = nn.Parameter(torch.zeros(width))
        nn.init.xavier_uniform_(self.w_out)
        self.probabilities: Tensor | None = None

    def _split(self, x: Tensor, i: int) -> Tensor:
        b, t, _ = x.shape
        return self.project[i](x).view(b, t, self.heads, -1).transpose(1, 2)

    def forward(self, query: Tensor, key: Tensor, value: Tensor) -> Tensor:  # batch-first
        q, k, v = (self._split(x, i) for i, x in enumerate((query, key, value)))
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        self.probabilities = scores.softmax(self.softmax_dim)
        mixed = (self.probabilities @ v).transpose(1, 2).flatten(2)
        return mixed @ self.w_out.T + self.b_out


class KeepsProbabilitiesBug(KeepsProbabilities):
    softmax_dim = -2  # the bug: normalized over the queries


class _HeadUnit(nn.Module):
    """One head: its own query, key and value projections (biased)."""

    def __init__(self, width: int, size: int, scale: float) -> None:
        super().__init__()
        self.q, self.k, self.v = (nn.Linear(width, size) for _ in range(3))
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:  # (T, B, E), sequence-first
        q, k, v = self.q(x), self.k(x), self.v(x)
        w = torch.einsum("tbd,sbd->bts", q, k) * self.scale
        return torch.einsum("bts,sbd->tbd", w.softmax(-1), v)


class HeadUnits(nn.Module):
    def __init__(self, width: int, heads: int, scale_by_width: bool = False) -> None:
        super().__init__()
        size = width // heads
        scale = 1 / math.sqrt(width if scale_by_width else size)
        self.units = nn.ModuleList(_HeadUnit(width, size, scale) for _ in range(heads))
        self.merge = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.merge(torch.cat([u(x) for u in self.units], dim=-1))


def head_units() -> HeadUnits:
    """Fixed at 20 wide with 5 heads: the harness must find 5 by measurement."""
    return HeadUnits(20, 5)


def head_units_bug() -> HeadUnits:
    return HeadUnits(20, 5, scale_by_width=True)  # the bug: scores scaled by the whole width


class ReadsScriptGlobals(nn.Module):
    """Pasted from a script whose sizes are globals defined only under ``if __name__ == "__main__"``."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.up = nn.Linear(d_model, HIDDEN)  # noqa: F821 - the user's missing global, on purpose
        self.down = nn.Linear(HIDDEN, d_model)  # noqa: F821

    def forward(self, x: Tensor) -> Tensor:
        return self.down(self.up(x).relu())


class PointwiseConvFF(nn.Module):
    """A position-wise feed-forward written as two convolutions of kernel size 1 over (batch, channels, time)."""

    relu_after_contract = False

    def __init__(self, d_model: int, dim_feedforward: int) -> None:
        super().__init__()
        self.expand = nn.Conv1d(d_model, dim_feedforward, kernel_size=1)
        self.contract = nn.Conv1d(dim_feedforward, d_model, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:  # (N, T, E)
        y = self.contract(torch.relu(self.expand(x.transpose(1, 2))))
        return (torch.relu(y) if self.relu_after_contract else y).transpose(1, 2)


class PointwiseConvFFBug(PointwiseConvFF):
    relu_after_contract = True  # the bug: the activation applied to the output too


class HugeFillAttention(nn.Module):
    """Heads in a Python loop over column blocks; blocked scores filled with -1e10, which float16 cannot hold."""

    def __init__(self, num_heads: int, model_dim: int) -> None:
        super().__init__()
        self.n = num_heads
        self.wq, self.wk, self.wv, self.wo = (nn.Linear(model_dim, model_dim) for _ in range(4))

    def forward(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:  # (N, T, E)
        q, k, v = self.wq(q), self.wk(k), self.wv(v)
        size = q.shape[-1] // self.n
        outs = []
        for h in range(self.n):
            cols = slice(h * size, (h + 1) * size)
            s = q[..., cols] @ k[..., cols].transpose(1, 2) / size ** 0.5
            if mask is not None:
                s = s.masked_fill(mask == 0, -1e10)
            outs.append(s.softmax(-1) @ v[..., cols])
        return self.wo(torch.cat(outs, -1))


class RaisesOnOnePosition(nn.Module):
    """A feed-forward that raises on a sequence of one position (its bug), whatever the precision."""

    def __init__(self, d_model: int, dim_feedforward: int) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(d_model, dim_feedforward), nn.Linear(dim_feedforward, d_model)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2] == 1:
            raise IndexError("no previous position")
        return self.b(torch.relu(self.a(x)))


class _Scorer(nn.Module):
    """One head of a causal attention, batch-first, no biases: the scores it keeps of the positions so far."""

    def __init__(self, width: int, size: int) -> None:
        super().__init__()
        self.value, self.key, self.query = (nn.Linear(width, size, bias=False) for _ in range(3))

    def forward(self, x: Tensor) -> Tensor:
        s = self.query(x) @ self.key(x).transpose(1, 2) / math.sqrt(self.query.out_features)
        upper = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool, device=x.device).triu(1)
        return s.masked_fill(upper, float("-inf")).softmax(-1) @ self.value(x)


class CausalHeadDict(nn.Module):
    """Six heads kept by name in a ModuleDict, always causal, fixed at 24 wide: at the drawn count nothing pairs,
    and at six the tensors pair but a check without the causal mask differs until calling measures it."""

    def __init__(self) -> None:
        super().__init__()
        self.heads = nn.ModuleDict({f"h{i}": _Scorer(24, 4) for i in range(6)})
        self.out = nn.Linear(24, 24)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(torch.cat([h(x) for h in self.heads.values()], dim=-1))
