"""The order the heads are concatenated in before the output projection, measured (fits.py's attention fits).

nn.MultiheadAttention concatenates head h's feature d at h * head_dim + d (``(h d)``). Code that merges
``rearrange(o, 'b h n d -> b n (d h)')``, or lists the heads in another order, feeds out_proj the same
numbers in another order. out_proj is linear, so the target's concatenation is recovered from its output
(solving out_proj's weight, square and generically invertible), and each of its features is matched to the
built-in concatenation's features: a one-to-one match is a permutation, which is then checked forwards
(out_proj applied to the built-in's concatenation permuted) like every fit. Only an exact match counts: a
feature either is another one or it is not. A merge without the transpose mixes positions, not features
(fits.py fits that one).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# The fix of a head split/merge fit, in the layout its data was measured in (seq: (L, N, E); batch: (N, L, E)).
LAYOUT_FIX = {("merge", "seq"): "permute(2, 0, 1, 3) to (L, N, H, D) before reshape(L, N, E)",
              ("merge", "batch"): "transpose(1, 2) to (N, L, H, D) before reshape(N, L, E)",
              ("split", "seq"): "view(L, N, H, D) and then permute(1, 2, 0, 3) to (N, H, L, D)",
              ("split", "batch"): "view(N, L, H, D) and then transpose(1, 2) to (N, H, L, D)"}
MATCH = 1e-6  # relative: a recovered feature is taken for a built-in one this close (the forward check decides)


def _permutation(m: nn.MultiheadAttention, concat: Tensor, got: Tensor) -> list[int] | None:
    """p with the target's concatenation[..., j] = concat[..., p[j]], when one exists; else None."""
    w, b = m.out_proj.weight.detach().double(), m.out_proj.bias
    if w.shape[0] != w.shape[1]:
        return None
    y = got.detach().double().reshape(-1, w.shape[0]) - (0.0 if b is None else b.detach().double())
    try:
        mine = torch.linalg.solve(w, y.T)  # (E, rows): the target's features before out_proj
    except RuntimeError:  # a singular out_proj: the features cannot be recovered
        return None
    ref = concat.detach().double().reshape(-1, w.shape[1]).T
    dist = torch.cdist(mine, ref, p=float("inf"))
    best = dist.argmin(dim=1)
    scale = max(1.0, float(ref.abs().max()))
    if float(dist.min(dim=1).values.max()) > MATCH * scale or len(set(best.tolist())) != len(best):
        return None
    return best.tolist()


def describe(p: list[int], heads: int, head_dim: int) -> tuple[str, str]:
    """(what the permutation is, the fix), in the heads' terms."""
    if all(p[d * heads + h] == h * head_dim + d for h in range(heads) for d in range(head_dim)):
        return ("heads merged in (head_dim, heads) order: feature d*nhead + h is head h's feature d, as "
                "rearrange(o, '... h n d -> ... n (d h)') makes, where nn.MultiheadAttention concatenates "
                "head by head (h d)", "merge head by head: rearrange(o, '... h n d -> ... n (h d)'), i.e. move "
                "the heads axis next to the positions and reshape, so head h takes features h*head_dim:(h+1)*head_dim")
    order = [p[h * head_dim] // head_dim for h in range(heads)]
    if all(p[h * head_dim + d] == order[h] * head_dim + d for h in range(heads) for d in range(head_dim)):
        return (f"heads concatenated in the order {order} where nn.MultiheadAttention concatenates them in order "
                f"0..{heads - 1}", "concatenate the heads in their own order (head h at h*head_dim)")
    j = next(j for j, i in enumerate(p) if i != j)
    return (f"heads' features concatenated in another order before out_proj (feature {j} is head "
            f"{p[j] // head_dim}'s feature {p[j] % head_dim}; nn.MultiheadAttention has head {j // head_dim}'s "
            f"feature {j % head_dim} there)", "concatenate the heads head by head: feature h*head_dim + d")


def merge_order(m: nn.MultiheadAttention, concat: Tensor, got: Tensor) -> tuple[str, str, float] | None:
    """(what, fix, the error left) when the target's output is out_proj of the built-in's concatenation permuted;
    ``concat`` is the built-in's concatenated heads (before out_proj), in the layout of ``got``."""
    p = _permutation(m, concat, got)
    if p is None or p == list(range(len(p))):
        return None
    what, fix = describe(p, m.num_heads, m.head_dim)
    with torch.no_grad():
        fitted = F.linear(concat[..., p], m.out_proj.weight, m.out_proj.bias)
    return what, fix, float((fitted.double() - got.double()).abs().max())
