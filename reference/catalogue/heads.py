"""Bugs in splitting d_model into heads, in the projections around attention, and in the weight port.

Each is a faulty nn.Linear (a q/k/v or output projection of handmade.MultiheadAttention): it permutes the
features handmade then splits into heads, skips itself, or computes with rows of the packed in_proj tensor
that torch gives another projection (its own weights load as usual and go unused).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reference.catalogue._base import ATTN, Deviation, Plant, attentions, become

PROJECTIONS = ("q_proj", "k_proj", "v_proj")


class SplitWithoutTranspose(nn.Linear):
    """Output split into heads by ``y.reshape(N, H, L, D)`` on (L, N, E) data; handmade's own split then
    (view(L, N, H, D).permute(1, 2, 0, 3)) yields exactly those buggy heads."""

    def forward(self, x: Tensor) -> Tensor:
        y = super().forward(x)  # (L, N, E)
        length, batch, width = y.shape
        heads = y.reshape(batch, self.__dict__["nhead"], length, width // self.__dict__["nhead"])  # the bug
        return heads.permute(2, 0, 1, 3).reshape(length, batch, width)


class MergeWithoutTranspose(nn.Linear):
    """The output projection fed heads (N, H, L, D) merged by ``reshape(L, N, E)`` without a permute."""

    def forward(self, x: Tensor) -> Tensor:  # x is handmade's correct concat (L, N, E)
        length, batch, width = x.shape
        h = self.__dict__["nhead"]
        heads = x.view(length, batch, h, width // h).permute(1, 2, 0, 3)  # (N, H, L, D)
        return super().forward(heads.reshape(length, batch, width))  # the bug


class InterleavedOutput(nn.Linear):
    """Features permuted so that handmade's block split gives head h the features h, h + H, h + 2H, ..."""

    def forward(self, x: Tensor) -> Tensor:
        h = self.__dict__["nhead"]
        return super().forward(x).unflatten(-1, (-1, h)).transpose(-1, -2).flatten(-2)


class InterleavedInput(nn.Linear):
    """The inverse on the output projection: heads concatenated feature-major (the stride merge)."""

    def forward(self, x: Tensor) -> Tensor:
        h = self.__dict__["nhead"]
        return super().forward(x.unflatten(-1, (h, -1)).transpose(-1, -2).flatten(-2))


class Skipped(nn.Linear):
    """A projection that is built (its weights load) but never applied."""

    def forward(self, x: Tensor) -> Tensor:
        return x


class ReadsPackedRows(nn.Linear):
    """A q/k/v projection computing with rows ``rows`` of [W_q; W_k; W_v] (torch's in_proj_weight), not its own."""

    def forward(self, x: Tensor) -> Tensor:
        parts, rows = self.__dict__["packed"], self.__dict__["rows"]
        weight = torch.cat([p.weight for p in parts])[rows]
        bias = None if parts[0].bias is None else torch.cat([p.bias for p in parts])[rows]
        return F.linear(x, weight, bias)


def _projections(cls: type, names: tuple[str, ...]) -> Plant:
    def plant(model: nn.Module, config: Mapping[str, object]) -> None:
        for attn in list(attentions(model)):
            for name in names:
                become(getattr(attn, name), cls, nhead=attn.num_heads)

    return plant


def _interleaved(model: nn.Module, config: Mapping[str, object]) -> None:
    _projections(InterleavedOutput, PROJECTIONS)(model, config)
    _projections(InterleavedInput, ("out_proj",))(model, config)


def _reads_packed(order: str = "qkv", head_major: bool = False) -> Plant:
    """q/k/v read the packed rows in ``order`` (kqv: q takes W_k's rows), or unpacked as (nhead, 3, head_dim)."""

    def plant(model: nn.Module, config: Mapping[str, object]) -> None:
        for attn in list(attentions(model)):
            parts = tuple(getattr(attn, n) for n in PROJECTIONS)
            e, h = attn.embed_dim, attn.num_heads
            for i, name in enumerate(PROJECTIONS):
                if head_major:  # row r of the packed tensor viewed as (H, 3, D): head r // 3D, part (r // D) % 3
                    rows = torch.arange(3 * e).view(h, 3, -1)[:, i].reshape(e)
                else:
                    j = "qkv".index(order[i])
                    rows = torch.arange(j * e, (j + 1) * e)
                become(getattr(attn, name), ReadsPackedRows, packed=parts, rows=rows)

    return plant


QKV = "q/k/v order or head split"
ORDERS = ("kqv", "qvk", "vkq", "kvq", "vqk")
CATALOGUE = (
    *(Deviation(key=f"qkv_as_{order}", cause=QKV,
                does=f"reads the packed in_proj rows as {', '.join(order)} where nn.Transformer "
                "has q, k, v", fix="in_proj_weight rows [0:E] are W_q, [E:2E] W_k, [2E:3E] W_v (in_proj_bias alike)",
                plant=_reads_packed(order), sites=ATTN, claims=(("qkv.rows", order),))
      for order in ORDERS),
    Deviation(key="qkv_head_major", cause=QKV,
              does="unpacks in_proj as (nhead, 3, head_dim) rows instead of (3, nhead, head_dim)",
              fix="in_proj_weight is [W_q; W_k; W_v], each (E, E): chunk(3) first, then split heads",
              plant=_reads_packed(head_major=True), sites=ATTN, shows_on=lambda c: c.config.nhead > 1,
              claims=(("qkv.rows", "head major"),)),
    Deviation(key="heads_interleaved", cause=QKV,
              does="splits heads with a stride (head h gets features h, h+H, ...) instead of "
              "in blocks", fix="view(..., nhead, head_dim): head h takes features h*head_dim:(h+1)*head_dim",
              plant=_interleaved, sites=ATTN,
              shows_on=lambda c: c.config.nhead > 1 and c.config.d_model > c.config.nhead,
              claims=(("heads.split", "interleaved"),)),
    Deviation(key="head_split_without_transpose", cause=QKV,
              does="splits heads by reshape(N, H, L, D) of (L, N, E) data, without "
              "transposing L and N", fix="view(L, N, H, D) and then permute(1, 2, 0, 3) to (N, H, L, D)",
              plant=_projections(SplitWithoutTranspose, PROJECTIONS), sites=ATTN,
              claims=(("heads.split", "no transpose"),)),
    Deviation(key="head_merge_without_transpose", cause=QKV,
              does="merges heads by reshape(L, N, E) of (N, H, L, D) data, without "
              "a permute", fix="permute(2, 0, 1, 3) to (L, N, H, D) before reshape(L, N, E)",
              plant=_projections(MergeWithoutTranspose, ("out_proj",)), sites=ATTN, claims=(("heads.merge",
                                                                                             "no transpose"),)),
    Deviation(key="output_projection_missing", cause="output projection missing",
              does="never applies the output projection W^O (out_proj) after concatenating the heads",
              fix="apply out_proj to the concatenated heads", plant=_projections(Skipped, ("out_proj",)), sites=ATTN,
              claims=(("heads.merge", "no out_proj"),)),
)
