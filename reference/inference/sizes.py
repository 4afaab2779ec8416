"""The sizes a user's module really has, when its constructor is not given them (an instance, a factory, a
class with a fixed feed-forward width): read from its parameters, the number of heads found by measurement.

A drawn case is adapted to them (``d_model=48`` drawn as 16 is checked at 48), never judged at sizes the
module does not have. What can be read from parameter shapes is read: the model width (the commonest
dimension; where two tie, as a feed-forward's in and hidden widths do, the one the module takes as input),
the feed-forward width (a feed-forward's own width when no other pairs with it), the layer counts (the outermost
lists of alike modules: the encoder's and the decoder's layers, told apart by size; ``None`` entries are holes,
not layers) and a norm's ``normalized_shape``.
The number of heads leaves no trace in any shape: ``head_counts`` lists the divisors of the width to try (the
drawn count first), and the caller keeps the one whose outputs verify against the built-in.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import torch
from torch import Tensor, nn

# the sizes of each level a module may fix, in the built-in's (canonical) names
LEVEL_SIZES: dict[str, tuple[str, ...]] = {
    "attention": ("d_model", "nhead"),
    "layer_norm": ("normalized_shape",),
    "feed_forward": ("d_model", "dim_feedforward"),
    "encoder_layer": ("d_model", "nhead", "dim_feedforward"),
    "decoder_layer": ("d_model", "nhead", "dim_feedforward"),
    "encoder": ("d_model", "nhead", "dim_feedforward", "num_encoder_layers"),
    "decoder_only": ("d_model", "nhead", "dim_feedforward", "num_encoder_layers"),
    "decoder": ("d_model", "nhead", "dim_feedforward", "num_decoder_layers"),
    "transformer": ("d_model", "nhead", "dim_feedforward", "num_encoder_layers", "num_decoder_layers"),
}
ONE_STACK = {"encoder": "num_encoder_layers", "decoder_only": "num_encoder_layers", "decoder": "num_decoder_layers"}


def not_given(level: str, not_taken: dict[str, Any]) -> tuple[str, ...]:
    """The level's sizes the constructor was not given (a plan's ``not_taken``, in canonical names)."""
    out = []
    for size in LEVEL_SIZES[level]:
        asked = "num_layers" if level in ONE_STACK and size == ONE_STACK[level] else size
        if asked in not_taken:
            out.append(size)
    return tuple(out)


def layers_of(module: nn.Module) -> list[nn.Module] | None:
    """The layers a ModuleList/Sequential holds when they are alike modules with parameters (``None`` entries,
    holes a forward skips, left out); None when it is no such list."""
    if not isinstance(module, (nn.ModuleList, nn.Sequential)):
        return None
    layers = [m for m in module if m is not None]
    if not layers or len({type(m) for m in layers}) != 1 or not any(True for _ in layers[0].parameters()):
        return None
    return layers


def layer_stacks(model: nn.Module) -> list[list[nn.Module]]:
    """The layers of the outermost ModuleLists/Sequentials of alike modules with parameters, in order: the layers
    of each stack (a list of heads inside a layer is not a stack)."""
    found: list[list[nn.Module]] = []
    inside: set[int] = set()
    for module in model.modules():
        if id(module) in inside:
            continue
        layers = layers_of(module)
        if layers is not None:
            found.append(layers)
            inside |= {id(m) for m in module.modules()}
    return found


def _accepts(model: nn.Module, width: int, dtype: torch.dtype) -> bool:
    """Whether ``model`` takes a (2, 3, width) input and returns that width (a feed-forward's input width)."""
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, 3, width, dtype=dtype))
    except Exception:
        return False
    return isinstance(out, Tensor) and out.shape[-1] == width


def model_width(model: nn.Module) -> int:
    """The dimension the module takes and returns, of its parameters' dimensions commonest first (a list of
    heads has more per-head rows than rows of the width); the commonest when no one-input call tells."""
    params = list(model.parameters())
    counts = Counter(d for p in params for d in p.shape).most_common()
    return next((d for d, _ in counts if _accepts(model, d, params[0].dtype)), counts[0][0])


def read_sizes(model: nn.Module, level: str, wanted: tuple[str, ...], width: int | None = None) -> dict[str, Any]:
    """The ``wanted`` sizes (canonical names) read from ``model``'s parameters; only what can be read.

    ``width``: the d_model the model was built with, when its constructor took it (a feed-forward block has
    as many parameters of width 4 x d_model as of d_model, so counting cannot tell which is which)."""
    params = list(model.parameters())
    if not params or not wanted:
        return {}
    sizes: dict[str, Any] = {}
    if "normalized_shape" in wanted:
        sizes["normalized_shape"] = tuple(params[0].shape)  # a norm's weight (or its bias) has that shape
        return sizes
    d_model = width if width and "d_model" not in wanted else model_width(model)
    if "d_model" in wanted:
        sizes["d_model"] = d_model
        if level == "feed_forward":  # the level's built-in is a whole layer, its (unused) heads must divide the width
            sizes["nhead"] = 1
    if "dim_feedforward" in wanted:
        shapes = {tuple(p.shape) for p in params if p.dim() == 2}
        widths = sorted({x for (a, b) in shapes for x in (a, b) if x not in (d_model, 3 * d_model)
                         and (x, d_model) in shapes and (d_model, x) in shapes})
        if widths:
            sizes["dim_feedforward"] = widths[-1]
        elif level == "feed_forward" and (d_model, d_model) in shapes:  # no other width pairs with the model's
            sizes["dim_feedforward"] = d_model  # (and no attention's square matrices): its hidden width is d_model
    stacks = layer_stacks(model)
    counts = [len(s) for s in stacks]
    if level in ONE_STACK and ONE_STACK[level] in wanted:
        sizes[ONE_STACK[level]] = max(counts) if counts else 1  # no list of layers: it is one layer (a GPT block)
    if level == "transformer" and counts:
        if len(stacks) >= 2:  # the encoder's layers and the decoder's: a decoder layer has cross-attention too
            first, second = stacks[:2]
            encoder, decoder = sorted((first, second), key=lambda s: sum(p.numel() for p in s[0].parameters()))
            found = {"num_encoder_layers": len(encoder), "num_decoder_layers": len(decoder)}
        else:
            found = {"num_encoder_layers": counts[0], "num_decoder_layers": counts[0]}
        sizes |= {k: v for k, v in found.items() if k in wanted}
    return sizes


def head_counts(d_model: int, drawn: int) -> list[int]:
    """The numbers of heads a width allows (its divisors): the drawn one first, then the nearest to it."""
    divisors = [h for h in range(1, d_model + 1) if d_model % h == 0]
    return sorted(divisors, key=lambda h: (h != drawn, abs(math.log(h / max(drawn, 1)))))


def describe(sizes: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v if not isinstance(v, tuple) or len(v) > 1 else v[0]}" for k, v in sizes.items())
