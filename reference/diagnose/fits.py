"""Component-level fits: at the first diverging submodule, measure which formula the target computes there.

Each fit recomputes the built-in submodule from its own weights with one thing changed (an eps or a score
scale fitted by a 1-D search on its log) and compares that with the target's output for the same input, as
max |a - b| with NaN equal to NaN (NaN against a number: inf), so NaN rows of a fully blocked query match.
Keys name the catalogue entry (reference.catalogue.BY_KEY) a fit equals numerically; a component cannot tell
which site a mask is, so mask fits name the stack-wide key (``masks_ignored``) for the caller to narrow.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reference.diagnose.fits_heads import LAYOUT_FIX, merge_order
from reference.diagnose.fits_inputs import input_fits, unmasked
from reference.verdict.tolerance import FLOAT64_FLOOR

# Every catalogue key a fit may name (tests/diagnose/test_fits.py checks each is in reference.catalogue.BY_KEY).
KEYS = frozenset({"layer_norm_eps_1e-5", "layer_norm_eps_1e-6", "layer_norm_eps_1e-12", "layer_norm_unbiased_variance",
                  "layer_norm_eps_outside_sqrt", "scale_missing", "scale_by_d_model", "scale_by_head_dim",
                  "softmax_over_queries", "head_merge_without_transpose", "head_split_without_transpose",
                  "masks_ignored", "bool_mask_inverted", "padding_ignored", "causal_off_by_one", "always_relu",
                  "output_projection_missing", "always_gelu", "gelu_tanh_approximation", "query_as_key",
                  "key_value_swapped",
                  *(f"qkv_as_{o}" for o in ("kqv", "qvk", "vkq", "kvq", "vqk"))})
ROUNDING = 1e-12  # relative: two outputs this close are the same formula
SAME = 1e-9  # relative: the recomputed built-in must reproduce its output this closely, or no fit is tried
# What a query with every key blocked gets: NaN (softmax of -inf), output 0, or a -1e9 fill (uniform weights).
WHEN_BLOCKED = {"nan": "NaN", "zero": "0", "uniform": "uniform weights (blocked scores filled with -1e9)"}
MODES = tuple(WHEN_BLOCKED)


@dataclass(frozen=True)
class Fit:
    what: str          # one line a learner understands, with the fitted numbers
    _: KW_ONLY
    key: str | None    # the bug-catalogue key it equals, or None for a measured cause outside it
    before: float      # max |got - expected|
    after: float       # max |got - fitted formula's output|
    fix: str = ""      # what to change, where no catalogue entry says it


def _err(a: Tensor, b: Tensor) -> float:
    if a.shape != b.shape or not a.numel():
        return math.inf if a.shape != b.shape else 0.0
    a, b = a.detach().double(), b.detach().double()
    same = (torch.isnan(a) & torch.isnan(b)) | (a == b)  # NaN = NaN, inf = inf
    return float(torch.where(same, 0.0, (a - b).abs().nan_to_num(nan=math.inf)).max())


def _scale(t: Tensor) -> float:
    finite = t.detach()[torch.isfinite(t.detach())]
    return max(1.0, float(finite.abs().max())) if finite.numel() else 1.0


def _minimize(f: Callable[[float], float], lo: float, hi: float, step: float) -> tuple[float, float]:
    """(x, f(x)) at the least f on [lo, hi]: a grid of ``step``, then golden-section search around its best point."""
    xs = [lo + step * i for i in range(round((hi - lo) / step) + 1)]
    i = min(range(len(xs)), key=lambda i: f(xs[i]))
    a, b, g = xs[max(i - 1, 0)], xs[min(i + 1, len(xs) - 1)], (math.sqrt(5) - 1) / 2
    for _ in range(60):
        c, d = b - g * (b - a), a + g * (b - a)
        a, b = (a, d) if f(c) <= f(d) else (c, b)
    return min(((xs[i], f(xs[i])), ((a + b) / 2, f((a + b) / 2))), key=lambda t: t[1])


def _keep(fits: list[Fit]) -> list[Fit]:  # best first, only the fits that at least halve the error
    return sorted((f for f in fits if f.after < f.before / 2), key=lambda f: f.after)


# --- nn.LayerNorm ----------------------------------------------------------------------------------------------

def _layer_norm(m: nn.LayerNorm, x: Tensor, eps: float, *, unbiased: bool = False, at_std: bool = False,
                center: bool = True, weight: bool = True, bias: float = 1.0, dims: tuple[int, ...] = (-1,)) -> Tensor:
    c = x - x.mean(dim=dims, keepdim=True) if center else x
    n = math.prod(x.size(d) for d in dims)
    var = c.square().sum(dim=dims, keepdim=True) / (n - 1 if unbiased else n)
    y = c / (var.sqrt() + eps) if at_std else c * torch.rsqrt(var + eps)
    y = y * m.weight if weight and m.weight is not None else y
    return y + bias * m.bias if bias and m.bias is not None else y  # bias -1: subtracted


def _eps_fit(m: nn.LayerNorm, x: Tensor, got: Tensor, before: float) -> Fit:
    def err(log_eps: float) -> float:
        return _err(got, _layer_norm(m, x, 10.0**log_eps))

    log_eps, after = _minimize(err, -14.0, 0.0, 0.25)
    equal = [k for k in range(15) if err(-k) <= 2 * after + ROUNDING * _scale(got)]
    if not equal:
        return Fit(f"eps = {10.0**log_eps:.3g} (fitted; nn.LayerNorm's is {m.eps:g})", key=None, before=before,
                   after=after)
    k = min(equal, key=lambda k: abs(k + log_eps))
    spread = f"; the output cannot tell 1e-{max(equal)} from 1e-{min(equal)}" if len(equal) > 1 else ""
    key = f"layer_norm_eps_1e-{k}"
    return Fit(f"eps = {10.0**-k:g} (nn.LayerNorm's is {m.eps:g}){spread}", key=key if key in KEYS else None,
               before=before, after=err(-k))


# the formulas a hand-written norm gets wrong (also fitted by their gradients, reference/diagnose/gradients.py)
NORM_FORMULAS: tuple[tuple[str, str | None, dict[str, Any]], ...] = (
    ("adds eps to the standard deviation instead of to the variance: (x - mean) / (std + eps)",
     "layer_norm_eps_outside_sqrt", {"at_std": True}),
    ("divides by the unbiased standard deviation (n - 1, as x.std() does)", "layer_norm_unbiased_variance",
     {"unbiased": True}),
    ("RMSNorm: x / sqrt(mean(x²) + eps), no centering", None, {"center": False}),
)


def _norm_fits(m: nn.LayerNorm, x: Tensor, got: Tensor, expected: Tensor, before: float) -> list[Fit]:
    if len(m.normalized_shape) != 1 or _err(expected, _layer_norm(m, x, m.eps)) > SAME * _scale(expected):
        return []  # the recomputation does not reproduce the built-in: nothing here can be trusted
    w, b = m.weight is not None, m.bias is not None
    variants: list[tuple[str, str | None, dict]] = [
        *NORM_FORMULAS,
        *[("weight and bias not applied" if b else "weight not applied", None, {"weight": False, "bias": False})] * w,
        *[("bias subtracted instead of added: x̂ * weight - bias", None, {"bias": -1.0})] * b,
        *[("weight not applied (bias is)", None, {"weight": False}), ("bias not applied (weight is)", None,
          {"bias": False}), ("RMSNorm without bias: weight * x / sqrt(mean(x²) + eps)", None,
          {"center": False, "bias": False})] * (w and b),
        *((f"normalizes over dim {d} (size {x.size(d)}) instead of the last (features)", None, {"dims": (d,)})
          for d in range(x.dim() - 1) if x.size(d) > 1),
    ]
    fits = [Fit(what, key=key, before=before, after=_err(got, _layer_norm(m, x, m.eps, **kw)))
            for what, key, kw in variants]
    return [_eps_fit(m, x, got, before), *fits]


# --- nn.MultiheadAttention -------------------------------------------------------------------------------------

def _additive(mask: Tensor | None, like: Tensor) -> Tensor | float:
    if mask is None or mask.dtype != torch.bool:
        return 0.0 if mask is None else mask.to(like.dtype)
    return torch.zeros(mask.shape, dtype=like.dtype, device=like.device).masked_fill(mask, -math.inf)


def _mha(m: nn.MultiheadAttention, query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None,  # noqa: PLR0913 (the formula's own inputs, then the knobs the fits turn, keyword-only)
         kpm: Tensor | None, *, scale: float | None = None, softmax_dim: int = -1, split: str = "", merge: str = "",
         order: str = "qkv", out: bool = True, blocked: str = "zero") -> Tensor:
    """nn.MultiheadAttention's formula from its weights (eval), with the knobs the fits turn."""
    batched = query.dim() == 3
    q, k, v = (t.transpose(0, 1) if m.batch_first and batched else t if batched else t.unsqueeze(1)
               for t in (query, key, value))
    kpm = kpm if kpm is None or batched else kpm.unsqueeze(0)
    (L, N, E), S, H = q.shape, k.size(0), m.num_heads
    hd = E // H
    ws = m.in_proj_weight.chunk(3) if m._qkv_same_embed_dim else (m.q_proj_weight, m.k_proj_weight, m.v_proj_weight)
    bs = (None,) * 3 if m.in_proj_bias is None else m.in_proj_bias.chunk(3)
    used = dict(zip(order, zip(ws, bs, strict=True), strict=True))  # rows i read as the projection order[i]

    def heads(t: Tensor, which: str) -> Tensor:  # (len, N, E) -> (N, H, len, hd); the bugs reshape without transposing
        t = F.linear(t, *used[which])
        bug = {"seq": t, "batch": t.transpose(0, 1)}.get(split)  # of (len, N, E) or of (N, len, E) data
        return t.reshape(t.size(0), N, H, hd).permute(1, 2, 0, 3) if bug is None else bug.reshape(N, H, -1, hd)

    qh, kh, vh = heads(q, "q"), heads(k, "k"), heads(v, "v")
    z = (qh @ kh.transpose(-2, -1)) * (hd**-0.5 if scale is None else scale)
    add, pad = _additive(attn_mask, z), _additive(kpm, z)
    z = z + (add.view(N, H, L, S) if isinstance(add, Tensor) and add.dim() == 3 else add)
    z = z + (pad.view(N, 1, 1, S) if isinstance(pad, Tensor) else pad)
    if blocked == "uniform":
        z = z.masked_fill(torch.isneginf(z), -1e9)
    w = F.softmax(z, dim=softmax_dim)
    if blocked == "zero":
        w = w.masked_fill(torch.isneginf(z).all(dim=softmax_dim, keepdim=True), 0.0)
    o = w @ vh  # (N, H, L, hd)
    merged = {"seq": lambda: o.reshape(L, N, E), "batch": lambda: o.reshape(N, L, E).transpose(0, 1)}
    o = merged.get(merge, lambda: o.permute(2, 0, 1, 3).reshape(L, N, E))()
    o = F.linear(o, m.out_proj.weight, m.out_proj.bias) if out else o
    return o.transpose(0, 1) if m.batch_first and batched else o if batched else o.squeeze(1)


def _f32(x: float) -> float:
    """``x`` as float32 holds it (a constant computed in float32: torch.tensor(d).rsqrt(), np.float32(...))."""
    return float(torch.tensor(x, dtype=torch.float32))


def _is_causal_mask(mask: Tensor | None) -> bool:
    blocked = mask if mask is None or mask.dtype == torch.bool else torch.isneginf(mask)
    return blocked is not None and blocked.dim() == 2 and bool((blocked == torch.ones_like(blocked).triu(1)).all())


def _invert(mask: Tensor | None) -> Tensor | None:
    """A bool mask negated; a 0 / -inf float mask (a bool mask as nn's layers pass it on) with 0 and -inf swapped."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return ~mask
    return torch.where(torch.isneginf(mask), torch.zeros_like(mask), torch.full_like(mask, float("-inf")))


def _binary(mask: Tensor | None) -> bool:
    """A bool mask, or a float one holding only 0 and -inf (what nn's layers make of a bool mask)."""
    return mask is not None and (mask.dtype == torch.bool or bool(((mask == 0) | torch.isneginf(mask)).all()))


def _attention_fits(m: nn.MultiheadAttention, args: tuple, kwargs: dict, got: Tensor, expected: Tensor,
                    before: float) -> list[Fit]:
    names = ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask", "average_attn_weights")
    call = {**dict(zip(names, args, strict=False)), **kwargs}
    q, k, v = call["query"], call["key"], call["value"]
    mask, kpm, causal = call.get("attn_mask"), call.get("key_padding_mask"), bool(call.get("is_causal", False))
    if m.bias_k is not None or m.add_zero_attn or (m.training and m.dropout > 0):
        return []
    if causal and mask is None:  # torch requires the mask with the hint; a call without it means causal
        seq = int(m.batch_first and q.dim() == 3)
        mask = torch.ones(q.size(seq), k.size(seq), dtype=torch.bool, device=q.device).triu(1)
    base = "nan" if call.get("need_weights", True) else "zero"  # as the built-in treats a fully blocked query
    if _err(expected, _mha(m, q, k, v, mask, kpm, blocked=base)) > SAME * _scale(expected):
        return []

    def err(blocked: str = base, **kw: Any) -> float:
        kw = {"attn_mask": mask, "kpm": kpm, **kw}
        return _err(got, _mha(m, q, k, v, blocked=blocked, **kw))

    def fit(what: str, key: str | None, **kw: Any) -> Fit:
        mode = min(MODES, key=lambda b: (err(b, **kw), b != base))
        after = err(mode, **kw)
        if mode != base and after < err(**kw):
            what += f"; a query with every key blocked gets {WHEN_BLOCKED[mode]}"
        fix = next((LAYOUT_FIX[k, v] for k, v in kw.items() if (k, v) in LAYOUT_FIX), "")
        return Fit(what, key=key, before=before, after=after, fix=fix)

    (n, s, key), named = _scale_fit(err, m.embed_dim, m.head_dim, got)
    uses = f"nn.MultiheadAttention uses 1/sqrt(head_dim) = {m.head_dim**-0.5:.4g}"
    specs: list[tuple[str, str | None, dict[str, Any]]] = [
        ("softmax over the queries (dim -2) instead of the keys", "softmax_over_queries", {"softmax_dim": -2}),
        ("heads merged by reshape(L, N, E) of (N, H, L, head_dim) data, without a permute",
         "head_merge_without_transpose", {"merge": "seq"}),
        ("heads merged by reshape(N, L, E) of (N, H, L, head_dim) data, without transpose(1, 2)",
         "head_merge_without_transpose", {"merge": "batch"}),  # the same bug in a batch-first layout
        ("heads split by reshape(N, H, L, head_dim) of (L, N, E) data, without transposing",
         "head_split_without_transpose", {"split": "seq"}),
        ("heads split by view(N, H, L, head_dim) of (N, L, E) data, without view(N, L, H, head_dim).transpose(1, 2)",
         "head_split_without_transpose", {"split": "batch"}),  # the same bug in a batch-first layout
        ("out_proj not applied after concatenating the heads", "output_projection_missing", {"out": False}),
        *((f"reads the packed in_proj rows as {', '.join(o)} where nn.MultiheadAttention has q, k, v"
           + (" (q and k swapped)" if o == "kqv" else ""), f"qkv_as_{o}", {"order": o})
          for o in ("kqv", "qvk", "vkq", "kvq", "vqk")),
    ]
    scaled = f"scores scaled by {s:.4g} {f'= {n}' if n else '(fitted)'}, {uses}"
    fits = [Fit(scaled, key=key, before=before, after=err(scale=s)),
            *(fit(what, name, **kw) for what, name, kw in specs)]
    guessed = unmasked(err, named, specs, uses) if causal or _is_causal_mask(mask) else []
    fits += [Fit(what, key=name, before=before, after=after) for what, name, after in guessed]
    fits += [Fit(what, key=name, before=before, after=after) for what, name, after in input_fits(
        lambda a, b, c, o: _err(got, _mha(m, a, b, c, mask, kpm, order=o, blocked=base)), q, k, v)
        if after <= SAME * _scale(got)]  # exact only: a projection reads a tensor or it does not
    merged = merge_order(m, _mha(m, q, k, v, mask, kpm, blocked=base, out=False), got)
    fits += [Fit(merged[0], key=None, before=before, after=merged[2], fix=merged[1])] \
        if merged and merged[2] <= SAME * _scale(got) else []
    return fits + _mask_fits(fit, mask, kpm, causal)


Scale = tuple[str, float, "str | None"]  # (how it is named, its value, its catalogue key)


def _scale_fit(err: Callable[..., float], E: int, hd: int, got: Tensor) -> tuple[Scale, list[Scale]]:
    """(the scale that fits best, named where a usual one fits as well; the usual ones, float32-rounded too)."""
    log_s, after = _minimize(lambda t: err(scale=10.0**t), -5.0, 2.0, 0.05)
    named: list[Scale] = [
        ("1 (no scale)", 1.0, "scale_missing"), (f"1/sqrt({E}) = 1/sqrt(embed_dim)", E**-0.5, "scale_by_d_model"),
        (f"1/{hd} = 1/head_dim", 1.0 / hd, "scale_by_head_dim"), (f"1/{E} = 1/embed_dim", 1.0 / E, None),
        (f"sqrt({hd}) = sqrt(head_dim)", hd**0.5, None), (f"sqrt({E}) = sqrt(embed_dim)", E**0.5, None)]
    named += [(f"{n}, rounded to float32 ({_f32(s)!r})", _f32(s), key if s != hd**-0.5 else None)
              for n, s, key in [*named, (f"1/sqrt({hd}) = 1/sqrt(head_dim)", hd**-0.5, None)] if _f32(s) != s]
    equal = [(n, s, key) for n, s, key in named if err(scale=s) <= 2 * after + ROUNDING * _scale(got)]
    return (equal[0] if equal else ("", 10.0**log_s, None)), named


def _mask_fits(fit: Callable[..., Fit], mask: Tensor | None, kpm: Tensor | None, causal: bool) -> list[Fit]:
    """Masks ignored, read with inverted polarity, or causal off by one (either way)."""
    fits = []
    if mask is not None:
        fits.append(fit("attn_mask ignored", "masks_ignored", attn_mask=None))
    if kpm is not None:
        fits.append(fit("key_padding_mask ignored", "padding_ignored", kpm=None))
    bools = [t for t in (mask, kpm) if _binary(t)]
    if bools:
        fits.append(fit("bool masks read with inverted polarity (True = may attend)", "bool_mask_inverted",
                        attn_mask=_invert(mask), kpm=_invert(kpm)))
    if len(bools) == 2:
        fits += [fit("bool attn_mask read with inverted polarity (True = may attend)", None, attn_mask=_invert(mask)),
                 fit("bool key_padding_mask read with inverted polarity (True = may attend)", None, kpm=_invert(kpm))]
    if causal or _is_causal_mask(mask):
        ones = torch.ones(mask.shape, dtype=torch.bool, device=mask.device)  # type: ignore[union-attr]
        fits += [fit("the causal mask also blocks the diagonal (triu(diagonal=0)): a position cannot see itself",
                     None, attn_mask=ones.triu(0)),
                 fit("the causal mask is off by one (triu(diagonal=2)): position t also sees t + 1",
                     "causal_off_by_one", attn_mask=ones.triu(2))]
    return fits


def _linear_fits(m: nn.Linear, x: Tensor, got: Tensor, expected: Tensor, before: float) -> list[Fit]:
    if _err(expected, F.linear(x, m.weight, m.bias)) > SAME * _scale(expected):
        return []
    fits = [Fit("bias not added", key=None, before=before, after=_err(got, F.linear(x, m.weight)))] \
        if m.bias is not None else []
    if m.in_features == m.out_features:
        fits.append(Fit("weight used transposed: x @ W + b instead of x @ Wᵀ + b", key=None, before=before,
                        after=_err(got, F.linear(x, m.weight.T, m.bias))))
    return fits


def fit_component(module: nn.Module, args: tuple, kwargs: dict, expected: Tensor, got: Tensor) -> list[Fit]:
    """Fits for this kind of module (dispatch on nn.LayerNorm / nn.MultiheadAttention / nn.Linear), best first,
    only those whose `after` is below `before`/2 (never a fit that does not lower the error)."""
    before = _err(got, expected)
    if got.shape != expected.shape or before <= FLOAT64_FLOOR * _scale(expected):  # nothing to explain
        return []
    with torch.no_grad():
        if isinstance(module, nn.LayerNorm):
            return _keep(_norm_fits(module, args[0], got, expected, before))
        if isinstance(module, nn.MultiheadAttention):
            return _keep(_attention_fits(module, args, kwargs, got, expected, before))
        if isinstance(module, nn.Linear):
            return _keep(_linear_fits(module, args[0], got, expected, before))
    return []
