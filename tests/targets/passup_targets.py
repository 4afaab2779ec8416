"""A layer built from parts it is handed, and a subclass that passes those parts up through
``super().__init__`` (tests/inference/test_passup.py): the subclass's own constructor never stores or calls
them, so which parameters take a module is read from the parent's (reference/inference/uses.py).

- ``Sublayers(features, attend, mix, p)``: pre-norm encoder layer; ``attend`` is an ``Attend(width, heads)``,
  ``mix`` a ``Mix(width, hidden)``.
- ``FineSublayers``: the subclass; its norms get eps 1e-6 (a configuration of the built-in). Bug twin
  ``FineSublayersBug``: the residual around the attention is missing.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Attend(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.core = nn.MultiheadAttention(width, heads, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.core(x, x, x, need_weights=False)[0]


class Mix(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.up, self.down = nn.Linear(width, hidden), nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(torch.relu(self.up(x)))


class Sublayers(nn.Module):
    def __init__(self, features: int, attend: nn.Module, mix: nn.Module, p: float) -> None:
        super().__init__()
        self.attend, self.mix = attend, mix
        self.norms = nn.ModuleList(nn.LayerNorm(features) for _ in range(2))
        self.drop = nn.Dropout(p)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop(self.attend(self.norms[0](x)))
        return x + self.drop(self.mix(self.norms[1](x)))


class FineSublayers(Sublayers):
    def __init__(self, features: int, attend: nn.Module, mix: nn.Module, p: float) -> None:
        super().__init__(features, attend, mix, p=p)
        for norm in self.norms:
            norm.eps = 1e-6


class FineSublayersBug(FineSublayers):
    def forward(self, x: Tensor) -> Tensor:
        x = self.drop(self.attend(self.norms[0](x)))
        return x + self.drop(self.mix(self.norms[1](x)))
