"""Bugs inside equation 1, softmax(q kᵀ / sqrt(D) + mask) v: each a faulty step of handmade's attention.

``Equation1`` is handmade.ScaledDotProductAttention written in steps (scale, probabilities, softmax, drop);
each bug is a subclass that overrides one step, planted into every ``MultiheadAttention.attention``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import handmade
from reference.catalogue._base import ATTN, Deviation, attentions, become, dropout, everywhere

LOW = (torch.float16, torch.bfloat16)


class Equation1(handmade.ScaledDotProductAttention):
    """handmade's equation 1 in overridable steps; without an override it equals handmade's to rounding."""

    def forward(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout_p: float) -> tuple[Tensor, Tensor]:
        dtype = q.dtype
        if dtype in LOW:  # as handmade and torch's kernels: attention in float32 for half inputs
            q, k, v = q.float(), k.float(), v.float()
        weights = self.drop(self.probabilities(self.scale(q) @ k.transpose(-2, -1), mask), dropout_p)
        return (weights @ v).to(dtype), weights.to(dtype)

    def scale(self, q: Tensor) -> Tensor:
        return q * (1.0 / math.sqrt(q.size(-1)))

    def probabilities(self, scores: Tensor, mask: Tensor | None) -> Tensor:
        """softmax(scores + mask); a query whose keys are all blocked attends to nothing (weights 0)."""
        if mask is None:
            return self.softmax(scores)
        blocked = torch.isneginf(mask).all(dim=-1, keepdim=True)
        return self.softmax(scores + mask.masked_fill(blocked, 0.0)) * (~blocked).to(scores.dtype)

    def softmax(self, scores: Tensor) -> Tensor:
        return F.softmax(scores, dim=-1)

    def drop(self, weights: Tensor, p: float) -> Tensor:
        return F.dropout(weights, p=p) if p > 0.0 else weights


class NoScale(Equation1):
    def scale(self, q: Tensor) -> Tensor:
        return q  # no 1/sqrt(D)


class ScaleByModelWidth(Equation1):
    def scale(self, q: Tensor) -> Tensor:
        return q / math.sqrt(q.size(1) * q.size(-1))  # sqrt(H * D) = sqrt(d_model), not sqrt(head size)


class ScaleByHeadSize(Equation1):
    def scale(self, q: Tensor) -> Tensor:
        return q / q.size(-1)  # 1/D: the square root forgotten


class SoftmaxOverQueries(Equation1):
    def softmax(self, scores: Tensor) -> Tensor:
        return F.softmax(scores, dim=-2)  # normalises each key's column


class MaskAfterSoftmax(Equation1):
    def probabilities(self, scores: Tensor, mask: Tensor | None) -> Tensor:
        weights = self.softmax(scores)
        return weights if mask is None else weights.masked_fill(torch.isneginf(mask), 0.0)  # rows no longer sum to 1


class FillMinus1e9(Equation1):
    """Blocked scores replaced by -1e9 (masked_fill), not -inf: a query with every key blocked attends uniformly."""

    def probabilities(self, scores: Tensor, mask: Tensor | None) -> Tensor:
        if mask is None:
            return self.softmax(scores)
        blocked = torch.isneginf(mask)
        return self.softmax((scores + mask.masked_fill(blocked, 0.0)).masked_fill(blocked, -1e9))


class DropsInEval(Equation1):
    """Attention dropout with the module's p whatever the mode (F.dropout's training=True default)."""

    def drop(self, weights: Tensor, p: float) -> Tensor:
        return F.dropout(weights, p=self.__dict__["always_p"])


def _attention_dropout_always(model: nn.Module, config: Mapping[str, object]) -> None:
    for attn in list(attentions(model)):
        become(attn.attention, DropsInEval, always_p=float(attn.dropout))


SCALE = "attention scale"
SOFTMAX = "softmax"
CATALOGUE = (
    Deviation(key="scale_missing", cause=SCALE, does="does not scale the scores q·kᵀ",
              fix="divide the scores by sqrt(head_dim) = sqrt(d_model / nhead)", plant=everywhere(NoScale,
                                                                                                  part="attention"),
              sites=ATTN, claims=(("attention.scale", "none"),)),
    Deviation(key="scale_by_d_model", cause=SCALE, does="scales the scores by 1/sqrt(d_model)",
              fix="divide by sqrt(head_dim), the size of ONE head, not of d_model",
              plant=everywhere(ScaleByModelWidth, part="attention"), sites=ATTN, shows_on=lambda c: c.config.nhead > 1,
              claims=(("attention.scale", "d_model"),)),
    Deviation(key="scale_by_head_dim", cause=SCALE, does="scales the scores by 1/head_dim (no square root)",
              fix="divide by sqrt(head_dim)",
              plant=everywhere(ScaleByHeadSize,
                               part="attention"), sites=ATTN, shows_on=lambda c: c.config.d_model != c.config.nhead,
              claims=(("attention.scale", "head_dim"),)),
    Deviation(key="softmax_over_queries", cause="softmax axis",
              does="takes the softmax over the queries (dim -2) instead of the keys",
              fix="softmax over the last dimension (keys): scores.softmax(dim=-1)",
              plant=everywhere(SoftmaxOverQueries, part="attention"), sites=ATTN, claims=(("attention.softmax",
                                                                                           "queries"),)),
    Deviation(key="mask_after_softmax", cause="mask applied after the softmax",
              does="zeroes blocked keys after the softmax (rows no longer sum to 1; additive masks are lost)",
              fix="add the mask to the scores before the softmax (-inf where blocked)",
              plant=everywhere(MaskAfterSoftmax, part="attention"), sites=ATTN,
              shows_on=lambda c: any(getattr(c, f) != "none" for f in ("src_mask", "tgt_mask", "memory_mask",
                                                                "src_key_padding_mask", "tgt_key_padding_mask",
                                                                "memory_key_padding_mask")),
              claims=(("attention.masking", "after softmax"),)),
    Deviation(key="attention_dropout_in_eval", cause="dropout active in eval",
              does="drops attention probabilities in eval mode too (F.dropout with the module's p, training left True)",
              fix="pass dropout_p = self.dropout if self.training else 0.0 (or use an nn.Dropout module)",
              plant=_attention_dropout_always, sites=ATTN, shows_on=dropout, claims=(("attention.dropout", "always"),),
              probe="twice in eval"),
)
