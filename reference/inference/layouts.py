"""Other row layouts of a packed q/k/v projection, to try when the map paired by order does not verify.

A target's packed projection (``qkv = nn.Linear(E, 3E)``, or a ``to_kv`` of 2E rows) pairs with torch's
``in_proj_weight`` by shape, but which of its rows are q, k and v is decided by how its forward splits them:
``chunk(3)`` gives torch's blocked ``[q; k; v]``, a ``view(N, L, H, 3 * D)`` before the split gives rows
interleaved per head (``[q_0; k_0; v_0; q_1; ...]``, head after head), and the blocks may come in another
order. None of that shows in any shape, so each layout is a candidate map, and the one whose outputs equal the
built-in's is kept: the same layout for every packed projection of the target (one piece of code).

When none does (a bug after the projection: heads merged without the transpose, a wrong scale), the layout is
still measured: ``zero_values`` zeroes the built-in's value rows, and with them every value the attention
mixes, so that everything between the scores and the output projection (scale, masks, softmax, the merge) has
nothing left to change. The candidate whose target output then equals the built-in's is the one that puts
the value rows where the target's code reads its values (``weightmap.infer_weight_map``).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator

import torch
from torch import nn

from reference.inference.maps import Link, Source, WeightMap

ROLES = ("q", "k", "v")


def packed_sizes(builtin: nn.Module) -> dict[str, tuple[int, int]]:
    """Each packed built-in tensor (``in_proj_weight``, ``in_proj_bias``) -> (embed_dim, num_heads)."""
    found: dict[str, tuple[int, int]] = {}
    for prefix, module in builtin.named_modules():
        if isinstance(module, nn.MultiheadAttention):
            at = f"{prefix}." if prefix else ""
            for leaf in ("in_proj_weight", "in_proj_bias"):
                if getattr(module, leaf, None) is not None:
                    found[f"{at}{leaf}"] = (module.embed_dim, module.num_heads)
    return found


def _covered(link: Link, sizes: dict[str, tuple[int, int]], total: dict[str, int]) -> tuple[str, list[int]] | None:
    """(packed tensor, the roles (0 q, 1 k, 2 v) whose whole thirds one link's single source holds), when it
    holds two or more."""
    if len(link.sources) != 1 or link.sources[0].name not in sizes:
        return None
    source = link.sources[0]
    e = sizes[source.name][0]
    a, b = source.rows or (0, total[source.name])
    roles = [r for r in range(3) if a <= r * e and (r + 1) * e <= b]
    return (source.name, roles) if len(roles) >= 2 and (b - a) == len(roles) * e else None


def _sources(name: str, roles: list[int], order: tuple[int, ...], per_head: bool, e: int,
             heads: int) -> tuple[Source, ...]:
    ranked = [r for r in order if r in roles]  # a k/v link keeps the relative order of k and v
    if not per_head:
        return tuple(Source(name, (r * e, (r + 1) * e)) for r in ranked)
    d = e // heads
    return tuple(Source(name, (r * e + h * d, r * e + (h + 1) * d)) for h in range(heads) for r in ranked)


def alternatives(wm: WeightMap, builtin: nn.Module) -> Iterator[WeightMap]:
    """``wm`` with its packed q/k/v links laid out otherwise, the same layout for all of them: q, k, v per head
    first (the usual one), then the blocks in each other order, then per head in each other order. Nothing when
    it has no packed link."""
    sizes = packed_sizes(builtin)
    total = {n: p.shape[0] for n, p in builtin.named_parameters() if n in sizes}
    packed = {i: found for i, link in enumerate(wm.links) if (found := _covered(link, sizes, total)) is not None}
    if not packed:
        return
    tried: set[tuple[tuple[Source, ...], ...]] = set()
    one_head = all(sizes[name][1] == 1 for name, _ in packed.values())  # per head is then in blocks
    orders = list(itertools.permutations(range(3)))
    layouts = ([(True, orders[0])] if not one_head else []) + [(False, o) for o in orders[1:]] + (
        [(True, o) for o in orders[1:]] if not one_head else [])  # the usual ones first: q, k, v per head
    for per_head, order in layouts:
        if not per_head and all([r for r in order if r in roles] == roles for _, roles in packed.values()):
            continue  # torch's own layout (a k/v link's order unchanged): the map already tried
        links = list(wm.links)
        for i, (name, roles) in packed.items():
            e, heads = sizes[name]
            said = "".join(ROLES[r] for r in order if r in roles)
            how = f"packed {said} " + ("per head, head after head" if per_head else "in blocks")
            links[i] = dataclasses.replace(links[i], sources=_sources(name, roles, order, per_head, e, heads),
                                           how=f"{links[i].how}; {how}, by measurement")
        key = tuple(links[i].sources for i in packed)
        if key not in tried:
            tried.add(key)
            yield dataclasses.replace(wm, links=tuple(links))


def zero_values(builtin: nn.Module) -> nn.Module:
    """``builtin`` (in place) with each packed projection's value rows and bias at zero."""
    packed = packed_sizes(builtin)
    with torch.no_grad():
        for name, param in builtin.named_parameters():
            if name in packed:
                e = packed[name][0]
                param[2 * e:3 * e] = 0.0
    return builtin
