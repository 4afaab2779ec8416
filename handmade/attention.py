"""Scaled dot-product attention (section 3.2.1) and multi-head attention (section 3.2.2)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from handmade.masks import canonical_masks, sizes


def check_heads(embed_dim: int, num_heads: int, names: tuple[str, str] = ("embed_dim", "num_heads")) -> None:
    """Both positive and the heads split ``embed_dim`` evenly; the message uses the caller's argument ``names``."""
    (e, h), values = names, f"got {names[0]}={embed_dim} and {names[1]}={num_heads}"
    if embed_dim <= 0 or num_heads <= 0:
        raise ValueError(f"{e} and {h} must be greater than 0, {values}")
    if embed_dim % num_heads != 0:
        raise ValueError(f"{e} must be divisible by {h}, {values}")


class ScaledDotProductAttention(nn.Module):
    """Attention(Q, K, V) = softmax(Q Kᵀ / sqrt(d_k)) V (section 3.2.1, equation 1), plus an additive mask."""

    returns_weights = True  # the default core; handmade.tiled_attention.TiledAttention returns none

    def forward(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout_p: float) -> tuple[Tensor, Tensor]:
        """q (N, H, L, D), k and v (N, H, S, D), mask broadcastable to (N, H, L, S) -> out, probabilities.

        A query whose keys are all blocked attends to nothing (output 0), as in torch's layers.
        """
        dtype = q.dtype
        if dtype in (torch.float16, torch.bfloat16):  # as torch's kernels: scores, softmax and sums in float32 (a
            q, k, v = q.float(), k.float(), v.float()  # rounded score of 30 is off by 0.1, a 10% change in its weight)
        scores = (q * (1.0 / math.sqrt(q.size(-1)))) @ k.transpose(-2, -1)  # (N, H, L, S)
        if mask is None:
            weights = F.softmax(scores, dim=-1)
        else:
            # A row whose keys are all -inf would be softmax(-inf...) = NaN; torch's layers give 0 there. Such rows
            # are unblocked in the mask (small: it broadcasts over heads), so the softmax stays finite, then zeroed
            # by a multiply (on CPU ~10x faster than masked_fill with a mask broadcast along the last dim).
            blocked = torch.isneginf(mask).all(dim=-1, keepdim=True)
            scores += mask.masked_fill(blocked, 0.0)  # in place: the matmul's backward does not need its output
            weights = F.softmax(scores, dim=-1) * (~blocked).to(scores.dtype)
        weights = F.dropout(weights, p=dropout_p) if dropout_p > 0.0 else weights
        return (weights @ v).to(dtype), weights.to(dtype)


class MultiheadAttention(nn.Module):
    """MultiHead(Q, K, V) = Concat(head_1, ..., head_h) W^O, head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V).

    Section 3.2.2, with separate q, k, v projections; a drop-in for nn.MultiheadAttention.
    """

    def __init__(
        self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True, add_bias_kv: bool = False,
        add_zero_attn: bool = False, kdim: int | None = None, vdim: int | None = None, batch_first: bool = False,
        device: torch.device | str | None = None, dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_heads(embed_dim, num_heads)
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"dropout probability must be between 0 and 1, got dropout={dropout}")
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
        self.kdim = kdim if kdim is not None else embed_dim
        self.vdim = vdim if vdim is not None else embed_dim
        self.dropout, self.batch_first, self.add_zero_attn = dropout, batch_first, add_zero_attn
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **factory)
        self.k_proj = nn.Linear(self.kdim, embed_dim, bias=bias, **factory)
        self.v_proj = nn.Linear(self.vdim, embed_dim, bias=bias, **factory)
        self.attention: nn.Module = ScaledDotProductAttention()  # equation 1; handmade.use_tiled_attention swaps it
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **factory)
        self.bias_k = nn.Parameter(torch.randn(1, 1, embed_dim, **factory) * embed_dim**-0.5) if add_bias_kv else None
        self.bias_v = nn.Parameter(torch.randn(1, 1, embed_dim, **factory) * embed_dim**-0.5) if add_bias_kv else None

    def forward(
        self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None,
        need_weights: bool = True, attn_mask: Tensor | None = None, average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Attend from ``query`` (L, N, E) [or (N, L, E) when batch_first, or (L, E)] to ``key``/``value``."""
        L, N = self._check_inputs(query, key, value)
        names = ("query", "key", "attn_mask", "key_padding_mask", "is_causal")
        attn_mask, key_padding_mask = canonical_masks(
            query, key, self.batch_first, self.num_heads, names, attn_mask, key_padding_mask, is_causal, need_weights
        )
        batched = N is not None
        if not batched:  # work sequence-first and batched, like torch, so layouts (and dropout draws) agree
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
        elif self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        N, H, D = query.size(1), self.num_heads, self.head_dim

        # 1) project q, k, v and split heads
        q = self.q_proj(query)
        k, v = self._extend_keys(self.k_proj(key), self.v_proj(value))
        q, k, v = (x.view(x.size(0), N, H, D).permute(1, 2, 0, 3) for x in (q, k, v))  # (N, H, L or S, D)
        # 2) apply attention (equation 1) on all heads
        causal = is_causal and key_padding_mask is None and not need_weights  # the hint replaces the mask
        mask = self._merge_masks(attn_mask, key_padding_mask, causal, q, k.size(2))
        # a core that returns no weights (the tiled one) gives way to equation 1 when they are asked for
        core = self.attention if self.attention.returns_weights or not need_weights else ScaledDotProductAttention()
        out, weights = core(q, k, v, mask, self.dropout if self.training else 0.0)
        # 3) concatenate heads and apply the output projection W^O
        out = self.out_proj(out.permute(2, 0, 1, 3).reshape(L, N, H * D))  # (L, N, E)
        if not batched:
            out = out.squeeze(1)
        elif self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        weights = weights.mean(dim=1) if average_attn_weights else weights
        return out, weights if batched else weights.squeeze(0)

    def _extend_keys(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Options nn.Transformer never uses: a learned key/value (add_bias_kv), then a zero one (add_zero_attn)."""
        N, E = k.shape[1:]
        if self.bias_k is not None and self.bias_v is not None:
            k, v = torch.cat([k, self.bias_k.expand(1, N, E)]), torch.cat([v, self.bias_v.expand(1, N, E)])
        if self.add_zero_attn:
            k, v = torch.cat([k, k.new_zeros(1, N, E)]), torch.cat([v, v.new_zeros(1, N, E)])
        return k, v  # (S + extra, N, E)

    def _merge_masks(
        self, attn_mask: Tensor | None, key_padding_mask: Tensor | None, causal: bool, q: Tensor, key_len: int
    ) -> Tensor | None:
        """One additive mask broadcastable to (N, H, L, key_len); the extra keys of _extend_keys are never blocked."""
        N, H, L, _ = q.shape
        if causal:  # top-left aligned: key j is blocked for query i when j > i
            return torch.full((L, key_len), float("-inf"), dtype=q.dtype, device=q.device).triu(diagonal=1)
        mask = attn_mask.view(N, H, L, -1) if attn_mask is not None and attn_mask.dim() == 3 else attn_mask
        if key_padding_mask is not None:
            padding = key_padding_mask.view(N, 1, 1, -1)
            mask = padding if mask is None else mask + padding
        if mask is not None and mask.size(-1) < key_len:
            mask = F.pad(mask, (0, key_len - mask.size(-1)))
        return mask

    def _check_inputs(self, query: Tensor, key: Tensor, value: Tensor) -> tuple[int, int | None]:
        """Validate ranks, sizes and dtypes; return (L, N) of the query (N is None when unbatched)."""
        L, N = sizes(query, "query", self.batch_first)
        if key.dim() != query.dim() or value.dim() != query.dim():
            raise ValueError(
                f"key and value must have the rank of query ({query.dim()}-D), got key {tuple(key.shape)} "
                f"and value {tuple(value.shape)}"
            )
        key_batch = sizes(key, "key", self.batch_first)[1]
        inputs = (("query", query, self.embed_dim), ("key", key, self.kdim), ("value", value, self.vdim))
        for name, x, features in inputs:
            if x.size(-1) != features:
                raise ValueError(f"{name} must have {features} features (last dim), got shape {tuple(x.shape)}")
        for name, x, _ in inputs:
            if x.dtype != self.q_proj.weight.dtype:
                raise TypeError(
                    f"{name} dtype must match the module's parameters, got {x.dtype} and {self.q_proj.weight.dtype}"
                )
        if key.shape[:-1] != value.shape[:-1]:
            raise ValueError(
                f"key and value must have the same batch and length, got key {tuple(key.shape)} "
                f"and value {tuple(value.shape)}"
            )
        if key_batch != N:
            raise ValueError(f"query and key must have the same batch size, got {N} and {key_batch}")
        return L, N
