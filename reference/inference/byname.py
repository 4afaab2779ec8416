"""What a mask parameter paired by name (no probe explained it) takes: torch's per-head masks, or one mask only.

torch's attention masks come as one ``(L, S)`` mask or per head ``(N*H, L, S)``. A target whose mask no probe
explained (a whole model's source and memory masks act out of the probes' sight) is given torch's masks by
name; one that adds its mask to ``(N, H, L, S)`` scores takes the first and raises on the second, which its API
cannot express. Measured here by running: a zero additive mask in each layout (zeros block nothing, so only
whether it runs is asked); a parameter that runs with ``(L, S)`` and raises with ``(N*H, L, S)`` takes one mask
for every head, and per-head masks for it are "not supported" (``Convention.one_mask_only``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

Run = Callable[[Mapping[str, Tensor]], Tensor]  # the target's mask parameter -> mask: its output


def sides(level: str, keyword: str) -> tuple[str, str]:
    """The level inputs whose lengths are ``keyword``'s rows (queries) and columns (keys)."""
    if keyword == "memory_mask":
        return "tgt", "src" if level == "transformer" else "memory"
    if keyword == "tgt_mask":
        return "tgt", "tgt"
    if keyword == "attn_mask":
        return "query", "key"
    return "src", "src"


def one_mask_only(level: str, run: Run, inputs: Mapping[str, Tensor], by_name: Mapping[str, str],
                  heads: int) -> tuple[str, ...]:
    """The parameters of ``by_name`` (level keyword -> parameter, attention masks only) that run with a zero
    ``(L, S)`` mask and raise with a zero ``(N*H, L, S)`` one; ``inputs`` batch-first."""
    out = []
    for keyword, param in by_name.items():
        rows, cols = sides(level, keyword)
        query = inputs.get(rows, inputs.get("query"))
        key = inputs.get(cols, query)
        if query is None or key is None or query.dim() != 3:
            continue
        N, L, S = query.shape[0], query.shape[1], key.shape[1]
        zeros = torch.zeros(L, S, dtype=query.dtype, device=query.device)
        if _runs(run, {param: zeros}) and not _runs(run, {param: zeros.expand(N * heads, L, S).contiguous()}):
            out.append(param)
    return tuple(out)


def _runs(run: Run, masks: Mapping[str, Tensor]) -> bool:
    try:
        with torch.no_grad():
            run(masks)
    except Exception:  # any error the target raises on this mask: it does not take it
        return False
    return True
