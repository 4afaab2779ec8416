"""Targets for diagnose's parity checks of code with no module per layer, head merge orders, unresolvable
targets and layouts (tests/diagnose/test_diag2_*.py). Each is written in its own style, unlike handmade and
unlike the public code the issues came from."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _Mixer(nn.Module):
    """Pre-norm self-attention with separate q/k/v maps and einsum scores; ``order`` is how heads are merged."""

    order = "hd"

    def __init__(self, d_model: int, nhead: int) -> None:
        super().__init__()
        self.nhead = nhead
        self.norm = nn.LayerNorm(d_model)
        self.to_q, self.to_k, self.to_v = (nn.Linear(d_model, d_model) for _ in range(3))
        self.mix_out = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor) -> Tensor:
        n, t, e = x.shape
        h = self.nhead
        y = self.norm(x)
        q, k, v = (lin(y).reshape(n, t, h, e // h) for lin in (self.to_q, self.to_k, self.to_v))
        w = torch.einsum("nqhd,nkhd->nhqk", q, k).div(math.sqrt(e // h)).softmax(dim=-1)
        o = torch.einsum("nhqk,nkhd->nqhd", w, v)  # (n, t, h, d)
        if self.order == "dh":
            o = o.transpose(2, 3)  # (n, t, d, h): the heads interleaved feature by feature
        return self.mix_out(o.reshape(n, t, e))


class _DHMixer(_Mixer):
    order = "dh"


class _Mlp(nn.Module):
    act = staticmethod(F.gelu)

    def __init__(self, d_model: int, dim_feedforward: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.fc_in, self.fc_out = nn.Linear(d_model, dim_feedforward), nn.Linear(dim_feedforward, d_model)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc_out(self.act(self.fc_in(self.norm(x))))


class _WideEpsMlp(_Mlp):
    def __init__(self, d_model: int, dim_feedforward: int) -> None:
        super().__init__(d_model, dim_feedforward)
        self.norm.eps = 1e-2  # the attention's norm keeps 1e-5


class LoopResiduals(nn.Module):
    """Correct: two parallel lists of sub-blocks, the residual adds in this loop (no module per layer)."""

    mixer, mlp = _Mixer, _Mlp

    def __init__(self, d_model: int, nhead: int, num_layers: int, dim_feedforward: int) -> None:
        super().__init__()
        self.mixers = nn.ModuleList(self.mixer(d_model, nhead) for _ in range(num_layers))
        self.mlps = nn.ModuleList(self.mlp(d_model, dim_feedforward) for _ in range(num_layers))
        self.out_norm = nn.LayerNorm(d_model)

    def forward(self, src: Tensor) -> Tensor:
        for mixer, mlp in zip(self.mixers, self.mlps, strict=True):
            src = src + mixer(src)
            src = src + mlp(src)
        return self.out_norm(src)


class LoopResidualsEpsBug(LoopResiduals):
    """Bug: the feed-forward's norm uses eps 1e-2, the attention's 1e-5; the residuals are right."""

    mlp = _WideEpsMlp


class LoopResidualsMergeBug(LoopResiduals):
    """Bug: heads merged in (d h) order before the output map; the residuals are right."""

    mixer = _DHMixer


class GatedPerceptron(nn.Module):
    """Unresolvable at feed_forward: a learned per-feature gate no built-in tensor pairs with."""

    def __init__(self, d_model: int, dim_feedforward: int) -> None:
        super().__init__()
        self.up, self.down = nn.Linear(d_model, dim_feedforward), nn.Linear(dim_feedforward, d_model)
        self.gate = nn.Parameter(torch.ones(3, d_model))

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.relu(self.up(x))) * self.gate.mean(0)


class SquashedPerceptron(nn.Module):
    """Bug at feed_forward: a parameterless LayerNorm squashes the input before the first matrix."""

    def __init__(self, d_model: int, dim_feedforward: int) -> None:
        super().__init__()
        self.squash = nn.LayerNorm(d_model, elementwise_affine=False)
        self.w_in, self.w_out = nn.Linear(d_model, dim_feedforward), nn.Linear(dim_feedforward, d_model)

    def forward(self, x: Tensor) -> Tensor:
        return self.w_out(torch.relu(self.w_in(self.squash(x))))


class _PostNormBlock(nn.Module):
    """Post-norm layer around nn.MultiheadAttention; ``ff_input`` says what its feed-forward reads."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int) -> None:
        super().__init__()
        self.attend = nn.MultiheadAttention(d_model, nhead)
        self.n_a, self.n_f = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.up, self.down = nn.Linear(d_model, dim_feedforward), nn.Linear(dim_feedforward, d_model)

    def ff_input(self, src: Tensor, h: Tensor) -> Tensor:
        return h

    def forward(self, src: Tensor) -> Tensor:
        h = self.n_a(src + self.attend(src, src, src, need_weights=False)[0])
        return self.n_f(h + self.down(torch.relu(self.up(self.ff_input(src, h)))))


class BlockFFReadsSource(_PostNormBlock):
    """Bug: the feed-forward reads the layer's input, skipping the attention's normalized sum."""

    def ff_input(self, src: Tensor, h: Tensor) -> Tensor:
        return src


class BlockFFReadsBlend(_PostNormBlock):
    """Bug: the feed-forward reads a blend the built-in never computes (no source can be named)."""

    def ff_input(self, src: Tensor, h: Tensor) -> Tensor:
        return 0.5 * (src + h)


class StraightPerceptron(nn.Module):
    """Bug at feed_forward: no activation between the two matrices (the built-in's is functional, so the tensor
    the second matrix should read is recorded nowhere: there is no wiring to name, only the activation)."""

    def __init__(self, d_model: int, dim_feedforward: int) -> None:
        super().__init__()
        self.expand = nn.Linear(d_model, dim_feedforward)
        self.project = nn.Linear(dim_feedforward, d_model)

    def forward(self, x: Tensor) -> Tensor:
        return self.project(self.expand(x))


class PrenormedGeluPerceptron(_Mlp):
    """Bug at feed_forward: a LayerNorm of the model width in front, and the hidden width differs from it, so
    the second matrix is fed tensors that norm cannot take."""
