"""Scaled dot-product attention and multi-head attention (paper section 3.2)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from handmade.masks import to_additive, top_left_causal_mask, warn_if_mixed


def scaled_dot_product_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout_p: float
) -> tuple[Tensor, Tensor]:
    """softmax(q kᵀ / sqrt(D) + mask) v (equation 1); a query with every key blocked attends to nothing.

    q (N, H, L, D), k and v (N, H, S, D), mask additive and broadcastable to (N, H, L, S).
    Returns the output (N, H, L, D) and the attention probabilities (N, H, L, S).
    """
    dtype = q.dtype
    if dtype in (torch.float16, torch.bfloat16):  # as torch's kernels: scores, softmax and sums in float32 (a
        q, k, v = q.float(), k.float(), v.float()  # rounded score of 30 is off by 0.1, a 10% change in its weight)
    scores = (q * (1.0 / math.sqrt(q.size(-1)))) @ k.transpose(-2, -1)  # (N, H, L, S)
    if mask is not None:
        # A row whose keys are all -inf would be softmax(-inf...) = NaN; torch's layers give 0 there. Such rows
        # are unblocked in the mask (small: it broadcasts over heads), so the softmax stays finite, then zeroed
        # by a multiply (on CPU ~10x faster than masked_fill with a mask broadcast along the last dim).
        blocked = torch.isneginf(mask).all(dim=-1, keepdim=True)
        scores += mask.masked_fill(blocked, 0.0)  # in place: the matmul's backward does not need its output
        weights = F.softmax(scores, dim=-1) * (~blocked).to(scores.dtype)
    else:
        weights = F.softmax(scores, dim=-1)
    weights = F.dropout(weights, p=dropout_p) if dropout_p > 0.0 else weights
    return (weights @ v).to(dtype), weights.to(dtype)


class MultiheadAttention(nn.Module):
    """Multi-head attention (section 3.2.2) with separate q, k, v projections; a drop-in for nn.MultiheadAttention."""

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        add_bias_kv: bool = False,
        add_zero_attn: bool = False,
        kdim: int | None = None,
        vdim: int | None = None,
        batch_first: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if embed_dim <= 0 or num_heads <= 0:
            raise ValueError(
                f"embed_dim and num_heads must be greater than 0, got embed_dim={embed_dim} and num_heads={num_heads}"
            )
        if embed_dim % num_heads != 0:
            raise ValueError(
                f"d_model must be divisible by nhead, got d_model={embed_dim} and nhead={num_heads}"
            )
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"dropout probability must be between 0 and 1, got dropout={dropout}")
        factory = {"device": device, "dtype": dtype}
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
        self.kdim = kdim if kdim is not None else embed_dim
        self.vdim = vdim if vdim is not None else embed_dim
        self.dropout, self.batch_first, self.add_zero_attn = dropout, batch_first, add_zero_attn
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **factory)
        self.k_proj = nn.Linear(self.kdim, embed_dim, bias=bias, **factory)
        self.v_proj = nn.Linear(self.vdim, embed_dim, bias=bias, **factory)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **factory)
        if add_bias_kv:
            self.bias_k = nn.Parameter(torch.randn(1, 1, embed_dim, **factory) * embed_dim**-0.5)
            self.bias_v = nn.Parameter(torch.randn(1, 1, embed_dim, **factory) * embed_dim**-0.5)
        else:
            self.bias_k = self.bias_v = None

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Attend from ``query`` (L, N, E) [or (N, L, E) when batch_first, or (L, E)] to ``key``/``value``."""
        batched = self._check_inputs(query, key, value, key_padding_mask, attn_mask)
        if not batched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
        elif self.batch_first:  # work sequence-first, like torch, so layouts (and dropout draws) agree
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        L, N, E = query.shape  # noqa: N806 (shape letters)
        H, D = self.num_heads, self.head_dim  # noqa: N806

        if is_causal and attn_mask is None:
            raise ValueError(
                "is_causal=True needs attn_mask: the flag is a hint that attn_mask is causal, not a mask "
                "(use generate_square_subsequent_mask)"
            )
        warn_if_mixed(key_padding_mask, "key_padding_mask", attn_mask, "attn_mask")
        causal = is_causal and key_padding_mask is None and not need_weights  # the hint replaces the mask
        mask = None if causal else to_additive(attn_mask, "attn_mask", query.dtype, accept_float32=not need_weights)
        if mask is not None:
            mask = mask.view(N, H, L, -1) if mask.dim() == 3 else mask  # row n*H + h is batch n, head h
        kpm = to_additive(key_padding_mask, "key_padding_mask", query.dtype, accept_float32=not need_weights)
        if kpm is not None:
            kpm = kpm.view(N, 1, 1, -1)
            mask = kpm if mask is None else mask + kpm

        q = self.q_proj(query).view(L, N, H, D).permute(1, 2, 0, 3)  # (N, H, L, D)
        k, v = self.k_proj(key), self.v_proj(value)  # (S, N, E)
        if self.bias_k is not None:  # learned extra key/value, visible to every query
            k = torch.cat([k, self.bias_k.expand(1, N, E)])
            v = torch.cat([v, self.bias_v.expand(1, N, E)])
            mask = None if mask is None else F.pad(mask, (0, 1))
        k = k.view(-1, N, H, D).permute(1, 2, 0, 3)  # (N, H, S, D)
        v = v.view(-1, N, H, D).permute(1, 2, 0, 3)
        if self.add_zero_attn:  # an all-zero key/value appended to every sequence
            zeros = k.new_zeros(N, H, 1, D)
            k, v = torch.cat([k, zeros], dim=2), torch.cat([v, zeros], dim=2)
            mask = None if mask is None else F.pad(mask, (0, 1))
        if causal:
            mask = to_additive(top_left_causal_mask(L, k.size(2), query.device), "causal mask", query.dtype)

        dropout_p = self.dropout if self.training else 0.0
        out, weights = self.attend(q, k, v, mask, dropout_p)
        out = self.out_proj(out.permute(2, 0, 1, 3).reshape(L, N, E))  # concat heads (L, N, E), then W^O
        if not batched:
            out = out.squeeze(1)
        elif self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        weights = weights.mean(dim=1) if average_attn_weights else weights
        return out, weights if batched else weights.squeeze(0)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout_p: float) -> tuple[Tensor, Tensor]:
        """Equation 1 on the split heads; a method so that a variant (the bug zoo's) can replace this one step."""
        return scaled_dot_product_attention(q, k, v, mask, dropout_p)

    def _check_inputs(
        self, query: Tensor, key: Tensor, value: Tensor, kpm: Tensor | None, attn_mask: Tensor | None
    ) -> bool:
        """Validate ranks, sizes, dtypes and mask shapes; return whether the input is batched."""
        if query.dim() not in (2, 3):
            raise ValueError(
                f"query must be 2-D (L, E) unbatched or 3-D batched, got a {query.dim()}-D tensor "
                f"of shape {tuple(query.shape)}"
            )
        batched = query.dim() == 3
        if key.dim() != query.dim() or value.dim() != query.dim():
            raise ValueError(
                f"key and value must have the rank of query ({query.dim()}-D), got key {tuple(key.shape)} "
                f"and value {tuple(value.shape)}"
            )
        for name, t, size in (("query", query, self.embed_dim), ("key", key, self.kdim), ("value", value, self.vdim)):
            if t.size(-1) != size:
                raise ValueError(f"{name} must have {size} features (last dim), got shape {tuple(t.shape)}")
        param_dtype = self.q_proj.weight.dtype
        for name, t in (("query", query), ("key", key), ("value", value)):
            if t.dtype != param_dtype:
                raise TypeError(f"{name} dtype must match the module's parameters, got {t.dtype} and {param_dtype}")
        seq_dim = 1 if batched and self.batch_first else 0
        batch_dim = 1 - seq_dim
        if key.shape[:-1] != value.shape[:-1]:
            raise ValueError(
                f"key and value must have the same batch and length, got key {tuple(key.shape)} "
                f"and value {tuple(value.shape)}"
            )
        if batched and query.size(batch_dim) != key.size(batch_dim):
            raise ValueError(
                f"query and key must have the same batch size, got {query.size(batch_dim)} and {key.size(batch_dim)}"
            )
        L, S = query.size(seq_dim), key.size(seq_dim)  # noqa: N806
        N = query.size(batch_dim) if batched else 1  # noqa: N806
        if kpm is not None:
            expected = (N, S) if batched else (S,)
            if tuple(kpm.shape) != expected:
                raise ValueError(f"key_padding_mask must have shape {expected} (N, S), got {tuple(kpm.shape)}")
        if attn_mask is not None:
            allowed = [(L, S), (N * self.num_heads, L, S)]
            if tuple(attn_mask.shape) not in allowed:
                raise ValueError(
                    f"attn_mask must have shape (L, S)={allowed[0]} or (N*nhead, L, S)={allowed[1]}, "
                    f"got {tuple(attn_mask.shape)}"
                )
        return batched
