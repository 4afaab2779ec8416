"""Tiled attention with an online softmax: equation 1 without ever forming the (L, S) score matrix.

The second attention core of handmade, beside the paper-order ``ScaledDotProductAttention`` (the default).
It computes the same softmax(Q Kᵀ / sqrt(D) + mask) V one tile at a time, as FlashAttention (Dao et al. 2022)
and Rabe & Staats 2021 ("Self-attention Does Not Need O(n^2) Memory") do:

Forward, for each block of queries (rows i) and then each block of keys (columns j), with
s = q_i k_jᵀ / sqrt(D) + mask_ij, a running max m, a running sum l and an unnormalized output acc per row:

    m' = max(m, rowmax(s))                 the new running max
    p  = exp(s - m')                       this tile's weights, relative to the new max
    l  = l * exp(m - m') + rowsum(p)       the old sum rescaled to the new max, plus this tile's
    acc = acc * exp(m - m') + p v_j        the same for the output (p dropped out first, in train mode)

then out_i = acc / l and the log-sum-exp lse_i = m + log(l). Only out and lse are saved for backward
(besides the inputs): the backward recomputes each tile's weights exactly as p = exp(s - lse) and uses
rowsum(dO * O) in place of rowsum(dP * P), so no (L, S) matrix exists in either pass. Memory is O(L D) plus
one (N, H, query_block, key_block) tile.

Masks: an additive float mask broadcastable to (N, H, L, S), as the default core takes (finite values and
-inf). A tile whose mask is -inf everywhere (e.g. above the diagonal of a causal mask) is skipped. A query
whose keys are all -inf attends to nothing: output 0 and gradient 0, as in the default core and torch's
layers (it has l = 0; its lse is set to +inf so that the backward's exp(s - lse) is 0 there).

Dropout (train mode): each tile's keep mask is drawn from its own generator, seeded by one number drawn from
the device's default generator per call and the tile's position, so the backward redraws the same mask
without storing it (FlashAttention does the same with Philox offsets). Each weight is kept independently
with probability 1 - p and scaled by 1 / (1 - p), the distribution of the default core's ``F.dropout``;
the masks themselves differ: the default core draws one (N, H, L, S) Bernoulli tensor from the global
stream, which a tile-by-tile core cannot reproduce without forming it. So with ``torch.manual_seed(s)`` the
two cores give different (equally distributed) masks, and this core advances the global generator by one
draw per attention call where the default core advances it by N * H * L * S. tests/handmade/test_tiled_attention.py
checks the distribution (the fraction kept, the mean output) and that forward and backward use one mask.

Low precision: float16 and bfloat16 inputs are computed in float32 (scores, softmax, sums and the products
with V), rounded once at the end, as the default core and torch's kernels do.

Weights: the probabilities are the (L, S) matrix this core exists to avoid, so it returns None for them
(``returns_weights = False``); ``MultiheadAttention`` then uses the default core for a call that asks
for them (need_weights=True). The layers always call with need_weights=False.

Select it with ``use_tiled_attention(model)``: it swaps the core of every ``MultiheadAttention`` in any
handmade module, so the constructors keep nn.Transformer's signatures.
"""

from __future__ import annotations

import math
from typing import Any, TypeVar

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from handmade.attention import MultiheadAttention

QUERY_BLOCK = 256  # rows per tile; see use_tiled_attention for how these were chosen
KEY_BLOCK = 256  # columns per tile
_MIX = 0x9E3779B97F4A7C15  # the golden-ratio constant: spreads tile indices over the 64-bit seed space

ModuleT = TypeVar("ModuleT", bound=nn.Module)


def blocks(length: int, size: int) -> list[tuple[int, int]]:
    """[start, stop) ranges of at most ``size`` covering 0..length; the last one may be shorter."""
    return [(start, min(start + size, length)) for start in range(0, length, size)]


def mask_tile(mask: Tensor, rows: tuple[int, int], cols: tuple[int, int]) -> Tensor:
    """The part of a mask broadcastable to (N, H, L, S) that covers ``rows`` x ``cols``, still broadcastable.

    A dimension of size 1 broadcasts over every query (or key), so it is kept whole rather than sliced.
    """
    if mask.size(-2) != 1:
        mask = mask[..., rows[0]:rows[1], :]
    return mask[..., cols[0]:cols[1]] if mask.size(-1) != 1 else mask


def tile_seed(seed: int, i: int, j: int) -> int:
    """The seed of tile (i, j)'s dropout generator: the call's seed mixed with the tile's position."""
    return (seed ^ ((i * 1_000_003 + j + 1) * _MIX)) & 0xFFFF_FFFF_FFFF_FFFF


def keep_mask(seed: int, i: int, j: int, shape: torch.Size, p: float, device: torch.device) -> Tensor:
    """Tile (i, j)'s dropout mask: True (kept) with probability 1 - p, the same on every call with ``seed``."""
    generator = torch.Generator(device=device)
    generator.manual_seed(tile_seed(seed, i, j))
    return torch.rand(shape, generator=generator, device=device) >= p


def _accumulation(dtype: torch.dtype) -> torch.dtype:
    """float32 for float16/bfloat16 (as torch's kernels), the input's own dtype otherwise."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


class TiledAttentionFunction(torch.autograd.Function):
    """softmax(q kᵀ / sqrt(D) + mask) v, forward and backward by tiles; saves only out and lse besides inputs."""

    @staticmethod
    def forward(
        ctx: Any, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout_p: float,
        query_block: int, key_block: int, seed: int,
    ) -> Tensor:
        acc_dtype = _accumulation(q.dtype)
        scale = 1.0 / math.sqrt(q.size(-1))
        qs, kt, v32 = (q.to(acc_dtype) * scale), _transposed(k, acc_dtype), v.to(acc_dtype)
        N, H, L, S, D = *q.shape[:3], k.size(2), v.size(-1)  # D of the values
        rows, cols = blocks(L, query_block), blocks(S, key_block)
        kinds = [[PLAIN if mask is None else _tile_kind(mask_tile(mask, r, c)) for c in cols] for r in rows]
        keep_scale = 0.0 if dropout_p >= 1.0 else 1.0 / (1.0 - dropout_p)
        out = qs.new_empty(N, H, L, D)
        lse = qs.new_empty(N, H, L, 1)
        for i, (r0, r1) in enumerate(rows):
            q_i = qs[:, :, r0:r1]
            m = qs.new_full((N, H, r1 - r0, 1), float("-inf"))  # running max of each row
            total = qs.new_zeros(N, H, r1 - r0, 1)  # running sum l of exp(s - m)
            acc = qs.new_zeros(N, H, r1 - r0, D)  # running sum of exp(s - m) v
            for j, (c0, c1) in enumerate(cols):
                if kinds[i][j] == SKIP:
                    continue
                tile = mask_tile(mask, (r0, r1), (c0, c1)) if mask is not None and kinds[i][j] == MASKED else None
                s = _scores(q_i, kt[..., c0:c1], tile)
                m_new = torch.maximum(m, s.amax(dim=-1, keepdim=True))
                m_ref = m_new.masked_fill(torch.isneginf(m_new), 0.0)  # a row with no key yet: exp(-inf - 0) = 0
                p = s.sub_(m_ref).exp_()  # in place: the scores are not needed again
                rescale = torch.exp(m - m_ref)  # how far the old max was below the new one
                total = total * rescale + p.sum(dim=-1, keepdim=True)
                if dropout_p > 0.0:
                    p = p * keep_mask(seed, i, j, p.shape, dropout_p, p.device) * keep_scale
                acc = acc * rescale + p @ v32[:, :, c0:c1]
                m = m_new
            blocked = total == 0.0  # every key -inf: no weights at all; output 0 as in the default core
            out[:, :, r0:r1] = acc / total.masked_fill(blocked, 1.0)
            lse[:, :, r0:r1] = (m + total.log()).masked_fill(blocked, float("inf"))
        # backward needs the mask only on its MASKED tiles: keep copies of those when they are the smaller part
        # (a causal mask: the diagonal tiles, L x key_block of L x S values), else the mask itself
        masked = [(i, j) for i, row in enumerate(kinds) for j, kind in enumerate(row) if kind == MASKED]
        tiles = [mask_tile(mask, rows[i], cols[j]) for i, j in masked] if mask is not None else []
        keep_tiles = mask is not None and 2 * sum(t.numel() for t in tiles) < mask.numel()
        saved = [t.clone() for t in tiles] if keep_tiles else []
        ctx.save_for_backward(q, k, v, out, lse, None if keep_tiles else mask, *saved)
        ctx.dropout_p, ctx.seed, ctx.blocks, ctx.kinds = dropout_p, seed, (rows, cols), kinds
        ctx.mask_shape = None if mask is None else (mask.shape, mask.dtype)
        ctx.tiles = dict(zip(masked, range(len(saved)), strict=True)) if keep_tiles else None
        return out.to(q.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        q, k, v, out, lse, mask, *saved = ctx.saved_tensors
        (rows, cols), kinds, dropout_p, seed = ctx.blocks, ctx.kinds, ctx.dropout_p, ctx.seed
        acc_dtype = out.dtype
        scale = 1.0 / math.sqrt(q.size(-1))
        qs, k32, do = (q.to(acc_dtype) * scale), k.to(acc_dtype), grad_out.to(acc_dtype)
        kt, vt = _transposed(k, acc_dtype), _transposed(v, acc_dtype)
        keep_scale = 0.0 if dropout_p >= 1.0 else 1.0 / (1.0 - dropout_p)
        delta = (do * out).sum(dim=-1, keepdim=True)  # rowsum(dO * O) = rowsum(dP * P), with or without dropout
        dq, dk, dv = torch.zeros_like(qs), torch.zeros_like(k32), torch.zeros_like(v, dtype=acc_dtype)
        dmask = qs.new_zeros(*q.shape[:3], k.size(2)) if ctx.needs_input_grad[3] else None
        for i, (r0, r1) in enumerate(rows):
            q_i, do_i, lse_i, delta_i = qs[:, :, r0:r1], do[:, :, r0:r1], lse[:, :, r0:r1], delta[:, :, r0:r1]
            for j, (c0, c1) in enumerate(cols):
                if kinds[i][j] == SKIP:
                    continue
                k_j, kt_j, vt_j = k32[:, :, c0:c1], kt[..., c0:c1], vt[..., c0:c1]
                tile = None
                if kinds[i][j] == MASKED:
                    tile = saved[ctx.tiles[i, j]] if ctx.tiles is not None else mask_tile(mask, (r0, r1), (c0, c1))
                p = _scores(q_i, kt_j, tile).sub_(lse_i).exp_()  # the forward's weights, normalized
                dp = do_i @ vt_j
                if dropout_p > 0.0:
                    kept = keep_mask(seed, i, j, p.shape, dropout_p, p.device).to(p.dtype) * keep_scale  # the forward's
                    dv[:, :, c0:c1] += (p * kept).transpose(-2, -1) @ do_i
                    dp *= kept
                else:
                    dv[:, :, c0:c1] += p.transpose(-2, -1) @ do_i
                ds = p * dp.sub_(delta_i)  # the softmax's backward
                dq[:, :, r0:r1] += ds @ k_j
                dk[:, :, c0:c1] += ds.transpose(-2, -1) @ q_i
                if dmask is not None:
                    dmask[:, :, r0:r1, c0:c1] = ds
        grad_mask = None
        if dmask is not None:
            shape, dtype = ctx.mask_shape
            grad_mask = dmask.sum_to_size(shape).to(dtype)
        return (dq.mul_(scale).to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), grad_mask, None, None, None, None)


def _transposed(x: Tensor, dtype: torch.dtype) -> Tensor:
    """(N, H, S, D) -> a contiguous (N, H, D, S) copy in ``dtype``, made once per call: on CPU, q_i @ a slice
    of it took ~470 µs where q_i @ k_j.transpose(-2, -1) took 510-830 µs ((8, 256, 32) x (8, 32, 256), 1 thread)."""
    return x.transpose(-2, -1).to(dtype).contiguous()


def _scores(q_i: Tensor, kt_j: Tensor, mask: Tensor | None) -> Tensor:
    """One tile of scores: q_i (already scaled by 1/sqrt(D)) times k_jᵀ (given transposed), plus the mask's tile."""
    s = q_i @ kt_j
    return s if mask is None else s.add_(mask)  # in place: s is this tile's own (float32 in low precision)


SKIP, PLAIN, MASKED = -1, 0, 1  # a tile's kind: all -inf (contributes nothing), all 0 (no add), anything else


def _tile_kind(mask: Tensor) -> int:
    """SKIP a tile the mask blocks entirely, PLAIN one it leaves as is (no mask, or all 0), else MASKED.

    Checked once per call on the mask's own (broadcast) tile, much smaller than the (N, H, ...) scores when
    the mask is shared across the batch or heads; a causal mask makes the tiles above its diagonal SKIP and
    those below it PLAIN.
    """
    if not bool(mask.any()):
        return PLAIN
    return SKIP if bool(torch.isneginf(mask).all()) else MASKED


class TiledAttention(nn.Module):
    """Equation 1 by tiles with an online softmax: the default core's output, in O(L D) memory.

    Same call as ``ScaledDotProductAttention``: q (N, H, L, D), k and v (N, H, S, D), an additive mask
    broadcastable to (N, H, L, S) or None -> (out, None). It returns no weights (see ``returns_weights``).
    """

    returns_weights = False  # the probabilities are the (L, S) matrix this core never forms

    def __init__(self, query_block: int = QUERY_BLOCK, key_block: int = KEY_BLOCK) -> None:
        super().__init__()
        if query_block < 1 or key_block < 1:
            raise ValueError(f"block sizes must be at least 1, got query_block={query_block}, key_block={key_block}")
        self.query_block, self.key_block = query_block, key_block

    def forward(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout_p: float) -> tuple[Tensor, None]:
        """q (N, H, L, D), k and v (N, H, S, D), mask broadcastable to (N, H, L, S) -> out (N, H, L, D), None."""
        # one draw from the device's default generator per call with dropout: the tiles' masks derive from it
        seed = int(torch.randint(0, 2**62, (), device=q.device)) if dropout_p > 0.0 else 0
        out = TiledAttentionFunction.apply(q, k, v, mask, dropout_p, self.query_block, self.key_block, seed)
        return out, None

    def extra_repr(self) -> str:
        return f"query_block={self.query_block}, key_block={self.key_block}"


def use_tiled_attention(model: ModuleT, query_block: int = QUERY_BLOCK, key_block: int = KEY_BLOCK) -> ModuleT:
    """Give every handmade ``MultiheadAttention`` in ``model`` the tiled core (in place); returns ``model``.

    Works on any handmade module (Transformer, a stack, a layer, one MultiheadAttention), so the constructors
    keep nn.Transformer's signatures exactly; a stack built from a converted layer inherits it through its
    copies. Parameters and state_dict keys are unchanged: the core has none.
    """
    for module in model.modules():
        if isinstance(module, MultiheadAttention):
            module.attention = TiledAttention(query_block, key_block)
    return model
