"""Required parameters the level's call gives nothing: a mask ``forward(x, attn_mask)`` uses unconditionally.

A required parameter no input pairs with gets ``None`` (binding.arguments); code that reads it anyway
(``scores.masked_fill(attn_mask.unsqueeze(1) == 0, ...)``) raises, and the target would never run. Then each
such parameter is given a neutral mask (nothing blocked) in the forms the probes know: a bool block- or
keep-mask, a 0/1 integer one, additive zeros, laid out (N, 1, L, S), (N, L, S), (L, S), (N, 1, 1, S) or (N, S),
with rows and columns from the level's inputs. ``candidates`` lists the assignments to try, the likeliest first;
the one kept must run, and its parameter be measured as a mask (reference/inference/calling.py), whose form
then writes the neutral mask wherever the case has none (``write``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import Tensor

from reference.inference.binding import FLAGS, VARARG, Pairs, Param
from reference.inference.masks import MaskForm, encode

# (rows input, columns input, form): a neutral mask for one required parameter
Neutral = dict[str, tuple[str, str, MaskForm]]

LAYOUTS = ("N1LS", "NLS", "LS", "N11S", "NS")
KINDS = ("keep_int", "block_bool", "keep_bool", "additive", "block_int")


def unbound(params: Sequence[Param], pairs: Pairs) -> list[str]:
    """The required parameters of ``forward`` that no input pairs with and no flag fills: they get None."""
    bound = {t for _, t in pairs if not t.startswith(VARARG)}
    return [p.name for p in params if p.required and p.name not in bound and p.name not in FLAGS]


def _sides(inputs: Sequence[str], self_only: bool) -> list[tuple[str, str]]:
    """(rows, columns) input pairs for a mask: queries against keys (the level's second input) first."""
    if self_only or len(inputs) == 1:
        return [(inputs[0], inputs[0])]
    first, second = inputs[0], inputs[1]
    out = [(first, second), (first, first)]
    out += [(a, b) for a, b in itertools.product(inputs, inputs) if (a, b) not in out]
    return out


def candidates(names: Sequence[str], inputs: Sequence[str], self_only: bool = False) -> Iterator[Neutral]:
    """Assignments of a neutral mask to every one of ``names``, the likeliest first: each form in turn for all
    of them, over the (rows, columns) inputs each may span."""
    sides = _sides(list(inputs), self_only)
    for layout, kind in itertools.product(LAYOUTS, KINDS):
        form = MaskForm(layout=layout, kind=kind)
        for chosen in itertools.product(sides, repeat=len(names)):
            yield {name: (rows, cols, form) for name, (rows, cols) in zip(names, chosen, strict=True)}


def write(neutral: Neutral, given: Mapping[str, Tensor], batch_first: bool,
          skip: Mapping[str, object] = {}) -> dict[str, Tensor]:
    """Each neutral mask of ``neutral`` not in ``skip``, written for the level's ``given`` inputs."""
    out: dict[str, Tensor] = {}
    any_input = next(iter(given.values()))
    for name, (rows, cols, form) in neutral.items():
        if name in skip:
            continue
        q, k = given.get(rows, any_input), given.get(cols, any_input)
        batched = q.dim() == 3
        N = (q.shape[0] if batch_first else q.shape[1]) if batched else 1
        L = (q.shape[1] if batch_first else q.shape[0]) if batched else q.shape[0]
        S = (k.shape[1] if batch_first else k.shape[0]) if batched else k.shape[0]
        dtype = q.dtype if q.is_floating_point() else torch.float32
        out[name] = encode(form, torch.zeros(N, 1, L, S, dtype=dtype, device=q.device), name).to(q.device)
    return out


def describe(neutral: Neutral) -> str:
    return "; ".join(f"{name} is required: unmasked cases pass it blocking nothing, as {form.describe()} "
                     f"({rows} x {cols})"
                     for name, (rows, cols, form) in neutral.items())
