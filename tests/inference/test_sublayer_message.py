"""A module that adds its residual and normalizes inside, checked as attention, cannot be paired; the message
says why and where to check it instead (reference/inference/weightmap.py)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from reference.inference.record import record_uses
from reference.inference.weightmap import UnpairedError, pair


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
