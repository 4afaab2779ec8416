"""Code checked at a level it does not implement gets a message that says why and where to check it instead:
a module that adds its residual and normalizes inside, checked as attention (reference/inference/weightmap.py);
a whole model assembled from parts it is handed (reference/inference/construct.py); a model that looks up token
embeddings, checked at a level that gives embedded sequences (reference/inference/calling.py)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from reference.builtin.config import Config
from reference.cases.case import Case
from reference.inference.calling import CallError, infer_calling
from reference.inference.construct import build
from reference.inference.record import record_uses
from reference.inference.roles import ConstructionError
from reference.inference.weightmap import UnpairedError, pair
from reference.levels.registry import LEVELS


class _AttendAndNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.MultiheadAttention(8, 2, batch_first=True)
        self.after = nn.LayerNorm(8, eps=1e-6)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return self.after(q + self.inner(q, k, v, need_weights=False)[0])


def test_a_sublayer_with_its_own_norm_is_sent_to_its_layer() -> None:
    builtin, model = nn.MultiheadAttention(8, 2, batch_first=True).double(), _AttendAndNorm().double()
    x = torch.randn(2, 3, 8, dtype=torch.float64)
    with pytest.raises(UnpairedError) as caught:
        pair(builtin, model, record_uses(builtin, lambda m: m(x, x, x, need_weights=False)[0]),
             record_uses(model, lambda m: m(x, x, x)))
    assert "the target normalizes (after.weight, after.bias in a layer_norm) where the built-in has no norm" \
        in str(caught.value), caught.value
    assert "--as encoder_layer or decoder_layer" in str(caught.value)


class _Assembled(nn.Module):
    def __init__(self, encoder: nn.Module, decoder: nn.Module, pad: int) -> None:
        super().__init__()
        self.encoder, self.decoder, self.pad = encoder, decoder, pad

    def forward(self, src: Tensor, tgt: Tensor) -> Tensor:
        return self.decoder(tgt, self.encoder(src))


def test_a_model_assembled_from_parts_is_sent_to_its_parts() -> None:
    with pytest.raises(ConstructionError, match=r"its source uses (decoder, encoder|encoder, decoder) as modules"):
        build(_Assembled, Case(Config()).options(), "transformer")


class _Tokens(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Embedding(50, 8)
        self.layer = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True)

    def forward(self, ids: Tensor) -> Tensor:
        return self.layer(self.table(ids))


def test_a_token_model_checked_on_embedded_input_is_told_so() -> None:
    case = Case(Config(d_model=8, nhead=2))
    inputs, kwargs = LEVELS["encoder_layer"].inputs(case, torch.float64)
    with pytest.raises(CallError, match=r"looks up token embeddings \(table: nn.Embedding\)"):
        infer_calling(_Tokens().double(), "encoder_layer", inputs, kwargs, batch_first=False)


class _OneProjectionPerHeadSlice(nn.Module):
    """q, k and v through one (head x head) matrix each, applied to every head's slice of the input."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head = heads, width // heads
        self.q, self.k, self.v = (nn.Linear(self.head, self.head, bias=False) for _ in range(3))
        self.o = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        n, t, w = x.shape
        q, k, v = (f(x.view(n, t, self.heads, self.head)).transpose(1, 2) for f in (self.q, self.k, self.v))
        mixed = torch.softmax(q @ k.transpose(-1, -2) / self.head ** 0.5, -1) @ v
        return self.o(mixed.transpose(1, 2).reshape(n, t, w))


def test_projections_of_one_head_slice_are_named_as_such() -> None:
    builtin, model = nn.MultiheadAttention(8, 2, batch_first=True).double(), _OneProjectionPerHeadSlice(8, 2).double()
    x = torch.randn(2, 3, 8, dtype=torch.float64)
    with pytest.raises(UnpairedError, match=r"q.weight, k.weight, v.weight are 4 x 4, 1/2 of the built-in's width 8: "
                                            r"projections applied to each head's slice"):
        pair(builtin, model, record_uses(builtin, lambda m: m(x, x, x, need_weights=False)[0]),
             record_uses(model, lambda m: m(x)))
