"""Blocks whose forward takes the same tensor several times (tests/inference/test_repeated_inputs.py): a layer
level gives one input (or two), and the block needs it as values, keys and queries, as its own encoder calls it
(``block(h, h, h, mask)``). Each parameter no input pairs with takes the input of the nearest one before it.

- ``TripleBlock(width, n_heads, expansion, p)``: a post-norm encoder layer, ``forward(v, k, q, attn_mask)``
  with a required mask. Bug twin ``TripleBlockBug``: the feed-forward's residual is missing.
- ``CrossBlock(width, n_heads, expansion, p)``: a post-norm decoder layer, ``forward(y, enc_v, enc_k,
  src_mask, trg_mask)``: the memory comes once and is both values and keys.
"""

from __future__ import annotations

from torch import Tensor, nn


class TripleBlock(nn.Module):
    def __init__(self, width: int, n_heads: int, expansion: int, p: float) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(width, n_heads, dropout=p, batch_first=True)
        self.after_mha, self.after_mlp = nn.LayerNorm(width), nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, expansion * width), nn.ReLU(), nn.Dropout(p),
                                 nn.Linear(expansion * width, width))
        self.drop = nn.Dropout(p)

    def forward(self, v: Tensor, k: Tensor, q: Tensor, attn_mask: Tensor | None) -> Tensor:
        h = self.after_mha(q + self.drop(self.mha(q, k, v, attn_mask=attn_mask, need_weights=False)[0]))
        return self.after_mlp(self.residual(h, self.drop(self.mlp(h))))

    def residual(self, h: Tensor, f: Tensor) -> Tensor:
        return h + f


class TripleBlockBug(TripleBlock):
    def residual(self, h: Tensor, f: Tensor) -> Tensor:
        return f


class CrossBlock(nn.Module):
    def __init__(self, width: int, n_heads: int, expansion: int, p: float) -> None:
        super().__init__()
        self.own = nn.MultiheadAttention(width, n_heads, dropout=p, batch_first=True)
        self.cross = nn.MultiheadAttention(width, n_heads, dropout=p, batch_first=True)
        self.n1, self.n2, self.n3 = nn.LayerNorm(width), nn.LayerNorm(width), nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, expansion * width), nn.ReLU(), nn.Linear(expansion * width, width))
        self.drop = nn.Dropout(p)

    def forward(self, y: Tensor, enc_v: Tensor, enc_k: Tensor, src_mask: Tensor | None,
                trg_mask: Tensor | None) -> Tensor:
        y = self.n1(y + self.drop(self.own(y, y, y, attn_mask=trg_mask, need_weights=False)[0]))
        y = self.n2(y + self.drop(self.cross(y, enc_k, enc_v, attn_mask=src_mask, need_weights=False)[0]))
        return self.n3(y + self.drop(self.mlp(y)))
