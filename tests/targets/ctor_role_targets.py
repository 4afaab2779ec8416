"""Targets whose constructor parameters say their role only by how they are written or used
(tests/inference/test_ctor_roles.py); kept apart from tests/targets/ctor_targets.py, whose classes are each
other's candidate sub-modules.

- ``Gate(span, number_of_heads, masked, widen_ratio)``: a batch-first post-norm encoder layer; ``span`` is a width
  no table names, ``number_of_heads`` a count, ``masked`` an untyped flag (tested for truth in forward),
  ``widen_ratio`` the feed-forward's multiple. Twin ``GateBug``: the flag is read inverted (causal when not
  masked), which, built with the flag False, makes a layer that is always causal, and is checked as one.
- ``Knobbed(knobs)``: a causal pre-norm block configured by a dataclass that also carries ``stack_height``,
  which the block never reads (the model it was written for does).
- ``NamedOnly(d_model, nhead, dim_feedforward, activation)``: takes its activation by name only.
- ``Squeeze(width, inner=None)``: a feed-forward whose hidden width defaults to its input width.
- ``PerHead(model_width, count_heads, dim_per_head)``: attention whose per-head width is its own parameter.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Gate(nn.Module):
    def __init__(self, span, number_of_heads, masked, widen_ratio) -> None:  # type: ignore[no-untyped-def]
        super().__init__()
        self.masked = masked
        self.attend = nn.MultiheadAttention(span, number_of_heads, batch_first=True)
        self.grow, self.shrink = nn.Linear(span, span * widen_ratio), nn.Linear(span * widen_ratio, span)
        self.first, self.second = nn.LayerNorm(span), nn.LayerNorm(span)

    def _blocked(self, steps: int) -> Tensor | None:
        return torch.ones(steps, steps, dtype=torch.bool).triu(1) if self.masked else None

    def forward(self, rows: Tensor) -> Tensor:
        rows = self.first(rows + self.attend(rows, rows, rows, attn_mask=self._blocked(rows.shape[1]),
                                             need_weights=False)[0])
        return self.second(rows + self.shrink(F.relu(self.grow(rows))))


class GateBug(Gate):
    def _blocked(self, steps: int) -> Tensor | None:
        return None if self.masked else torch.ones(steps, steps, dtype=torch.bool).triu(1)


@dataclass
class Knobs:
    width: int = 32
    n_heads: int = 4
    stack_height: int = 3  # the whole model's, not the block's


class Knobbed(nn.Module):
    def __init__(self, knobs: Knobs) -> None:
        super().__init__()
        self.heads = knobs.n_heads
        self.pre_attend, self.pre_mlp = nn.LayerNorm(knobs.width), nn.LayerNorm(knobs.width)
        self.packed, self.out = nn.Linear(knobs.width, 3 * knobs.width), nn.Linear(knobs.width, knobs.width)
        self.up, self.down = nn.Linear(knobs.width, 4 * knobs.width), nn.Linear(4 * knobs.width, knobs.width)

    def forward(self, x: Tensor) -> Tensor:
        n, steps, e = x.shape
        q, k, v = (t.reshape(n, steps, self.heads, -1).transpose(1, 2)
                   for t in self.packed(self.pre_attend(x)).split(e, dim=-1))
        mixed = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(n, steps, e)
        x = x + self.out(mixed)
        return x + self.down(F.relu(self.up(self.pre_mlp(x))))


class NamedOnly(nn.Module):
    FUNCTIONS = {"relu": F.relu, "gelu": F.gelu}

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, activation: str = "relu") -> None:
        super().__init__()
        self.act = self.FUNCTIONS[activation]  # a KeyError for anything but a name it knows
        self.attn = nn.MultiheadAttention(d_model, nhead)
        self.lin1, self.lin2 = nn.Linear(d_model, dim_feedforward), nn.Linear(dim_feedforward, d_model)
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)

    def forward(self, src: Tensor) -> Tensor:
        src = self.norm1(src + self.attn(src, src, src, need_weights=False)[0])
        return self.norm2(src + self.lin2(self.act(self.lin1(src))))


class Squeeze(nn.Module):
    def __init__(self, width, inner=None) -> None:  # type: ignore[no-untyped-def]
        super().__init__()
        inner = inner or width
        self.a, self.b = nn.Linear(width, inner), nn.Linear(inner, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.b(F.relu(self.a(x)))


class PerHead(nn.Module):
    def __init__(self, model_width, count_heads, dim_per_head) -> None:  # type: ignore[no-untyped-def]
        super().__init__()
        inner = count_heads * dim_per_head
        self.count_heads = count_heads
        self.to_q, self.to_k, self.to_v = (nn.Linear(model_width, inner) for _ in range(3))
        self.to_out = nn.Linear(inner, model_width)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:  # (N, L, E)
        split = [f(t).unflatten(-1, (self.count_heads, -1)).transpose(1, 2)
                 for f, t in ((self.to_q, q), (self.to_k, k), (self.to_v, v))]
        return self.to_out(F.scaled_dot_product_attention(*split).transpose(1, 2).flatten(-2))
