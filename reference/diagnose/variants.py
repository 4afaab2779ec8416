"""nn.Transformer's forward math as plain functions of its state_dict, with known deviations switchable.

``forward(state, cfg, src, tgt, kwargs, devs)`` with no deviations equals nn.Transformer (slow path) to
rounding; each deviation (``devs`` maps a switch to a value, see deviations.py) changes one thing the way
hand-written Transformers commonly do. A target that matches a variant and not nn.Transformer has it.
These functions drive the probes of ``parity diagnose``; they are not a model to use.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from reference.build import Config

Devs = Mapping[str, object]
State = Mapping[str, Tensor]


class VariantError(Exception):
    """The variant cannot run on these inputs (nn.Transformer would raise, or a deviation does not apply)."""


def layer_norm(x: Tensor, state: State, prefix: str, eps: float, devs: Devs) -> Tensor:
    """(x - mean) / sqrt(biased var + eps) * w + b, or a common hand-made deviation of it."""
    mean = x.mean(-1, keepdim=True)
    var = x.var(-1, keepdim=True, correction=1 if devs.get("ln_var") == "unbiased" else 0)
    eps = float(devs.get("ln_eps_value", eps))
    y = (x - mean) / (var.sqrt() + eps) if devs.get("ln_eps") == "outside_sqrt" else (x - mean) / (var + eps).sqrt()
    y = y * state[prefix + "weight"]
    bias = state.get(prefix + "bias")
    return y if bias is None else y + bias


def _canonical(mask: Tensor | None, devs: Devs) -> tuple[Tensor | None, Tensor | None]:
    """A mask as (finite additive part, blocked positions), read the way ``devs`` says."""
    if mask is None:
        return None, None
    polarity = devs.get("mask_polarity")
    if polarity == "keep":  # True / non-zero = may attend
        return None, ~mask if mask.dtype == torch.bool else mask == 0
    if mask.dtype == torch.bool:
        return None, ~mask if polarity == "keep_bool" else mask
    if devs.get("float_masks") == "as_bool":
        return None, mask != 0
    blocked = torch.isneginf(mask)
    return mask.masked_fill(blocked, 0.0), blocked


def _heads(t: Tensor, n: int, h: int, devs: Devs) -> Tensor:
    """(len, N, E) -> (N, H, len, D); head h holds features h*D:(h+1)*D (or h::H when interleaved)."""
    if devs.get("head_split") == "interleaved":
        return t.reshape(t.size(0), n, -1, h).permute(1, 3, 0, 2)
    return t.reshape(t.size(0), n, h, -1).permute(1, 2, 0, 3)


def _merge(o: Tensor, devs: Devs) -> Tensor:
    """(N, H, L, D) -> (L, N, E), the inverse of ``_heads``."""
    if devs.get("head_split") == "interleaved":
        return o.permute(2, 0, 3, 1).reshape(o.size(2), o.size(0), -1)
    return o.permute(2, 0, 1, 3).reshape(o.size(2), o.size(0), -1)


def _projections(state: State, prefix: str, cfg: Config, devs: Devs) -> list[tuple[Tensor, Tensor | None]]:
    """(weight, bias) of q, k and v as the target reads them from the packed in_proj tensors."""
    w, b = state[prefix + "in_proj_weight"], state.get(prefix + "in_proj_bias")
    e, h = cfg.d_model, cfg.nhead
    if devs.get("qkv_layout") == "head_major":  # (H, 3, D) rows, as some fused implementations pack them
        ws = [w.view(h, 3, -1, e)[:, i].reshape(e, e) for i in range(3)]
        bs = [None if b is None else b.view(h, 3, -1)[:, i].reshape(e) for i in range(3)]
    else:
        ws = list(w.chunk(3))
        bs = [None] * 3 if b is None else list(b.chunk(3))
    order = str(devs.get("qkv_order", "qkv"))
    return [(ws["qkv".index(c)], bs["qkv".index(c)]) for c in order]


def _mask_for(
    attn_mask: Tensor | None, kpm: Tensor | None, is_causal: bool, explicit_hint: bool,
    shape: tuple[int, int, int, int], devs: Devs, self_attention: bool,
) -> tuple[Tensor | None, Tensor | None]:
    """The (additive, blocked) pair applied to scores of ``shape`` (N, H, L, S), after causal hints."""
    n, h, length, s = shape
    if is_causal and attn_mask is None:
        raise VariantError("is_causal without a mask: nn.Transformer raises")
    if is_causal and explicit_hint and devs.get("causal_hint") == "drops_mask":
        attn_mask = None
    elif is_causal and kpm is None:  # the hint replaces the mask by a top-left causal one
        attn_mask = torch.ones(length, s, dtype=torch.bool, device=attn_mask.device).triu(1)
    add, blocked = _canonical(attn_mask, devs)
    if attn_mask is not None and attn_mask.dim() == 3:
        view = (h, n, length, s) if devs.get("per_head_order") == "head_major" else (n, h, length, s)
        add = None if add is None else add.reshape(view)
        blocked = blocked.reshape(view)
        if devs.get("per_head_order") == "head_major":
            add = None if add is None else add.transpose(0, 1)
            blocked = blocked.transpose(0, 1)
    kpm_add, kpm_blocked = _canonical(kpm, devs)
    if kpm_blocked is not None:
        if devs.get("kpm_axis") == "queries" and self_attention:
            kpm_add = None if kpm_add is None else kpm_add.view(n, 1, s, 1)
            kpm_blocked = kpm_blocked.view(n, 1, s, 1)
        else:
            kpm_add = None if kpm_add is None else kpm_add.view(n, 1, 1, s)
            kpm_blocked = kpm_blocked.view(n, 1, 1, s)
        add = kpm_add if add is None else (add if kpm_add is None else add + kpm_add)
        blocked = kpm_blocked if blocked is None else blocked | kpm_blocked
    return add, blocked


def attention(
    xq: Tensor, xkv: Tensor, state: State, prefix: str, cfg: Config, devs: Devs,
    attn_mask: Tensor | None, kpm: Tensor | None, is_causal: bool, explicit_hint: bool,
) -> Tensor:
    """Multi-head attention from ``xq`` (L, N, E) to ``xkv`` (S, N, E), as MultiheadAttention computes it."""
    (wq, bq), (wk, bk), (wv, bv) = _projections(state, prefix, cfg, devs)
    n, h, e = xq.size(1), cfg.nhead, cfg.d_model
    q, k, v = (_heads(F.linear(x, w, b), n, h, devs) for x, w, b in ((xq, wq, bq), (xkv, wk, bk), (xkv, wv, bv)))
    d = q.size(-1)
    scale = {"none": 1.0, "d_model": e**-0.5, "head_dim": 1.0 / d}.get(str(devs.get("scale")), d**-0.5)
    scores = (q @ k.transpose(-2, -1)) * scale  # (N, H, L, S)
    add, blocked = _mask_for(attn_mask, kpm, is_causal, explicit_hint, tuple(scores.shape), devs, xq is xkv)
    if add is not None:
        scores = scores + add
    dim = int(devs.get("softmax_dim", -1))
    if blocked is None:
        weights = scores.softmax(dim)
    elif devs.get("fill") == "-1e9":  # masked_fill replaces the score; a fully blocked row becomes uniform
        weights = scores.masked_fill(blocked, -1e9).softmax(dim)
    else:  # -inf; a fully blocked row attends to nothing (torch's safe softmax)
        weights = scores.masked_fill(blocked, float("-inf")).softmax(dim).nan_to_num(nan=0.0)
    out = _merge(weights @ v, devs)
    return F.linear(out, state[prefix + "out_proj.weight"], state.get(prefix + "out_proj.bias"))


def feed_forward(x: Tensor, state: State, prefix: str, cfg: Config, devs: Devs) -> Tensor:
    """linear2(act(linear1(x))), with the activation the target applies."""
    act = devs.get("activation", cfg.activation)
    h = F.linear(x, state[prefix + "linear1.weight"], state.get(prefix + "linear1.bias"))
    if act == "relu":
        h = F.relu(h)
    elif act == "gelu":
        h = F.gelu(h, approximate="tanh" if devs.get("gelu") == "tanh" else "none")
    else:
        h = act(h)
    return F.linear(h, state[prefix + "linear2.weight"], state.get(prefix + "linear2.bias"))


def _layer_prefix(stack: str, i: int, count: int, devs: Devs) -> str:
    shared = devs.get(f"{stack}_layers")  # every layer runs with the first (or last) layer's weights
    return f"{stack}.layers.{0 if shared == 'first' else count - 1 if shared == 'last' else i}."


def _detect_causal(mask: Tensor | None, hint: bool | None, size: int) -> bool:
    """nn.Transformer's rule: an explicit hint wins; None means "is the mask the (size, size) causal one?"."""
    if hint is not None or mask is None:
        return bool(hint)
    if tuple(mask.shape) != (size, size):
        return False
    blocked = torch.ones(size, size, dtype=torch.bool, device=mask.device).triu(1)
    return bool((mask == blocked).all()) if mask.dtype == torch.bool else bool((torch.isneginf(mask) == blocked).all()
                                                                               and (mask[~blocked] == 0).all())


def _site(devs: Devs, name: str, value: Tensor | None) -> Tensor | None:
    return None if devs.get(name) == "ignored" else value


def forward(state: State, cfg: Config, src: Tensor, tgt: Tensor, kwargs: Mapping[str, object], devs: Devs) -> Tensor:
    """The variant's output for nn.Transformer's inputs (same layout and masks as ``nn.Transformer.forward``)."""
    devs = dict(devs)
    unbatched = src.dim() == 2
    batch_first = cfg.batch_first != (devs.get("batch_first") == "flipped")
    if unbatched:
        x, y = src.unsqueeze(1), tgt.unsqueeze(1)
    else:
        x, y = (src.transpose(0, 1), tgt.transpose(0, 1)) if batch_first else (src, tgt)
    masks = {k: kwargs.get(k) for k in ("src_mask", "tgt_mask", "memory_mask")}
    kpms = {k: kwargs.get(k) for k in ("src_key_padding_mask", "tgt_key_padding_mask", "memory_key_padding_mask")}
    kpms = {k: None if v is None else (v.unsqueeze(0) if unbatched else v) for k, v in kpms.items()}
    for name, kpm in kpms.items():
        if kpm is not None and kpm.shape != (x.size(1), (y if name.startswith("tgt") else x).size(0)):
            raise VariantError(f"{name} of shape {tuple(kpm.shape)} does not fit the inputs as this variant reads them")
    src_mask, tgt_mask = _site(devs, "src_mask", masks["src_mask"]), _site(devs, "tgt_mask", masks["tgt_mask"])
    memory_mask = _site(devs, "memory_mask", masks["memory_mask"])
    src_kpm = _site(devs, "src_kpm", kpms["src_key_padding_mask"])
    tgt_kpm = _site(devs, "tgt_kpm", kpms["tgt_key_padding_mask"])
    mem_kpm = _site(devs, "memory_kpm", kpms["memory_key_padding_mask"])
    src_hint, tgt_hint = kwargs.get("src_is_causal"), kwargs.get("tgt_is_causal")
    src_causal = _detect_causal(src_mask, src_hint, x.size(0))
    tgt_causal = _detect_causal(tgt_mask, tgt_hint, y.size(0))
    mem_causal = bool(kwargs.get("memory_is_causal", False))
    nf = bool(devs.get("norm_first", cfg.norm_first))
    eps = cfg.layer_norm_eps

    def norm(h: Tensor, prefix: str) -> Tensor:
        return layer_norm(h, state, prefix, eps, devs)

    def residual(h: Tensor, sub: Callable[[Tensor], Tensor], prefix: str) -> Tensor:
        return h + sub(norm(h, prefix)) if nf else norm(h + sub(h), prefix)

    for i in range(cfg.num_encoder_layers):
        p = _layer_prefix("encoder", i, cfg.num_encoder_layers, devs)

        def sa(h: Tensor, p: str = p) -> Tensor:
            return attention(h, h, state, p + "self_attn.", cfg, devs, src_mask, src_kpm, src_causal,
                             src_hint is not None)

        x = residual(x, sa, p + "norm1.")
        x = residual(x, lambda h, p=p: feed_forward(h, state, p, cfg, devs), p + "norm2.")
    if devs.get("encoder_norm") != "missing":
        x = norm(x, "encoder.norm.")
    memory = x
    for i in range(cfg.num_decoder_layers):
        p = _layer_prefix("decoder", i, cfg.num_decoder_layers, devs)
        self_p = p + ("multihead_attn." if devs.get("self_weights") == "cross" else "self_attn.")
        cross_p = p + ("self_attn." if devs.get("cross_weights") == "self" else "multihead_attn.")

        def sa(h: Tensor, self_p: str = self_p) -> Tensor:
            return attention(h, h, state, self_p, cfg, devs, tgt_mask, tgt_kpm, tgt_causal, tgt_hint is not None)

        def ca(h: Tensor, cross_p: str = cross_p) -> Tensor:
            return attention(h, memory, state, cross_p, cfg, devs, memory_mask, mem_kpm, mem_causal, mem_causal)

        y = residual(y, sa, p + "norm1.")
        y = residual(y, ca, p + "norm2.")
        y = residual(y, lambda h, p=p: feed_forward(h, state, p, cfg, devs), p + "norm3.")
    if devs.get("decoder_norm") != "missing":
        y = norm(y, "decoder.norm.")
    if unbatched:
        return y.squeeze(1)
    return y.transpose(0, 1) if batch_first else y
