"""A layer whose norms are written out with the scale first (``gain * (x - mu) / sd + offset``) and whose
attention has no q/k/v bias (tests/inference/test_handnorm.py): the built-in's in_proj_bias is held at 0, and each
norm's offset must pair with its own norm's bias, not with the free in_proj_bias that comes first in order.

- ``Stretch(width, heads, hidden)``: a post-norm encoder layer in that style. Bug twin ``StretchBug``: the second
  norm's offset is subtracted.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class _Norm(nn.Module):
    def __init__(self, width: int, sign: float = 1.0) -> None:
        super().__init__()
        self.gain, self.offset, self.sign = nn.Parameter(torch.ones(width)), nn.Parameter(torch.zeros(width)), sign

    def forward(self, x: Tensor) -> Tensor:
        mu = x.mean(-1, keepdim=True)
        sd = (x - mu).pow(2).mean(-1, keepdim=True).add(1e-5).sqrt()
        return self.gain * (x - mu) / sd + self.sign * self.offset


class Stretch(nn.Module):
    sign = 1.0

    def __init__(self, width: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.heads = heads
        self.ask, self.look, self.take = (nn.Linear(width, width, bias=False) for _ in range(3))
        self.tell = nn.Linear(width, width)
        self.first, self.second = _Norm(width), _Norm(width, self.sign)
        self.widen, self.narrow = nn.Linear(width, hidden), nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = ((f(x).unflatten(-1, (self.heads, -1)).transpose(1, 2)) for f in (self.ask, self.look, self.take))
        mixed = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1) @ v
        x = self.first(x + self.tell(mixed.transpose(1, 2).flatten(2)))
        return self.second(x + self.narrow(torch.relu(self.widen(x))))


class StretchBug(Stretch):
    sign = -1.0
