"""A correct Transformer written differently from handmade: fused q/k/v, einsum, batch-first inside.

``EinsumTransformer`` is a drop-in class: nn.Transformer's constructor arguments, forward signature and
parameter names (so ``load_state_dict(nn.Transformer(...).state_dict())`` loads it), but its own code: one
packed (3E, E) projection applied with einsum, heads kept as an einsum index, batch-first throughout.
``pytest equivalence_tests --impl examples.einsum_transformer:EinsumTransformer`` passes.

``bugs`` holds the same class with one classic bug each (``bugs.no_scale``, ``bugs.shared_layers``, ...),
to see ``parity diagnose examples.einsum_transformer:bugs.no_scale`` name the submodule and the cause.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def additive(mask: Tensor | None, dtype: torch.dtype, bug: str) -> Tensor | None:
    """A bool (True = blocked) or float mask as a float mask to add to the scores."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        blocked = ~mask if bug == "mask_polarity" else mask
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(blocked, float("-inf"))
    if bug == "float_as_bool":
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask != 0, float("-inf"))
    return mask


class Attention(nn.Module):
    """Multi-head attention on (N, L, E): one packed projection, einsum over named axes."""

    def __init__(self, d_model: int, nhead: int, dropout: float, bias: bool, bug: str = "") -> None:
        super().__init__()
        self.nhead, self.dropout, self.bug = nhead, dropout, bug
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d_model, d_model))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * d_model)) if bias else None
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None,
                attn_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        n, length, e = query.shape
        h = self.nhead
        d = e // h
        w = self.in_proj_weight.view(3, h, d, e)  # (q|k|v, head, head feature, input feature)
        b = None if self.in_proj_bias is None else self.in_proj_bias.view(3, h, d)
        if self.bug == "heads_interleaved":  # head j takes features j, j + h, j + 2h, ...
            w = self.in_proj_weight.view(3, d, h, e).transpose(1, 2)
            b = None if b is None else self.in_proj_bias.view(3, d, h).transpose(1, 2)
        if self.bug == "kqv_order":
            w, b = w[[1, 0, 2]], None if b is None else b[[1, 0, 2]]
        if query is key:  # self-attention: one einsum for q, k and v
            q, k, v = torch.einsum("nle,chde->cnhld", query, w).unbind(0)
            if b is not None:
                q, k, v = (t + bt[None, :, None, :] for t, bt in zip((q, k, v), b, strict=True))
        else:
            q = torch.einsum("nle,hde->nhld", query, w[0])
            k, v = torch.einsum("nse,chde->cnhsd", key, w[1:]).unbind(0)
            if b is not None:
                q, k, v = q + b[0][None, :, None, :], k + b[1][None, :, None, :], v + b[2][None, :, None, :]
        scale = 1.0 if self.bug == "no_scale" else 1.0 / math.sqrt(d)
        scores = torch.einsum("nhld,nhsd->nhls", q * scale, k)
        if is_causal and self.bug == "hint_drops_mask":
            attn_mask = None
        elif is_causal and key_padding_mask is None:  # the hint stands for a top-left causal mask
            attn_mask = torch.ones(length, key.size(1), dtype=torch.bool, device=query.device).triu(1)
        mask = additive(attn_mask, scores.dtype, self.bug)
        if mask is not None and mask.dim() == 3:
            mask = mask.view(n, h, *mask.shape[1:])  # row n * nhead + h
        pad = None if self.bug == "padding_ignored" else additive(key_padding_mask, scores.dtype, self.bug)
        if pad is not None:
            pad = pad[:, None, None, :]
            mask = pad if mask is None else mask + pad
        dim = -2 if self.bug == "softmax_queries" else -1
        if mask is not None:
            scores = scores + mask
            empty = torch.isneginf(scores).all(dim, keepdim=True)  # every key blocked: attend to nothing
            weights = scores.masked_fill(empty, 0.0).softmax(dim).masked_fill(empty, 0.0)
        else:
            weights = scores.softmax(dim)
        weights = F.dropout(weights, self.dropout, training=self.training or self.bug == "dropout_in_eval")
        out = torch.einsum("nhls,nhsd->nlhd", weights, v)
        if self.bug == "heads_interleaved":  # merged back the way it was split
            out = out.transpose(2, 3)
        return self.out_proj(out.reshape(n, length, e))


class Norm(nn.Module):
    """Layer normalization over the last axis: weight * (x - mean) / sqrt(var + eps) + bias."""

    def __init__(self, d_model: int, eps: float, bias: bool, bug: str = "") -> None:
        super().__init__()
        self.eps, self.bug = eps, bug
        self.weight = nn.Parameter(torch.ones(d_model))
        self.bias = nn.Parameter(torch.zeros(d_model)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        centered = x - x.mean(-1, keepdim=True)
        var = centered.square().sum(-1, keepdim=True) / (x.size(-1) - (self.bug == "unbiased_ln"))
        inv_std = 1.0 / (var.sqrt() + self.eps) if self.bug == "eps_outside" else torch.rsqrt(var + self.eps)
        y = centered * inv_std * self.weight
        return y if self.bias is None else y + self.bias


class Layer(nn.Module):
    """An encoder layer (``cross=False``) or a decoder layer, with nn.Transformer's submodule names."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float,
                 activation: Callable[[Tensor], Tensor], eps: float, norm_first: bool, bias: bool, cross: bool,
                 bug: str) -> None:
        super().__init__()
        self.self_attn = Attention(d_model, nhead, dropout, bias, bug)
        if cross:
            self.multihead_attn = self.self_attn if bug == "shared_attention" else Attention(
                d_model, nhead, dropout, bias, bug)
        self.linear1 = nn.Linear(d_model, dim_feedforward, bias=bias)
        self.linear2 = nn.Linear(dim_feedforward, d_model, bias=bias)
        for i in range(3 if cross else 2):
            setattr(self, f"norm{i + 1}", Norm(d_model, eps, bias, bug))
        self.activation, self.dropout, self.cross = activation, dropout, cross
        self.norm_first = True if bug == "pre_norm" else norm_first

    def _block(self, x: Tensor, i: int, f: Callable[[Tensor], Tensor]) -> Tensor:
        norm = getattr(self, f"norm{i}")
        if self.norm_first:
            return x + F.dropout(f(norm(x)), self.dropout, self.training)
        return norm(x + F.dropout(f(x), self.dropout, self.training))

    def forward(self, x: Tensor, memory: Tensor | None = None, masks: dict | None = None) -> Tensor:
        m = masks or {}
        x = self._block(x, 1, lambda y: self.self_attn(y, y, y, m.get("pad"), m.get("mask"), m.get("causal", False)))
        if self.cross:
            x = self._block(x, 2, lambda y: self.multihead_attn(
                y, memory, memory, m.get("memory_pad"), m.get("memory_mask"), m.get("memory_causal", False)))
        return self._block(x, 3 if self.cross else 2, self._feed_forward)

    def _feed_forward(self, x: Tensor) -> Tensor:
        return self.linear2(F.dropout(self.activation(self.linear1(x)), self.dropout, self.training))


class Stack(nn.Module):
    """N layers (separate copies) and the final norm."""

    def __init__(self, layer: Layer, num_layers: int, norm: Norm, bug: str) -> None:
        super().__init__()
        copies = [layer] * num_layers if bug == "shared_layers" else [copy.deepcopy(layer) for _ in range(num_layers)]
        self.layers = nn.ModuleList(copies)
        self.norm = norm
        self.final_norm = bug != "no_final_norm"

    def forward(self, x: Tensor, memory: Tensor | None = None, masks: dict | None = None) -> Tensor:
        for layer in self.layers:
            x = layer(x, memory, masks)
        return self.norm(x) if self.final_norm else x


class EinsumTransformer(nn.Module):
    """A drop-in for nn.Transformer (same arguments, forward and state_dict), written with einsum."""

    bug = ""

    def __init__(self, d_model: int = 512, nhead: int = 8, num_encoder_layers: int = 6,
                 num_decoder_layers: int = 6, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation: str | Callable[[Tensor], Tensor] = "relu", custom_encoder: nn.Module | None = None,
                 custom_decoder: nn.Module | None = None, layer_norm_eps: float = 1e-5, batch_first: bool = False,
                 norm_first: bool = False, bias: bool = True, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if custom_encoder is not None or custom_decoder is not None:
            raise NotImplementedError("custom encoders and decoders are not supported")
        gelu = (lambda x: F.gelu(x, approximate="tanh")) if self.bug == "gelu_tanh" else F.gelu
        act = {"relu": F.relu, "gelu": gelu}.get(activation, activation) if isinstance(activation, str) else activation
        options = (d_model, nhead, dim_feedforward, dropout, act, layer_norm_eps, norm_first, bias)
        self.encoder = Stack(Layer(*options, cross=False, bug=self.bug), num_encoder_layers,
                             Norm(d_model, layer_norm_eps, bias, self.bug), self.bug)
        self.decoder = Stack(Layer(*options, cross=True, bug=self.bug), num_decoder_layers,
                             Norm(d_model, layer_norm_eps, bias, self.bug), self.bug)
        self.batch_first, self.d_model = batch_first, d_model
        self.to(device=device, dtype=dtype)

    def forward(self, src: Tensor, tgt: Tensor, src_mask: Tensor | None = None, tgt_mask: Tensor | None = None,
                memory_mask: Tensor | None = None, src_key_padding_mask: Tensor | None = None,
                tgt_key_padding_mask: Tensor | None = None, memory_key_padding_mask: Tensor | None = None,
                src_is_causal: bool | None = None, tgt_is_causal: bool | None = None,
                memory_is_causal: bool = False) -> Tensor:
        unbatched = src.dim() == 2
        pads = (src_key_padding_mask, tgt_key_padding_mask, memory_key_padding_mask)
        if unbatched:
            src, tgt = src.unsqueeze(0), tgt.unsqueeze(0)
            pads = tuple(None if p is None else p.unsqueeze(0) for p in pads)
        elif not self.batch_first:
            src, tgt = src.transpose(0, 1), tgt.transpose(0, 1)
        memory = self.encoder(src, masks={"mask": src_mask, "pad": pads[0], "causal": bool(src_is_causal)})
        out = self.decoder(tgt, memory, masks={
            "mask": tgt_mask, "pad": pads[1], "causal": bool(tgt_is_causal),
            "memory_mask": memory_mask, "memory_pad": pads[2], "memory_causal": memory_is_causal})
        if unbatched:
            return out.squeeze(0)
        return out if self.batch_first else out.transpose(0, 1)


BUGS = ("no_scale", "softmax_queries", "unbiased_ln", "eps_outside", "pre_norm", "no_final_norm", "kqv_order",
        "heads_interleaved", "shared_layers", "shared_attention", "gelu_tanh", "dropout_in_eval", "mask_polarity",
        "float_as_bool", "padding_ignored", "hint_drops_mask")
# bugs.<name>: EinsumTransformer with that one bug (a drop-in class like it)
bugs = SimpleNamespace(**{name: type(f"EinsumTransformer_{name}", (EinsumTransformer,), {"bug": name})
                          for name in BUGS})
