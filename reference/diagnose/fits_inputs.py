"""Attention fits over what it reads: where its projections read from (the queries, keys and values each
projected from the query, key or value input: a key taken from the query, key and value swapped, ...), and
whether it applies the causal mask at all (``unmasked``).

The packed weights are read in every row order too: for a target whose weight map is inferred, the order its
q/k/v rows are in is a layout of its weights (findings.weight_layouts), which a wrong input hides from the map.
Exact only: which tensor a projection reads either is the target's or it is not.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from torch import Tensor

NAMES = {"q": "query", "k": "key", "v": "value"}
ORDERS = ("qkv", "kqv", "qvk", "vkq", "kvq", "vqk")


def _same(a: Tensor, b: Tensor) -> bool:
    return a is b or (a.shape == b.shape and bool((a == b).all()))


def input_fits(err: Callable[[Tensor, Tensor, Tensor, str], float], query: Tensor, key: Tensor,
               value: Tensor) -> list[tuple[str, str | None, float]]:
    """``err(q_in, k_in, v_in, order)``: the target against the built-in's formula with the q, k and v projections
    reading those tensors and the packed rows in ``order``. Each assignment of inputs other than nn's, at the row
    order that fits it best, as (what, catalogue key, error); none where two inputs are one tensor (nothing could
    tell them apart)."""
    given = {"q": query, "k": key, "v": value}
    if any(_same(given[a], given[b]) for a, b in ("qk", "qv", "kv")):
        return []
    fits: list[tuple[str, str | None, float]] = []
    for sources in ("".join(s) for s in itertools.product("qkv", repeat=3)):
        if sources == "qkv":
            continue
        errors = []
        for order in ORDERS:
            try:
                errors.append(err(given[sources[0]], given[sources[1]], given[sources[2]], order))
            except RuntimeError:  # lengths that cannot go together (keys of another length read as queries)
                continue
        if not errors:
            continue
        reads = ", ".join(f"the {role} from the {NAMES[s]} input" for role, s in zip(("queries", "keys", "values"),
                                                                                      sources, strict=True)
                          if role[0] != s)
        name: str | None = None
        if sources[:2] == "qq":  # keys from the query: of its two other inputs it reads one, which values cannot name
            name, what = "query_as_key", f"scores the queries against themselves: it projects {reads}"
            what += "" if sources[2] == "v" else (" (the input passed as key: once keys come from the query, which of "
                                                  "its other two arguments is the key, its values alone cannot tell)")
        else:
            name = "key_value_swapped" if sources == "qvk" else name
            what = f"it projects {reads}, where nn.MultiheadAttention projects each from its own input"
        fits.append((what, name, min(errors)))
    return fits


def unmasked(err: Callable[..., float], named: list[tuple[str, float, str | None]],
             specs: list[tuple[str, str | None, dict[str, Any]]], uses: str) -> list[tuple[str, str | None, float]]:
    """Each fit with the causal mask dropped too (a target taking no mask, guessed always causal, may apply none):
    both named, each carrying the error of the two together, as (what, catalogue key, error)."""
    n, s, key = min(named, key=lambda t: err(scale=t[1], attn_mask=None))
    out: list[tuple[str, str | None, float]] = []
    for what, name, kw in [(f"scores scaled by {s:.4g} = {n}, {uses}", key, {"scale": s}), *specs]:
        after = err(**{**kw, "attn_mask": None})
        out += [(f"{what}; and no causal mask applied", name, after),
                (f"attn_mask ignored: no causal mask applied (and {what})", "masks_ignored", after)]
    return out
