"""A layer built from a part, next to a class that never builds (tests/inference/test_ctor_parts.py): the
harness tries that class once per set of options, not once per drawn case.

- ``Wrapper(width, mixer, block)``: a post-norm encoder layer that calls its two parts.
- ``Mixer(width, heads)`` and ``Mlp(width, hidden)``: the parts.
- ``Broken(width, steps)``: a class whose constructor always raises; it counts its calls.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(width, hidden), nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.b(torch.relu(self.a(x)))


class Broken(nn.Module):
    calls = 0

    def __init__(self, width: int, steps: int) -> None:
        super().__init__()
        type(self).calls += 1
        raise ValueError("never builds")

    def forward(self, x: Tensor) -> Tensor:
        return x


class Mixer(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.inner = nn.MultiheadAttention(width, heads, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(x, x, x, need_weights=False)[0]


class Wrapper(nn.Module):
    def __init__(self, width: int, mixer: nn.Module, block: nn.Module) -> None:
        super().__init__()
        self.mixer, self.block = mixer, block
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm1(x + self.mixer(x))
        return self.norm2(x + self.block(x))
