"""Independent hand-written Transformers for ``parity diagnose``'s tests, in a style unlike handmade/.

One code base, HF / GPT-2 flavoured, whose names and layout the harness has to infer (nothing is a drop-in):
attention with separate ``query``/``key``/``value`` nn.Linear projections and a ``dense`` output, scores by
einsum; the feed-forward as GPT-2's ``Conv1D`` (``c_fc``/``c_proj``: weight stored (in, out), y = addmm(b, x, W));
a hand-written ``LayerNorm`` with ``gamma``/``beta``; each block's parts in an ``nn.ModuleDict``; stacks ``h``
with a final ``ln_f``; sequence-first (L, N, E) tensors inside whatever ``batch_first`` says. The constructor
takes HF-style names (``hidden_size``, ``num_attention_heads``, ``intermediate_size``) that
reference.inference.construct maps from nn.Transformer's ``d_model``, ``nhead``, ``dim_feedforward``; forward is
nn.Transformer's without the ``*_is_causal`` hints (the masks always come with them). Bool masks are True =
blocked, float masks are added; a query whose keys are all blocked gets 0, as in nn.Transformer.

- ``Correct``: no bug; ``parity check tests.targets.diagnose_targets:Correct --profile ci`` passes.
- ``PreNormOnly``: correct code that declines most configurations: NotImplementedError in __init__ unless
  norm_first=True, batch_first=True and activation="gelu"; and it treats every mask as bool (a float mask's
  -inf and any other non-zero entry block, so additive float masks are misread).
- ``InvertedPolarity``: bool masks applied with inverted polarity (True = may attend), without the guard for a
  query left with no key, which gets NaN; float masks are right (catalogue ``bool_mask_inverted``).
- ``CrossAttendsTarget``: the decoder's cross-attention takes keys and values from the decoder stream instead of
  memory, memory masks passed on unchanged (catalogue ``cross_attention_reads_decoder``): wrong values, and a
  shape error when a memory mask is given and the source and target lengths differ.
- ``HalfResidual``: every decoder layer's feed-forward residual adds 0.5 * ff(x): a bug in no catalogue entry.
- ``EpsSix``: every LayerNorm uses eps = 1e-6 hard-coded, whatever layer_norm_eps says (nn's default 1e-5).
- ``WidthScaled``: attention scores scaled by 1/sqrt(d_model) instead of 1/sqrt(head_dim) (``scale_by_d_model``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Masks = dict[str, Any]


class Conv1D(nn.Module):
    """GPT-2's linear layer: the weight is stored (in, out) and applied as addmm(bias, x, weight)."""

    def __init__(self, nx: int, nf: int, bias: bool = True) -> None:
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.02)
        self.bias = nn.Parameter(torch.zeros(nf)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, x.size(-1))
        y = flat @ self.weight if self.bias is None else torch.addmm(self.bias, flat, self.weight)
        return y.view(*x.shape[:-1], self.nf)


class LayerNorm(nn.Module):
    """gamma * (x - mean) / sqrt(var + eps) + beta over the last axis (biased variance)."""

    def __init__(self, hidden_size: int, eps: float, bias: bool) -> None:
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(hidden_size))
        self.beta = nn.Parameter(torch.zeros(hidden_size)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        mu = x.mean(-1, keepdim=True)
        var = (x - mu).pow(2).mean(-1, keepdim=True)
        y = self.gamma * (x - mu) / torch.sqrt(var + self.eps)
        return y if self.beta is None else y + self.beta


def additive(mask: Tensor, dtype: torch.dtype, bug: str) -> Tensor:
    """A mask as scores to add: bool True = blocked (-inf), float added as is (bugs: read as bool, inverted)."""
    if mask.dtype != torch.bool:
        if bug != "as_bool":
            return mask.to(dtype)
        mask = mask != 0
    elif bug == "polarity":
        mask = ~mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, -math.inf)


class Attention(nn.Module):
    """BERT-style multi-head attention on sequence-first tensors: x (L, N, E) queries, context (S, N, E)."""

    def __init__(self, hidden_size: int, heads: int, dropout: float, bias: bool, bug: str) -> None:
        super().__init__()
        self.query = nn.Linear(hidden_size, hidden_size, bias=bias)
        self.key = nn.Linear(hidden_size, hidden_size, bias=bias)
        self.value = nn.Linear(hidden_size, hidden_size, bias=bias)
        self.dense = nn.Linear(hidden_size, hidden_size, bias=bias)
        self.heads, self.p, self.bug = heads, dropout, bug

    def forward(self, x: Tensor, context: Tensor, mask: Tensor | None, padding: Tensor | None) -> Tensor:
        """mask (L, S) or per head (N * heads, L, S), row n * heads + h; padding (N, S)."""
        (L, N, E), S, H = x.shape, context.size(0), self.heads
        q = self.query(x).view(L, N, H, E // H)
        k = self.key(context).view(S, N, H, E // H)
        v = self.value(context).view(S, N, H, E // H)
        scale = 1 / math.sqrt(E if self.bug == "width" else E // H)
        scores = torch.einsum("lnhd,snhd->nhls", q, k) * scale
        if mask is not None:
            add = additive(mask, scores.dtype, self.bug)
            scores = scores + (add.view(N, H, L, S) if add.dim() == 3 else add)
        if padding is not None:
            scores = scores + additive(padding, scores.dtype, self.bug).view(N, 1, 1, S)
        if self.bug == "polarity":  # no guard: a query with every key blocked gets softmax(-inf, ...) = NaN
            probs = scores.softmax(-1)
        else:
            empty = torch.isneginf(scores).all(-1, keepdim=True)
            probs = scores.masked_fill(empty, 0.0).softmax(-1).masked_fill(empty, 0.0)
        probs = F.dropout(probs, self.p, self.training)
        return self.dense(torch.einsum("nhls,snhd->lnhd", probs, v).reshape(L, N, E))


class Block(nn.Module):
    """An encoder block, or with ``cross`` a decoder block; its parts in one ModuleDict."""

    def __init__(self, cfg: dict[str, Any], cross: bool, bug: str) -> None:
        super().__init__()
        E, bias, eps = cfg["hidden_size"], cfg["bias"], 1e-6 if bug == "eps6" else cfg["layer_norm_eps"]
        parts: dict[str, nn.Module] = {
            "attn": Attention(E, cfg["heads"], cfg["dropout"], bias, bug), "ln_1": LayerNorm(E, eps, bias)}
        if cross:
            parts["crossattention"] = Attention(E, cfg["heads"], cfg["dropout"], bias, bug)
            parts["ln_cross"] = LayerNorm(E, eps, bias)
        parts["mlp"] = nn.ModuleDict({"c_fc": Conv1D(E, cfg["intermediate_size"], bias),
                                      "c_proj": Conv1D(cfg["intermediate_size"], E, bias)})
        parts["ln_2"] = LayerNorm(E, eps, bias)
        self.parts = nn.ModuleDict(parts)
        self.act: Callable[[Tensor], Tensor] = cfg["act"]
        self.p, self.norm_first, self.cross, self.bug = cfg["dropout"], cfg["norm_first"], cross, bug

    def residual(self, x: Tensor, norm: nn.Module, f: Callable[[Tensor], Tensor], weight: float = 1.0) -> Tensor:
        if self.norm_first:
            return x + weight * F.dropout(f(norm(x)), self.p, self.training)
        return norm(x + weight * F.dropout(f(x), self.p, self.training))

    def mlp(self, x: Tensor) -> Tensor:
        m = cast(nn.ModuleDict, self.parts["mlp"])
        return m["c_proj"](F.dropout(self.act(m["c_fc"](x)), self.p, self.training))

    def forward(self, x: Tensor, memory: Tensor | None, masks: Masks) -> Tensor:
        p = self.parts
        x = self.residual(x, p["ln_1"], lambda y: p["attn"](y, y, masks["mask"], masks["pad"]))
        if self.cross:
            def cross(y: Tensor) -> Tensor:
                context = y if self.bug == "cross_reads_target" else memory
                return p["crossattention"](y, context, masks["memory_mask"], masks["memory_pad"])

            x = self.residual(x, p["ln_cross"], cross)
        return self.residual(x, p["ln_2"], self.mlp, 0.5 if self.cross and self.bug == "half_residual" else 1.0)


class Stack(nn.Module):
    """GPT-2's naming: blocks ``h`` and the final norm ``ln_f``."""

    def __init__(self, cfg: dict[str, Any], num_layers: int, cross: bool, bug: str) -> None:
        super().__init__()
        self.h = nn.ModuleList(Block(cfg, cross, bug) for _ in range(num_layers))
        eps = 1e-6 if bug == "eps6" else cfg["layer_norm_eps"]
        self.ln_f = LayerNorm(cfg["hidden_size"], eps, cfg["bias"])

    def forward(self, x: Tensor, memory: Tensor | None, masks: Masks) -> Tensor:
        for block in self.h:
            x = block(x, memory, masks)
        return self.ln_f(x)


ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {"relu": F.relu, "gelu": F.gelu}


class Correct(nn.Module):
    """An encoder-decoder Transformer computing what nn.Transformer does (see the module docstring)."""

    bug = ""

    def __init__(self, hidden_size: int = 512, num_attention_heads: int = 8, num_encoder_layers: int = 6,
                 num_decoder_layers: int = 6, intermediate_size: int = 2048, dropout: float = 0.1,
                 activation: str | Callable[[Tensor], Tensor] = "relu", layer_norm_eps: float = 1e-5,
                 batch_first: bool = False, norm_first: bool = False, bias: bool = True) -> None:
        super().__init__()
        if hidden_size % num_attention_heads:
            raise ValueError(f"hidden_size {hidden_size} is not a multiple of num_attention_heads "
                             f"{num_attention_heads}")
        if isinstance(activation, str) and activation not in ACTIVATIONS:
            raise NotImplementedError(f"activation {activation!r}: only 'relu', 'gelu' or a callable")
        self.decline(norm_first=norm_first, batch_first=batch_first, activation=activation)
        act = ACTIVATIONS[activation] if isinstance(activation, str) else activation
        cfg = {"hidden_size": hidden_size, "heads": num_attention_heads, "intermediate_size": intermediate_size,
               "dropout": dropout, "act": act, "layer_norm_eps": layer_norm_eps, "norm_first": norm_first,
               "bias": bias}
        self.encoder = Stack(cfg, num_encoder_layers, False, self.bug)
        self.decoder = Stack(cfg, num_decoder_layers, True, self.bug)
        self.batch_first = batch_first

    def decline(self, **config: Any) -> None:
        """Raise NotImplementedError for a configuration the class does not implement (none here)."""

    def forward(self, src: Tensor, tgt: Tensor, src_mask: Tensor | None = None, tgt_mask: Tensor | None = None,
                memory_mask: Tensor | None = None, src_key_padding_mask: Tensor | None = None,
                tgt_key_padding_mask: Tensor | None = None,
                memory_key_padding_mask: Tensor | None = None) -> Tensor:
        pads = [src_key_padding_mask, tgt_key_padding_mask, memory_key_padding_mask]
        unbatched = src.dim() == 2
        if unbatched:  # (S, E): a batch of one, sequence-first
            src, tgt = src.unsqueeze(1), tgt.unsqueeze(1)
            pads = [None if p is None else p.unsqueeze(0) for p in pads]
        elif self.batch_first:
            src, tgt = src.transpose(0, 1), tgt.transpose(0, 1)
        memory = self.encoder(src, None, {"mask": src_mask, "pad": pads[0]})
        out = self.decoder(tgt, memory, {"mask": tgt_mask, "pad": pads[1], "memory_mask": memory_mask,
                                         "memory_pad": pads[2]})
        return out.squeeze(1) if unbatched else out.transpose(0, 1) if self.batch_first else out


class PreNormOnly(Correct):
    bug = "as_bool"

    def decline(self, **config: Any) -> None:
        act = config["activation"]
        if not config["norm_first"] or not config["batch_first"] or (act != "gelu" and act is not F.gelu):
            raise NotImplementedError("PreNormOnly implements norm_first=True, batch_first=True, activation='gelu' "
                                      f"only; got {config}")


class InvertedPolarity(Correct):
    bug = "polarity"


class CrossAttendsTarget(Correct):
    bug = "cross_reads_target"


class HalfResidual(Correct):
    bug = "half_residual"


class EpsSix(Correct):
    bug = "eps6"


class WidthScaled(Correct):
    bug = "width"
