"""Model and input sizes: the presets, custom sizes from the command line, and the cases to run."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch


@dataclass(frozen=True, kw_only=True)
class Size:
    """One model (d_model, heads, layers, feed-forward width) on one input shape (batch, length)."""

    name: str
    d_model: int
    nhead: int
    num_encoder_layers: int
    num_decoder_layers: int
    dim_feedforward: int
    batch: int
    seq_len: int  # source and target length alike

    def config(self, dropout: float, batch_first: bool) -> dict:
        """nn.Transformer's keyword arguments for this model."""
        return {
            "d_model": self.d_model, "nhead": self.nhead, "num_encoder_layers": self.num_encoder_layers,
            "num_decoder_layers": self.num_decoder_layers, "dim_feedforward": self.dim_feedforward,
            "dropout": dropout, "batch_first": batch_first,
        }

    @property
    def label(self) -> str:
        """Short row name, e.g. ``small N8 L64``."""
        return f"{self.name} N{self.batch} L{self.seq_len}"


PRESETS: dict[str, Size] = {
    "tiny": Size(name="tiny", d_model=64, nhead=4, num_encoder_layers=2, num_decoder_layers=2,
                  dim_feedforward=256, batch=4, seq_len=32),
    "small": Size(name="small", d_model=256, nhead=8, num_encoder_layers=3, num_decoder_layers=3,
                  dim_feedforward=1024, batch=8, seq_len=64),
    "base": Size(name="base", d_model=512, nhead=8, num_encoder_layers=6, num_decoder_layers=6,
                  dim_feedforward=2048, batch=8, seq_len=128),
}
SWEEP_LENGTHS = (128, 256, 512, 1024, 2048)
MODES = ("eval", "train")
PADDINGS = ("none", "right")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Keys accepted by --size, with the Size field each sets.
SIZE_KEYS = {
    "d": "d_model", "heads": "nhead", "enc": "num_encoder_layers", "dec": "num_decoder_layers",
    "ff": "dim_feedforward", "batch": "batch", "len": "seq_len",
}


def parse_size(text: str) -> Size:
    """``d=384,heads=6,enc=4,dec=4,ff=1536,batch=8,len=256`` -> a Size; unnamed keys come from ``small``."""
    values = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep or key.strip() not in SIZE_KEYS or not value.strip().isdigit() or int(value) <= 0:
            raise ValueError(
                f"a custom size is KEY=POSITIVE_INT pairs with keys {', '.join(SIZE_KEYS)}, got {item!r} in {text!r}"
            )
        values[SIZE_KEYS[key.strip()]] = int(value)
    size = dataclasses.replace(PRESETS["small"], name="custom", **values)
    if size.d_model % size.nhead != 0:
        raise ValueError(f"d must be divisible by heads, got d={size.d_model} and heads={size.nhead}")
    return size


def select_sizes(
    presets: list[str], custom: list[str], seq_lens: list[int] | None, batch: int | None
) -> list[Size]:
    """The presets and custom sizes asked for, each at every length of ``seq_lens`` (if given) and ``batch``."""
    unknown = [p for p in presets if p not in PRESETS]
    if unknown:
        raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {', '.join(unknown)}")
    sizes = [PRESETS[p] for p in presets] + [parse_size(c) for c in custom]
    if batch is not None:
        sizes = [dataclasses.replace(s, batch=batch) for s in sizes]
    if seq_lens:
        sizes = [dataclasses.replace(s, seq_len=n) for s in sizes for n in seq_lens]
    return sizes


@dataclass(frozen=True)
class Case:
    """One size on one device and dtype, with or without padding: every implementation and mode runs on it."""

    size: Size
    device: str
    dtype: str
    padding: str  # "none", or "right": each sequence padded at its end, as the nested-tensor path needs

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


def attention_bytes(size: Size, mode: str, dtype: str) -> int:
    """A rough peak for materialized attention: (N, H, L, L) matrices kept per attention in train, 3 at once in eval.

    Used only to skip cases that would not fit; the measured peak is what gets reported.
    """
    one = size.batch * size.nhead * size.seq_len**2 * DTYPES[dtype].itemsize
    attentions = size.num_encoder_layers + 2 * size.num_decoder_layers
    return one * (4 * attentions if mode == "train" else 3)
