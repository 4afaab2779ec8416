"""Bugs at an attention's call site: query, key and value passed in each other's places.

They show only where the attention's inputs are distinct tensors (``Deviation.distinct``): every attention of
a whole Transformer takes one tensor as key and value (self-attention one tensor for all three), so a key/value
swap is invisible there and the zoo hunts these at the attention level (``Deviation.level``), whose cases draw
query, key and value as three tensors of their own, keys of another length.
"""

from __future__ import annotations

from torch import Tensor

import handmade
from reference.catalogue._base import ATTN, Deviation, everywhere

ITSELF = r"^$"  # an attention checked on its own: the module itself is the place


class KeyValueSwapped(handmade.MultiheadAttention):
    """forward(query, key, value) that attends with the values as keys and the keys as values."""

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None,
                need_weights: bool = True, attn_mask: Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, Tensor | None]:
        return super().forward(query, value, key, key_padding_mask, need_weights, attn_mask, average_attn_weights,
                               is_causal)


class QueryAsKey(handmade.MultiheadAttention):
    """forward(query, key, value) that scores the queries against themselves: keys from the query input."""

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None,
                need_weights: bool = True, attn_mask: Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, Tensor | None]:
        return super().forward(query, query, value, key_padding_mask, need_weights, attn_mask, average_attn_weights,
                               is_causal)


INPUTS = "query, key and value mixed up"
CATALOGUE = (
    Deviation(key="key_value_swapped", cause=INPUTS,
              does="passes the values as keys and the keys as values: attn(q, v, k)",
              fix="call attention(query, key, value) in that order: scores from the keys, the sum over the values",
              plant=everywhere(KeyValueSwapped), sites=(*ATTN, ITSELF), claims=(("attention.inputs",
                                                                                 "key value swapped"),),
              level="attention", distinct=("key", "value")),
    Deviation(key="query_as_key", cause=INPUTS,
              does="scores the queries against themselves: keys taken from the query input",
              fix="project the keys from the key input: k = W_k(key), not W_k(query)",
              plant=everywhere(QueryAsKey), sites=(*ATTN, ITSELF), claims=(("attention.inputs", "query as key"),),
              level="attention", distinct=("query", "key")),
)
