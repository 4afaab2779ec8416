"""A layer built from module instances, each handed to a wrapper that adds the residual (``self.wrap[0](x,
self.mixer)``: the layer never calls its parts itself), and a stack taking a ModuleList named like a count
(``blocks``). Pre-norm, so a constant nudge of one position is normalized away: measuring which class mixes
positions needs a random one. Every class here is a candidate part: one family per module."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn


class Mixer(nn.Module):
    def __init__(self, width: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.to_qkv = nn.Linear(width, 3 * width)
        self.to_out = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:  # (N, T, E)
        n, t, e = x.shape
        q, k, v = self.to_qkv(x).view(n, t, 3, self.n_heads, e // self.n_heads).permute(2, 0, 3, 1, 4)
        w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(e // self.n_heads), dim=-1)
        return self.to_out((w @ v).transpose(1, 2).reshape(n, t, e))


class Channel(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.up, self.down = nn.Linear(width, hidden), nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(torch.relu(self.up(x)))


class PreNormSkip(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(width)

    def forward(self, x: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:
        return x + fn(self.ln(x))


class Block(nn.Module):
    def __init__(self, width: int, mixer: nn.Module, channel: nn.Module) -> None:
        super().__init__()
        self.mixer, self.channel = mixer, channel
        self.wrap = nn.ModuleList(PreNormSkip(width) for _ in range(2))

    def forward(self, x: Tensor) -> Tensor:
        x = self.wrap[0](x, self.mixer)
        return self.wrap[1](x, self.channel)


class Trunk(nn.Module):
    again = False

    def __init__(self, width: int, blocks: nn.ModuleList) -> None:
        super().__init__()
        self.blocks = blocks
        self.final = nn.LayerNorm(width)

    def forward(self, x: Tensor) -> Tensor:
        y = x
        for block in self.blocks:
            y = block(y)
        return self.final(y + x if self.again else y)


class TrunkBug(Trunk):
    again = True  # the bug: the stack's input added back before the final norm
