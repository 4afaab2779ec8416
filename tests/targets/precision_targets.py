"""Targets whose arithmetic is not all at the precision they are run in (tests/harness/test_precision.py), and
constructors and layers in styles the other target modules do not have.

- ``Tempered(dim, heads)``: batch-first self-attention through one packed projection, its temperature a
  float32 tensor held as a plain attribute (``.to(float64)`` does not move it), so in float64 its results carry
  float32's rounding of sqrt(head width). Bug twin ``TemperedBug``: the temperature is the head width itself.
- ``TemperedVector``: the temperature a one-element float32 vector, which promotes float16 and bfloat16 scores
  to float32, so the product with the values raises in every case at those precisions.
- ``Lens(size, hops, d_in, d_out)``: attention whose input and output widths are parameters no table names.
- ``Chatty(width, heads, hidden)``: a post-norm encoder layer that returns its output with the attention
  weights, as many course layers do; the built-in returns the output alone.
- ``Widen(config)``: a feed-forward configured by a dict, its tanh GELU written out with a float32 constant:
  its configuration (tanh_gelu) is found at float32's agreement, not float64's.
- ``Relay(size, n_head, inner)``: a post-norm decoder layer with written-out norms of eps 1e-12; correct at every
  width the suite draws (a norm over one feature, where PyTorch's own gradient is rounding, is not drawn).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Tempered(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.mix = nn.Linear(dim, 3 * dim)
        self.back = nn.Linear(dim, dim)
        self.temperature = self.temperature_for(dim // heads)

    @staticmethod
    def temperature_for(width: int) -> Tensor:
        return torch.tensor(float(width)).sqrt()  # float32, and not a buffer

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.mix(x).chunk(3, dim=-1)
        q, k, v = (z.unflatten(-1, (self.heads, -1)).permute(0, 2, 1, 3) for z in (q, k, v))
        weights = torch.softmax(torch.einsum("bhid,bhjd->bhij", q, k) / self.temperature, dim=-1)
        return self.back(torch.einsum("bhij,bhjd->bhid", weights, v).permute(0, 2, 1, 3).flatten(2))


class TemperedBug(Tempered):
    @staticmethod
    def temperature_for(width: int) -> Tensor:
        return torch.tensor(float(width))


class TemperedVector(Tempered):
    @staticmethod
    def temperature_for(width: int) -> Tensor:
        return torch.tensor([float(width)]).sqrt()  # shape (1,): bfloat16 scores divided by it become float32


class Lens(nn.Module):
    def __init__(self, hops: int, d_in: int, d_out: int) -> None:
        super().__init__()
        self.hops = hops
        self.wq, self.wk, self.wv = (nn.Linear(d_in, d_out) for _ in range(3))
        self.wo = nn.Linear(d_out, d_out)

    def forward(self, query: Tensor, key: Tensor, value: Tensor) -> Tensor:
        split = [w(z).unflatten(-1, (self.hops, -1)).transpose(1, 2)
                 for w, z in ((self.wq, query), (self.wk, key), (self.wv, value))]
        return self.wo(F.scaled_dot_product_attention(*split).transpose(1, 2).flatten(2))


class Chatty(nn.Module):
    def __init__(self, width: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.talk = nn.MultiheadAttention(width, heads, batch_first=True)
        self.up, self.down = nn.Linear(width, hidden), nn.Linear(hidden, width)
        self.after_talk, self.after_ff = nn.LayerNorm(width), nn.LayerNorm(width)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        said, weights = self.talk(x, x, x)
        x = self.after_talk(x + said)
        return self.after_ff(x + self.down(torch.relu(self.up(x)))), weights


def _tanh_gelu(x: Tensor) -> Tensor:
    root = torch.tensor(2.0 / torch.pi).sqrt()  # float32, whatever x is
    return x * 0.5 * (1.0 + torch.tanh(root * (x + 0.044715 * x.pow(3))))


class Widen(nn.Module):
    """A feed-forward with a hand-written tanh GELU whose constant is a float32 tensor."""

    def __init__(self, config: dict) -> None:
        super().__init__()
        self.steps = nn.ModuleList([nn.Linear(config["width"], 4 * config["width"]),
                                    nn.Linear(4 * config["width"], config["width"])])

    def forward(self, x: Tensor) -> Tensor:
        return self.steps[1](_tanh_gelu(self.steps[0](x)))


class _TinyEpsNorm(nn.Module):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.w, self.b = nn.Parameter(torch.ones(size)), nn.Parameter(torch.zeros(size))

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(-1, keepdim=True)
        var = ((x - mean) ** 2).mean(-1, keepdim=True)
        return self.w * (x - mean) * torch.rsqrt(var + 1e-12) + self.b


class Relay(nn.Module):
    """A post-norm decoder layer with written-out norms of eps 1e-12 (as BERT-style course code has), taking its
    masks keyword-only."""

    def __init__(self, size: int, n_head: int, inner: int) -> None:
        super().__init__()
        self.own = nn.MultiheadAttention(size, n_head, batch_first=True)
        self.cross = nn.MultiheadAttention(size, n_head, batch_first=True)
        self.grow, self.shrink = nn.Linear(size, inner), nn.Linear(inner, size)
        self.n1, self.n2, self.n3 = _TinyEpsNorm(size), _TinyEpsNorm(size), _TinyEpsNorm(size)

    def forward(self, y: Tensor, memory: Tensor, *, look_ahead: Tensor | None = None) -> Tensor:
        y = self.n1(y + self.own(y, y, y, attn_mask=look_ahead, need_weights=False)[0])
        y = self.n2(y + self.cross(y, memory, memory, need_weights=False)[0])
        return self.n3(y + self.shrink(F.relu(self.grow(y))))
