"""An encoder layer written with raw parameters and ``F.linear`` (no ``nn.Linear``), whose bug twin runs its
feed-forward before its attention (tests/inference/test_reorder.py). The twin's first matrix, of shape
(2 * width, width) at ``hidden = 2 * width``, fits two thirds of the packed q/k/v projection, so pairing by
order of use leaves tensors on both sides without a counterpart; a one-to-one pairing by shape and kind exists
and is used, and the bug is then run and fails, instead of "cannot be paired".

- ``Raw(width, heads, hidden)``: post-norm, q/k/v and output with biases, ReLU feed-forward.
- ``RawReordered``: the feed-forward sublayer applied first, then the attention sublayer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _p(*shape: int) -> nn.Parameter:
    return nn.Parameter(torch.randn(*shape) * shape[-1] ** -0.5)


class Raw(nn.Module):
    def __init__(self, width: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.heads = heads
        self.Wq, self.Wk, self.Wv, self.Wo = _p(width, width), _p(width, width), _p(width, width), _p(width, width)
        self.bq, self.bk, self.bv, self.bo = (nn.Parameter(torch.zeros(width)) for _ in range(4))
        self.W1, self.b1 = _p(hidden, width), nn.Parameter(torch.zeros(hidden))
        self.W2, self.b2 = _p(width, hidden), nn.Parameter(torch.zeros(width))
        self.g1, self.s1 = nn.Parameter(torch.ones(width)), nn.Parameter(torch.zeros(width))
        self.g2, self.s2 = nn.Parameter(torch.ones(width)), nn.Parameter(torch.zeros(width))

    def attend(self, x: Tensor) -> Tensor:
        n, t, w = x.shape
        split = lambda y: y.view(n, t, self.heads, w // self.heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(F.linear(x, self.Wq, self.bq)), split(F.linear(x, self.Wk, self.bk)), \
            split(F.linear(x, self.Wv, self.bv))
        o = F.scaled_dot_product_attention(q, k, v)
        return F.linear(o.transpose(1, 2).reshape(n, t, w), self.Wo, self.bo)

    def mlp(self, x: Tensor) -> Tensor:
        return F.linear(F.relu(F.linear(x, self.W1, self.b1)), self.W2, self.b2)

    def forward(self, x: Tensor) -> Tensor:
        x = F.layer_norm(x + self.attend(x), x.shape[-1:], self.g1, self.s1)
        return F.layer_norm(x + self.mlp(x), x.shape[-1:], self.g2, self.s2)


class RawReordered(Raw):
    def forward(self, x: Tensor) -> Tensor:
        x = F.layer_norm(x + self.mlp(x), x.shape[-1:], self.g2, self.s2)
        return F.layer_norm(x + self.attend(x), x.shape[-1:], self.g1, self.s1)
