"""A target the harness cannot resolve at any level: its constructor needs objects no level configuration can
name or stand in for (a tokenizer of the user's own class, a checkpoint file), and no factory is given."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn


class Tokenizer:
    def __init__(self, vocabulary: list[str]) -> None:
        self.vocabulary = vocabulary


class CheckpointedSeq2Seq(nn.Module):
    def __init__(self, tokenizer: Tokenizer, checkpoint: Path) -> None:
        super().__init__()
        self.embed = nn.Embedding(len(tokenizer.vocabulary), 8)
        self.model = nn.Transformer(8, 2, 1, 1, 16)
        self.model.load_state_dict(torch.load(Path(checkpoint)))

    def forward(self, src: Tensor, tgt: Tensor) -> Tensor:
        return self.model(src, tgt)
