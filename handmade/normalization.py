"""Layer normalization (Ba et al. 2016), applied around every sublayer (paper section 3.1)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


class LayerNorm(nn.Module):
    """(x - mean) / sqrt(biased variance + eps) * weight + bias over the last dims; a drop-in for nn.LayerNorm."""

    def __init__(
        self, normalized_shape: int | tuple[int, ...] | list[int], eps: float = 1e-5, elementwise_affine: bool = True,
        bias: bool = True, device: torch.device | str | None = None, dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        if any(s <= 0 for s in shape):
            raise ValueError(f"normalized_shape must be positive, got normalized_shape={shape}")
        self.normalized_shape, self.eps, self.elementwise_affine = shape, eps, elementwise_affine
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.ones(shape, **factory)) if elementwise_affine else None
        self.bias = nn.Parameter(torch.zeros(shape, **factory)) if elementwise_affine and bias else None

    def forward(self, input: Tensor) -> Tensor:
        """Normalize ``input`` (..., *normalized_shape); the argument is named as nn.LayerNorm's."""
        x = input
        if tuple(x.shape[-len(self.normalized_shape) :]) != self.normalized_shape:
            raise ValueError(
                f"input's last dims must be normalized_shape={self.normalized_shape}, got shape {tuple(x.shape)}"
            )
        dims = tuple(range(-len(self.normalized_shape), 0))
        dtype = x.dtype
        if dtype in (torch.float16, torch.bfloat16):  # as torch's kernel: statistics in float32, one rounding at
            x = x.float()  # the end (in half precision a large mean swamps the rows, and rsqrt's backward overflows)
        centered = x - x.mean(dim=dims, keepdim=True)
        var = centered.square().mean(dim=dims, keepdim=True)  # biased: divide by n, not n - 1
        y = centered * torch.rsqrt(var + self.eps)  # eps inside the square root
        if self.weight is not None:
            y = y * self.weight
        if self.bias is not None:
            y = y + self.bias
        return y.to(dtype)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"
