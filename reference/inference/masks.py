"""Masks between torch's conventions and a target's, as measured (reference/inference/mask_probe.py).

torch blocks where a bool mask is True or a float mask is -inf (a finite float is added to the scores),
takes (L, S) or (N*H, L, S) attention masks and a separate (N, S) key-padding mask. A target's mask argument
may be a keep-mask (True or 1 = may attend), bool, 0/1 integer or additive float (0 and -inf, or a large
negative number), laid out (L, S), (N, L, S), (N, 1, L, S), (N, 1, 1, S), (N, S), (L, S, N), ... and may
carry the attention mask, the padding or both merged. A ``MaskForm`` says which; ``encode`` writes torch's
masks, combined, in that form, or raises NotSupportedError for what the form cannot express.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from reference.targets.contract import NotSupportedError

# layouts by what they can carry: every query and batch element its own row ("full"), one row of keys per
# batch element ("padding"), one (L, S) mask for the whole batch ("attention"); per head, with the heads
FULL = ("N1LS", "NLS", "LSN")
PADDING = ("N11S", "NS", "N1S", "SN")
ATTENTION = ("LS", "11LS")
PER_HEAD = ("NHLS", "NH_LS")
KINDS = ("block_bool", "keep_bool", "additive", "keep_int", "block_int", "additive_big")
KIND_WORDS = {
    "block_bool": "bool, True = blocked", "keep_bool": "bool keep-mask, True = may attend",
    "additive": "additive float, 0 or -inf", "keep_int": "0/1 integer, 1 = may attend",
    "block_int": "0/1 integer, 1 = blocked", "additive_big": "additive float, 0 or -1e9",
}
LAYOUT_WORDS = {
    "N1LS": "(N, 1, L, S)", "NLS": "(N, L, S)", "LSN": "(L, S, N)", "N11S": "(N, 1, 1, S)", "NS": "(N, S)",
    "N1S": "(N, 1, S)", "SN": "(S, N)", "LS": "(L, S)", "11LS": "(1, 1, L, S)", "NHLS": "(N, H, L, S)",
    "NH_LS": "(N*H, L, S)",
}
BIG = -1e9


@dataclass(frozen=True, kw_only=True)
class MaskForm:
    """How one mask argument of a target is written: its layout, its kind, and its layout per head (if any)."""

    layout: str
    kind: str
    head_layout: str | None = None
    exact: bool = True  # False: the closest form; none blocked exactly what the probes asked
    finite: bool = False  # an additive kind whose finite values are added to the scores (measured)

    @property
    def capability(self) -> str:
        return "full" if self.layout in FULL else "padding" if self.layout in PADDING else "attention"

    def describe(self) -> str:
        heads = f", per head {LAYOUT_WORDS[self.head_layout]}" if self.head_layout else ""
        closest = "" if self.exact else " (the closest: no form kept the blocked keys out of the output; " \
            "the target's masking may differ)"
        kind = "additive float (0, -inf, finite values added)" if self.finite else KIND_WORDS[self.kind]
        return f"{LAYOUT_WORDS[self.layout]} {kind}{heads}{closest}"


def is_causal_mask(mask: Tensor) -> bool:
    """Whether ``mask`` (L, L) blocks exactly the future: True/-inf above the diagonal, False/0 elsewhere."""
    if mask.dim() != 2 or mask.shape[0] != mask.shape[1]:
        return False
    above = torch.ones(mask.shape, dtype=torch.bool, device=mask.device).triu(1)
    blocked = mask if mask.dtype == torch.bool else torch.isneginf(mask)
    allowed_ok = mask.dtype == torch.bool or bool((mask[~above] == 0).all())
    return bool(torch.equal(blocked, above)) and allowed_ok


def same(a: Tensor, b: Tensor) -> bool:
    """One input given twice (the engine passes copies, so equal values count)."""
    return a is b or (a.shape == b.shape and bool(torch.equal(a.detach(), b.detach())))


def keep(mask: Tensor) -> Tensor:
    """torch's block-mask (True or -inf = blocked) as a keep-mask (True = may attend)."""
    if mask.dtype == torch.bool:
        return ~mask
    if bool(((mask == 0) | torch.isneginf(mask)).all()):
        return mask == 0
    raise NotSupportedError("a float mask with values other than 0 and -inf has no keep-mask form")


def _additive(m: Tensor, dtype: torch.dtype) -> Tensor:
    if m.dtype == torch.bool:
        return torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(m, float("-inf"))
    return m.to(dtype)


def merged(attn: Tensor | None, padding: Tensor | None, given: Mapping[str, Tensor], batch_first: bool) -> Tensor:
    """torch's attn_mask ((L, S) or (N*H, L, S)) and key_padding_mask (N, S) as one mask broadcasting
    against scores (N, H, L, S), blocked where either blocks (bool, or additive float)."""
    query = given["query"]
    batched = query.dim() == 3
    N = query.shape[0 if batch_first else 1] if batched else 1
    parts = []
    if attn is not None:
        if attn.dim() == 3:
            attn = attn.reshape(N, -1, *attn.shape[-2:]) if batched else attn
        parts.append(attn)
    if padding is not None:
        parts.append(padding[:, None, None, :] if batched else padding[None, None, :])
    if len(parts) == 1:
        return parts[0]
    a, b = parts
    if a.dtype == torch.bool and b.dtype == torch.bool:
        return a | b
    return _additive(a, query.dtype) + _additive(b, query.dtype)


def logical(masks: Sequence[tuple[str, Tensor]], N: int, L: int, S: int, dtype: torch.dtype) -> Tensor:
    """torch's masks (("attn", (L, S) or (N*H, L, S)) and ("padding", (N, S))) combined as one additive
    (N, 1 or H, L, S) float mask: -inf where any blocks, their finite values added."""
    total = torch.zeros(N, 1, L, S, dtype=dtype, device=masks[0][1].device)
    for role, m in masks:
        add = _additive(m, dtype)
        if role == "padding":
            add = add.reshape(N, 1, 1, S)
        elif add.dim() == 3:  # torch's per-head masks: (N*H, L, S)
            add = add.reshape(N, -1, L, S)
        total = total + add
    return total


def encode(form: MaskForm, mask: Tensor, name: str) -> Tensor:
    """The (N, 1|H, L, S) additive ``mask`` (``logical``) written in ``form`` for the target's ``name``."""
    N, heads, L, S = mask.shape
    layout = form.layout
    batch_varies = not bool((mask == mask[:1]).all())  # one head: a per-head form carries per-batch masks too
    if heads > 1 or (layout in ATTENTION and batch_varies and form.head_layout is not None):
        if form.head_layout is None:
            raise NotSupportedError(f"the target's {name} takes one {LAYOUT_WORDS[layout]} mask for every head: "
                                    "per-head masks cannot be expressed")
        layout = form.head_layout
    elif layout in PADDING and not bool((mask == mask[:, :, :1]).all()):
        raise NotSupportedError(f"the target's {name} takes a padding mask {LAYOUT_WORDS[layout]}: a mask that "
                                "differs between queries cannot be expressed")
    elif layout in ATTENTION and batch_varies:
        raise NotSupportedError(f"the target's {name} takes one {LAYOUT_WORDS[layout]} mask for the whole batch: "
                                "a mask that differs between batch elements (padding) cannot be expressed")
    blocked = torch.isneginf(mask)
    if not form.finite and bool((mask[~blocked] != 0).any()):
        raise NotSupportedError(f"the target's {name} is a {KIND_WORDS[form.kind]} mask: finite additive mask "
                                "values cannot be expressed")
    values = {
        "block_bool": lambda: blocked, "keep_bool": lambda: ~blocked,
        "keep_int": lambda: (~blocked).long(), "block_int": lambda: blocked.long(),
        "additive": lambda: mask,
        "additive_big": lambda: mask.masked_fill(blocked, max(BIG, torch.finfo(mask.dtype).min)),
    }[form.kind]()
    shaped = {
        "N1LS": lambda t: t, "NHLS": lambda t: t, "NLS": lambda t: t[:, 0], "LSN": lambda t: t[:, 0].permute(1, 2, 0),
        "NH_LS": lambda t: t.reshape(N * heads, L, S), "LS": lambda t: t[0, 0], "11LS": lambda t: t[:1, :1],
        "N11S": lambda t: t[:, :, :1], "NS": lambda t: t[:, 0, 0], "N1S": lambda t: t[:, 0, :1],
        "SN": lambda t: t[:, 0, 0].T,
    }[layout](values)
    return shaped.contiguous()
