"""Position-wise feed-forward network (paper section 3.3): FFN(x) = act(x W1 + b1) W2 + b2."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Activation = str | Callable[[Tensor], Tensor]


def resolve_activation(activation: Activation) -> Callable[[Tensor], Tensor]:
    """Map "relu" / "gelu" (exact, erf-based) to functions; pass a callable through."""
    if activation == "relu":
        return F.relu
    if activation == "gelu":
        return F.gelu
    if callable(activation):
        return activation
    raise ValueError(f"activation must be 'relu', 'gelu' or a callable, got activation={activation!r}")


class FeedForward(nn.Module):
    """Two linear maps with an activation and dropout between them, applied to each position alike."""

    def __init__(
        self,
        d_model: int,
        dim_feedforward: int,
        dropout: float = 0.1,
        activation: Activation = "relu",
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if dim_feedforward <= 0:
            raise ValueError(f"dim_feedforward must be greater than 0, got dim_feedforward={dim_feedforward}")
        factory = {"device": device, "dtype": dtype}
        self.w_1 = nn.Linear(d_model, dim_feedforward, bias=bias, **factory)
        self.w_2 = nn.Linear(dim_feedforward, d_model, bias=bias, **factory)
        self.dropout = nn.Dropout(dropout)
        self.activation = resolve_activation(activation)

    def forward(self, x: Tensor) -> Tensor:
        """(..., E) -> (..., F) -> (..., E)."""
        return self.w_2(self.dropout(self.activation(self.w_1(x))))
