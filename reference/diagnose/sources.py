"""Which tensor the target feeds a place, measured: the place is fed a different input, and that input is one
the built-in computed elsewhere in the layer, or one of them normalized by a norm of the target's own.

Real code wires a sublayer to the wrong tensor (the feed-forward fed the attention's output instead of the
normalized residual sum, a cross-attention's query read from the self-attention's output) or puts a module
the built-in has no counterpart for in front of it (a feed-forward that normalizes its own input first). In
isolated mode every mapped module before the place returned the built-in's output, so the input the target
gives the place is comparable, tensor for tensor, with everything the built-in recorded inside the same layer
(sums._terms: each submodule's input and output) and with those tensors passed through each of the target's
norms that stands for no site the built-in ran. Only a match the engine's own comparison (tolerance.judge) passes
counts: a place reads a tensor or it does not, so a near match is never named.
"""

from __future__ import annotations

import copy
import re

import torch
from torch import Tensor, nn

from reference.diagnose.fits import _err
from reference.diagnose.sums import LAYER, Measured, _distinct, _terms
from reference.verdict.tolerance import judge

NORMS: tuple[type[nn.Module], ...] = tuple(t for t in (nn.LayerNorm, getattr(nn, "RMSNorm", None)) if t is not None)
WRONG_INPUT, EXTRA = "wrong input", "extra module"


def unpaired_norms(model: nn.Module | None, standing: set[int]) -> dict[str, nn.Module]:
    """The target's norm modules that stand for no site the built-in ran here (``standing``: the ids of those
    that do): the weight map may pair one with a norm the built-in has but does not call at this level."""
    if model is None:
        return {}
    return {name: copy.deepcopy(m).to("cpu", torch.float64) for name, m in model.named_modules()
            if isinstance(m, NORMS) and id(m) not in standing}


def _short(name: str, layer: str) -> str:
    """A recorded tensor's name without the layer's prefix ("layers.0.self_attn's output" -> "self_attn's output")."""
    return re.sub(rf"(?<![\w.]){re.escape(layer)}\.", "", name) if layer else name


def _applied(norm: nn.Module, tensor: Tensor) -> Tensor | None:
    """``norm`` applied to ``tensor``; None when it cannot take it (a norm of another width)."""
    try:
        return norm(tensor)
    except RuntimeError:
        return None


def fed_source(place: str, builtin: str, reference: Tensor, fed: Tensor, calls: dict[str, tuple[tuple, dict]],
               expected: dict[str, Tensor], bound: float, norms: dict[str, nn.Module]) -> list[Measured]:
    """The tensor the target feeds ``place`` (``fed``) where the built-in feeds ``reference``, when it is exactly one
    the built-in recorded in the layer, or such a tensor through one of the target's unpaired norms."""
    before = _err(fed, reference)
    if before <= bound:
        return []
    layer = place if LAYER.search(place) else place.rpartition(".")[0]
    terms = {_short(n, layer): t for n, t in _terms(layer, calls, expected).items() if t.shape == fed.shape}
    distinct = _distinct(terms, bound)
    own = next((n for n, t in distinct.items() if judge(n, reference, t).passed), "its input")
    short = _short(place, layer) or "the module"
    named = next((n for n in own.split(" = ") if n != f"the input of {short}"), own)  # by what computes it
    # what the place should read may be recorded nowhere (computed between recorded tensors, as a functional
    # activation is): then there is no wiring to name
    recorded = named not in ("its input", f"the input of {short}")
    candidates = [(f"{n}", t, WRONG_INPUT, f"feed {short} {named}")
                  for n, t in distinct.items() if recorded and not judge(n, reference, t).passed]
    with torch.no_grad():
        for path, norm in norms.items():
            candidates += [(f"the target's own {type(norm).__name__} {path} applied to {n}", normed, EXTRA,
                            f"remove {path} in front of {short}: {builtin} has no norm there")
                           for n, t in distinct.items()
                           if t.size(-1) == fed.size(-1) and (normed := _applied(norm, t)) is not None]
    for what, value, cause, fix in candidates:
        if judge(what, fed, value).passed:
            reads = f"{short} is fed {what}, where {builtin} feeds it {own}"
            return [Measured(what=reads, key=None, cause=cause, fix=fix, before=before, after=_err(fed, value))]
    return []
