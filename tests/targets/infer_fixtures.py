"""More implementation styles for the inference tests (tests/inference/test_infer.py), each unlike handmade's.

- ``GPT2Attention``: GPT-2's self-attention, ``Conv1D`` weights stored (in, out) and applied with addmm,
  one packed (E, 3E) ``c_attn``; it takes ``attention_mask`` and returns (output, per-head weights).
- ``PerHeadAttention``: one small module per head (query/key/value Linears of (D, E), no biases) and a
  concatenation, the way some courses write heads.
- ``EinsumEncoderLayer``: a functional post-norm encoder layer: raw Parameters, a packed (E, 3E) ``qkv``
  used through einsum, ``F.layer_norm`` with its weights as plain tensors, relu feed-forward, seq-first.
- ``StackedAttention``: q/k/v weights ``w1``, ``w2``, ``w3`` first used together in one ``torch.stack``,
  where ``w1`` is the key projection: nothing says which is which (the ambiguous model).
- ``SharedNorm``: a pre-norm layer that applies one LayerNorm twice (the built-in has two).
- ``MatmulAttention``: square (in, out) weights applied as ``x @ W``: only the product tells the orientation.
- ``ShiftFirstNorm``: a LayerNorm whose shift is touched before its scale (``beta.view(...) + gamma * x_hat``),
  with names that say nothing: only how each is used tells them apart.
- ``KVCrossAttention``: ``forward(x, context)``, a query Linear and one packed ``to_kv`` Linear (2E, E) for
  keys and values.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Conv1D(nn.Module):
    """GPT-2's linear layer: weight (in, out), y = x @ W + b through addmm."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.02)
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x: Tensor) -> Tensor:
        size_out = (*x.shape[:-1], self.nf)
        return torch.addmm(self.bias, x.reshape(-1, x.size(-1)), self.weight).view(size_out)


class GPT2Attention(nn.Module):
    def __init__(self, n_embd: int, n_head: int) -> None:
        super().__init__()
        self.n_head, self.split_size = n_head, n_embd
        self.c_attn = Conv1D(3 * n_embd, n_embd)
        self.c_proj = Conv1D(n_embd, n_embd)

    def _heads(self, t: Tensor) -> Tensor:
        return t.view(*t.shape[:-1], self.n_head, -1).permute(0, 2, 1, 3)

    def forward(self, hidden_states: Tensor, attention_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        q, k, v = self.c_attn(hidden_states).split(self.split_size, dim=2)
        q, k, v = self._heads(q), self._heads(k), self._heads(v)
        w = q @ k.transpose(-1, -2) / math.sqrt(v.size(-1))
        if attention_mask is not None:
            w = w + attention_mask
        w = w.softmax(-1)
        out = (w @ v).permute(0, 2, 1, 3).reshape(*hidden_states.shape)
        return self.c_proj(out), w


class Head(nn.Module):
    def __init__(self, embed_dim: int, head_size: int) -> None:
        super().__init__()
        self.query = nn.Linear(embed_dim, head_size, bias=False)
        self.key = nn.Linear(embed_dim, head_size, bias=False)
        self.value = nn.Linear(embed_dim, head_size, bias=False)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        scores = self.query(q) @ self.key(k).transpose(-2, -1) * self.query.out_features ** -0.5
        return scores.softmax(dim=-1) @ self.value(v)


class PerHeadAttention(nn.Module):
    def __init__(self, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        self.heads = nn.ModuleList(Head(embed_dim, embed_dim // num_heads) for _ in range(num_heads))
        self.proj = nn.Linear(embed_dim, embed_dim, bias=False)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return self.proj(torch.cat([h(q, k, v) for h in self.heads], dim=-1))


class EinsumEncoderLayer(nn.Module):
    def __init__(self, d: int, h: int, d_ff: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.h, self.eps = h, eps
        self.qkv = nn.Parameter(torch.randn(d, 3 * d) / d**0.5)
        self.qkv_b = nn.Parameter(torch.zeros(3 * d))
        self.out = nn.Parameter(torch.randn(d, d) / d**0.5)
        self.out_b = nn.Parameter(torch.zeros(d))
        self.ln = nn.ParameterList([nn.Parameter(torch.ones(d)), nn.Parameter(torch.zeros(d)),
                                    nn.Parameter(torch.ones(d)), nn.Parameter(torch.zeros(d))])
        self.up = nn.Parameter(torch.randn(d_ff, d) / d**0.5)
        self.up_b = nn.Parameter(torch.zeros(d_ff))
        self.down = nn.Parameter(torch.randn(d, d_ff) / d_ff**0.5)
        self.down_b = nn.Parameter(torch.zeros(d))

    def forward(self, x: Tensor) -> Tensor:  # (L, N, E)
        L, N, E = x.shape
        q, k, v = (torch.einsum("lne,ef->lnf", x, self.qkv) + self.qkv_b).chunk(3, dim=-1)
        q, k, v = (t.reshape(L, N, self.h, E // self.h) for t in (q, k, v))
        att = torch.einsum("lnhd,mnhd->nhlm", q, k).div(math.sqrt(E // self.h)).softmax(-1)
        y = torch.einsum("nhlm,mnhd->lnhd", att, v).reshape(L, N, E)
        x = F.layer_norm(x + torch.einsum("lne,ef->lnf", y, self.out) + self.out_b, (E,), self.ln[0], self.ln[1],
                         self.eps)
        ff = torch.einsum("lnf,ef->lne", torch.relu(torch.einsum("lne,fe->lnf", x, self.up) + self.up_b), self.down)
        return F.layer_norm(x + ff + self.down_b, (E,), self.ln[2], self.ln[3], self.eps)


class StackedAttention(nn.Module):
    def __init__(self, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        self.h = num_heads
        self.w1, self.w2, self.w3 = (nn.Parameter(torch.randn(embed_dim, embed_dim)) for _ in range(3))
        self.b = nn.Parameter(torch.zeros(3, embed_dim))
        self.o = nn.Linear(embed_dim, embed_dim)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        w = torch.stack([self.w1, self.w2, self.w3])  # w1 projects keys, w2 queries, w3 values
        kp, qp, vp = ((x @ w[i].T + self.b[i]) for i, x in enumerate((k, q, v)))
        N, L, E = qp.shape
        qh, kh, vh = (t.view(N, -1, self.h, E // self.h).transpose(1, 2) for t in (qp, kp, vp))
        y = F.scaled_dot_product_attention(qh, kh, vh)
        return self.o(y.transpose(1, 2).reshape(N, L, E))


class SharedNorm(nn.Module):
    """Pre-norm encoder layer applying ``self.norm`` before attention and before the feed-forward."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(d_model, nhead, batch_first=True)
        self.norm = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(nn.Linear(d_model, dim_feedforward), nn.ReLU(), nn.Linear(dim_feedforward, d_model))

    def forward(self, src: Tensor) -> Tensor:
        h = self.norm(src)
        src = src + self.attn(h, h, h, need_weights=False)[0]
        return src + self.ff(self.norm(src))


class MatmulAttention(nn.Module):
    def __init__(self, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        self.h = num_heads
        self.P = nn.ParameterList(nn.Parameter(torch.randn(embed_dim, embed_dim)) for _ in range(4))  # q, k, v, o
        self.c = nn.ParameterList(nn.Parameter(torch.zeros(embed_dim)) for _ in range(4))

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        N, L, E = q.shape
        qh, kh, vh = ((x @ self.P[i] + self.c[i]).view(N, -1, self.h, E // self.h).transpose(1, 2)
                      for i, x in enumerate((q, k, v)))
        y = F.scaled_dot_product_attention(qh, kh, vh).transpose(1, 2).reshape(N, L, E)
        return y @ self.P[3] + self.c[3]


class ShiftFirstNorm(nn.Module):
    def __init__(self, features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.p = nn.Parameter(torch.zeros(features))  # the shift, touched first
        self.r = nn.Parameter(torch.ones(features))  # the scale

    def forward(self, x: Tensor) -> Tensor:
        x_hat = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, keepdim=True, unbiased=False) + self.eps)
        return self.p.view(*[1] * (x.dim() - 1), -1) + self.r * x_hat


class KVCrossAttention(nn.Module):
    def __init__(self, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        self.h = num_heads
        self.to_kv = nn.Linear(embed_dim, 2 * embed_dim)
        self.to_q = nn.Linear(embed_dim, embed_dim)
        self.to_out = nn.Linear(embed_dim, embed_dim)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        N, L, E = x.shape
        k, v = self.to_kv(context).chunk(2, dim=-1)
        q = self.to_q(x)
        qh, kh, vh = (t.reshape(N, -1, self.h, E // self.h).transpose(1, 2) for t in (q, k, v))
        return self.to_out(F.scaled_dot_product_attention(qh, kh, vh).transpose(1, 2).reshape(N, L, E))
