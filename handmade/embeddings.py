"""Input and output layers: token embeddings (3.4), sinusoidal positional encoding (3.5), output layer."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Embeddings(nn.Module):
    """Token embeddings scaled by sqrt(d_model) (section 3.4)."""

    def __init__(
        self, vocab_size: int, d_model: int, padding_idx: int | None = None,
        device: torch.device | str | None = None, dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.lut = nn.Embedding(vocab_size, d_model, padding_idx=padding_idx, device=device, dtype=dtype)
        self.d_model = d_model

    def forward(self, tokens: Tensor) -> Tensor:
        """Token ids (...) -> vectors (..., E)."""
        if tokens.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"tokens must be an integer tensor (int64 or int32), got dtype {tokens.dtype}")
        return self.lut(tokens) * math.sqrt(self.d_model)


def sinusoidal_table(max_len: int, d_model: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """PE(pos, 2i) = sin(pos / 10000^(2i/d_model)), PE(pos, 2i+1) = cos(...): shape (max_len, d_model)."""
    position = torch.arange(max_len, dtype=torch.float64).unsqueeze(1)  # (max_len, 1)
    div_term = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float64) * (-math.log(10000.0) / d_model))
    table = torch.zeros(max_len, d_model, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * div_term)
    table[:, 1::2] = torch.cos(position * div_term[: d_model // 2])  # odd d_model has one cos column fewer
    return table.to(dtype)


class PositionalEncoding(nn.Module):
    """Add the fixed sinusoidal position signal to the embeddings, then dropout (section 3.5)."""

    pe: Tensor  # (max_len, E), a buffer

    def __init__(
        self, d_model: int, dropout: float = 0.1, max_len: int = 5000, batch_first: bool = False,
        device: torch.device | str | None = None, dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.batch_first = batch_first
        table = sinusoidal_table(max_len, d_model, dtype or torch.get_default_dtype())
        self.register_buffer("pe", table.to(device), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """x (S, N, E), (N, S, E) when batch_first, or (S, E) unbatched."""
        seq_dim = 1 if self.batch_first and x.dim() == 3 else 0
        length = x.size(seq_dim)
        if length > self.pe.size(0):
            raise ValueError(f"sequence length must be at most max_len={self.pe.size(0)}, got {length}")
        pe = self.pe[:length].to(x.dtype)  # (S, E)
        pe = pe.unsqueeze(1) if x.dim() == 3 and seq_dim == 0 else pe  # (S, 1, E) for sequence-first
        return self.dropout(x + pe)


class Generator(nn.Module):
    """Output layer: a linear map to the vocabulary followed by log-softmax."""

    def __init__(
        self, d_model: int, vocab_size: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> None:
        super().__init__()
        self.proj = nn.Linear(d_model, vocab_size, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        """(..., E) -> log-probabilities (..., vocab_size)."""
        return F.log_softmax(self.proj(x), dim=-1)
