"""Bugs in splitting d_model into heads, in the projections around attention, and in the weight port."""

from __future__ import annotations

import torch
from torch import Tensor, nn

import handmade
from equivalence_tests.zoo._base import BugAdapter, attention_slots, replace_attention


class SplitWithoutTranspose(nn.Linear):
    """A q/k/v projection whose output is split into heads by ``y.reshape(N, H, L, D)`` on (L, N, E) data.

    handmade splits with ``view(L, N, H, D).permute(1, 2, 0, 3)``; this layer hands it the layout for which
    that yields the buggy heads, so the bug is exactly "reshape without transposing L and N".
    """

    def __init__(self, in_features: int, out_features: int, nhead: int, bias: bool) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.nhead = nhead

    def forward(self, x: Tensor) -> Tensor:
        y = super().forward(x)  # (L, N, E)
        length, batch, width = y.shape
        heads = y.reshape(batch, self.nhead, length, width // self.nhead)  # the bug
        return heads.permute(2, 0, 1, 3).reshape(length, batch, width)


class MergeWithoutTranspose(nn.Linear):
    """The output projection, fed heads (N, H, L, D) merged by ``reshape(L, N, E)`` without a permute."""

    def __init__(self, width: int, nhead: int, bias: bool) -> None:
        super().__init__(width, width, bias=bias)
        self.nhead = nhead

    def forward(self, x: Tensor) -> Tensor:  # x is handmade's correct concat (L, N, E)
        length, batch, width = x.shape
        heads = x.view(length, batch, self.nhead, width // self.nhead).permute(1, 2, 0, 3)  # (N, H, L, D)
        return super().forward(heads.reshape(length, batch, width))  # the bug


class SkippedLinear(nn.Linear):
    """A projection that is built (its weights load) but never applied."""

    def forward(self, x: Tensor) -> Tensor:
        return x


def _split_without_transpose(model: handmade.Transformer, config: dict) -> None:
    for layer, name in attention_slots(model):
        attn = getattr(layer, name)
        for proj in ("q_proj", "k_proj", "v_proj"):
            old = getattr(attn, proj)
            setattr(attn, proj, SplitWithoutTranspose(old.in_features, old.out_features, attn.num_heads,
                                                      old.bias is not None))


def _merge_without_transpose(model: handmade.Transformer, config: dict) -> None:
    for layer, name in attention_slots(model):
        attn = getattr(layer, name)
        attn.out_proj = MergeWithoutTranspose(attn.embed_dim, attn.num_heads, config["bias"])


def _skip_output_projection(model: handmade.Transformer, config: dict) -> None:
    for layer, name in attention_slots(model):
        attn = getattr(layer, name)
        attn.out_proj = SkippedLinear(attn.embed_dim, attn.embed_dim, bias=config["bias"])


class QKSwappedAdapter(BugAdapter):
    """Ports the weights but unpacks torch's in_proj_weight rows as (k, q, v) instead of (q, k, v)."""

    def load_reference(self, model: nn.Module, reference: nn.Module) -> None:
        super().load_reference(model, reference)
        with torch.no_grad():
            for layer, name in attention_slots(model):
                attn = getattr(layer, name)
                for part in ("weight", "bias"):
                    q, k = getattr(attn.q_proj, part), getattr(attn.k_proj, part)
                    if q is not None:
                        q_value = q.clone()
                        q.copy_(k)
                        k.copy_(q_value)


def _attention_without_batch_first(model: handmade.Transformer, config: dict) -> None:
    replace_attention(model, config, handmade.MultiheadAttention, batch_first=False)


head_split_without_transpose = BugAdapter("heads split by reshape(N, H, L, D) of (L, N, E) data, no transpose",
                                          _split_without_transpose)
head_merge_without_transpose = BugAdapter("heads merged by reshape(L, N, E) of (N, H, L, D) data, no permute",
                                          _merge_without_transpose)
output_projection_missing = BugAdapter("heads concatenated but the output projection W^O never applied",
                                       _skip_output_projection)
qkv_wrong_order = QKSwappedAdapter("in_proj_weight unpacked as (k, q, v) when porting the weights")
batch_first_ignored = BugAdapter("the attention modules are built without batch_first (read (N, L, E) as (L, N, E))",
                                 _attention_without_batch_first)
