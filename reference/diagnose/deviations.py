"""The catalogue of known deviations: the ways hand-written Transformers commonly differ from nn.Transformer.

Each entry switches one thing in the variant reference (variants.py). A probe reports an entry as a cause
only when the target's outputs match nn.Transformer *with* that switch much better than without it, so the
catalogue names candidates and the target decides. ``shows_on`` says on which cases a switch can change
anything (so the search skips the others); ``sites`` are the nn.Transformer submodules where it shows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from reference.cases import Case

MASK_FIELDS = ("src_mask", "tgt_mask", "memory_mask")
KPM_FIELDS = ("src_key_padding_mask", "tgt_key_padding_mask", "memory_key_padding_mask")
BOOL_KINDS = ("causal_bool", "random_bool", "per_head_bool", "bool")
FLOAT_KINDS = ("causal_float", "random_inf", "additive", "per_head_additive", "float_inf", "float_finite")
FINITE_KINDS = ("additive", "per_head_additive", "float_finite")


def _kinds(case: Case) -> list[str]:
    return [getattr(case, f) for f in (*MASK_FIELDS, *KPM_FIELDS) if getattr(case, f) != "none"]


def any_mask(case: Case) -> bool:
    return bool(_kinds(case))


def bool_mask(case: Case) -> bool:
    return any(k in BOOL_KINDS for k in _kinds(case))


def float_mask(case: Case) -> bool:
    return any(k in FLOAT_KINDS for k in _kinds(case))


def per_head(case: Case) -> bool:
    return any(getattr(case, f).startswith("per_head") for f in MASK_FIELDS)


def has(field_name: str) -> Callable[[Case], bool]:
    return lambda case: getattr(case, field_name) != "none"


def always(case: Case) -> bool:
    return True


@dataclass(frozen=True)
class Deviation:
    """One known way to differ: the variant switches, the cause it stands for, and how to fix it."""

    key: str
    changes: dict[str, object]
    cause: str  # the cause family, as the report groups them
    does: str  # what the target does, in a learner's words
    fix: str
    sites: tuple[str, ...] = ()  # regexes over nn.Transformer submodule names where it shows
    shows_on: Callable[[Case], bool] = field(default=always, compare=False)


ATTN = (r"\.self_attn$", r"\.multihead_attn$")
NORMS = (r"\.norm\d?$",)
LAYERS = (r"layers\.\d+$",)
PLACEMENT = "pre/post-norm placement"
SCALE = "attention scale"
QKV = "q/k/v order or head split"
LN = "layer-norm formula"

CATALOGUE: tuple[Deviation, ...] = (
    Deviation("pre_norm", {"norm_first": True}, PLACEMENT,
              "normalizes before each sublayer (x + f(norm(x))), whatever norm_first says",
              "honour norm_first: post-norm (the default) is norm(x + f(x))", LAYERS,
              lambda c: not c.config.norm_first),
    Deviation("post_norm", {"norm_first": False}, PLACEMENT,
              "normalizes after each residual sum (norm(x + f(x))), whatever norm_first says",
              "honour norm_first=True: x + f(norm(x))", LAYERS, lambda c: c.config.norm_first),
    Deviation("no_encoder_norm", {"encoder_norm": "missing"}, "missing final norm",
              "skips the encoder's final LayerNorm (encoder.norm)",
              "apply encoder.norm after the last encoder layer: nn.Transformer always has it, even post-norm",
              (r"^encoder\.norm$",)),
    Deviation("no_decoder_norm", {"decoder_norm": "missing"}, "missing final norm",
              "skips the decoder's final LayerNorm (decoder.norm)",
              "apply decoder.norm after the last decoder layer: nn.Transformer always has it, even post-norm",
              (r"^decoder\.norm$",)),
    Deviation("no_final_norms", {"encoder_norm": "missing", "decoder_norm": "missing"}, "missing final norm",
              "skips both final LayerNorms (encoder.norm and decoder.norm)",
              "apply encoder.norm and decoder.norm after the last layer of each stack: nn.Transformer always has "
              "them, even post-norm", (r"^(en|de)coder\.norm$",)),
    Deviation("unbiased_variance", {"ln_var": "unbiased"}, LN,
              "normalizes by the unbiased standard deviation (divides by n - 1, as x.std() does)",
              "use the biased variance: ((x - mean) ** 2).mean(-1), or x.var(-1, unbiased=False)", NORMS),
    Deviation("eps_outside_sqrt", {"ln_eps": "outside_sqrt"}, LN,
              "adds eps to the standard deviation instead of to the variance",
              "divide by sqrt(var + eps), not by std + eps", NORMS),
    Deviation("eps_1e-6", {"ln_eps_value": 1e-6}, LN, "uses eps = 1e-6, not layer_norm_eps",
              "pass layer_norm_eps to every LayerNorm", NORMS),
    Deviation("eps_1e-12", {"ln_eps_value": 1e-12}, LN, "uses eps = 1e-12, not layer_norm_eps",
              "pass layer_norm_eps to every LayerNorm", NORMS),
    Deviation("no_scale", {"scale": "none"}, SCALE, "does not scale the scores q·kᵀ",
              "divide the scores by sqrt(head_dim) = sqrt(d_model / nhead)", ATTN),
    Deviation("scale_d_model", {"scale": "d_model"}, SCALE, "scales the scores by 1/sqrt(d_model)",
              "divide by sqrt(head_dim), the size of ONE head, not of d_model", ATTN),
    Deviation("scale_head_dim", {"scale": "head_dim"}, SCALE, "scales the scores by 1/head_dim (no square root)",
              "divide by sqrt(head_dim)", ATTN),
    Deviation("softmax_queries", {"softmax_dim": -2}, "softmax axis",
              "takes the softmax over the queries (dim -2) instead of over the keys",
              "softmax over the last dimension (keys): scores.softmax(dim=-1)", ATTN),
    *(Deviation(f"qkv_as_{order}", {"qkv_order": order}, QKV,
                f"reads the packed in_proj rows as {', '.join(order)} where nn.Transformer has q, k, v",
                "in_proj_weight rows [0:E] are W_q, [E:2E] W_k, [2E:3E] W_v (in_proj_bias alike)", ATTN)
      for order in ("kqv", "qvk", "vkq", "kvq", "vqk")),
    Deviation("heads_interleaved", {"head_split": "interleaved"}, QKV,
              "splits heads with a stride (head h gets features h, h+H, ...) instead of in blocks",
              "view(..., nhead, head_dim): head h takes features h*head_dim:(h+1)*head_dim", ATTN),
    Deviation("qkv_head_major", {"qkv_layout": "head_major"}, QKV,
              "unpacks in_proj as (nhead, 3, head_dim) rows instead of (3, nhead, head_dim)",
              "in_proj_weight is [W_q; W_k; W_v], each (E, E): chunk(3) first, then split heads", ATTN),
    *(Deviation(f"{stack}_layers_{which}", {f"{stack}_layers": which}, "weights shared between layers",
                f"runs every {stack} layer with the {which} layer's weights (one layer object used N times)",
                "build N separate layers (copy.deepcopy each), not [layer] * N",
                (rf"^{stack}\.layers\.\d+",), lambda c, s=stack: getattr(c.config, f"num_{s}_layers") > 1)
      for stack in ("encoder", "decoder") for which in ("first", "last")),
    *(Deviation(f"layers_{which}", {"encoder_layers": which, "decoder_layers": which}, "weights shared between layers",
                f"runs every layer of both stacks with the {which} layer's weights (one layer object used N times)",
                "build N separate layers (copy.deepcopy each), not [layer] * N", (r"layers\.\d+",),
                lambda c: c.config.num_encoder_layers > 1 or c.config.num_decoder_layers > 1)
      for which in ("first", "last")),
    Deviation("cross_uses_self", {"cross_weights": "self"}, "weights shared between self- and cross-attention",
              "uses the self-attention weights for cross-attention (one attention object for both)",
              "give each decoder layer its own cross-attention (nn.Transformer's multihead_attn)",
              (r"^decoder\.layers\.\d+\.multihead_attn$",)),
    Deviation("self_uses_cross", {"self_weights": "cross"}, "weights shared between self- and cross-attention",
              "uses the cross-attention weights for self-attention (one attention object for both)",
              "give each decoder layer its own self-attention and cross-attention",
              (r"^decoder\.layers\.\d+\.self_attn$",)),
    Deviation("gelu_tanh", {"gelu": "tanh"}, "GELU variant", "uses the tanh approximation of GELU",
              "nn.Transformer's 'gelu' is the exact (erf) GELU: F.gelu(x), not approximate='tanh'", LAYERS,
              lambda c: c.config.activation == "gelu"),
    Deviation("always_relu", {"activation": "relu"}, "GELU variant", "applies ReLU whatever activation says",
              "honour activation='gelu' (exact GELU)", LAYERS, lambda c: c.config.activation != "relu"),
    Deviation("always_gelu", {"activation": "gelu"}, "GELU variant", "applies GELU whatever activation says",
              "honour activation='relu'", LAYERS, lambda c: c.config.activation != "gelu"),
    Deviation("keep_masks", {"mask_polarity": "keep", "fill": "-1e9"}, "mask polarity",
              "reads masks as keep-masks (True / non-zero = may attend), filled with -1e9",
              "nn.Transformer's bool masks are True where attention is NOT allowed; float masks are added",
              ATTN, any_mask),
    Deviation("keep_masks_inf", {"mask_polarity": "keep"}, "mask polarity",
              "reads masks as keep-masks (True / non-zero = may attend)",
              "nn.Transformer's bool masks are True where attention is NOT allowed; float masks are added",
              ATTN, any_mask),
    Deviation("keep_bool_masks", {"mask_polarity": "keep_bool"}, "mask polarity",
              "reads bool masks as keep-masks (True = may attend); float masks are right",
              "nn.Transformer's bool masks are True where attention is NOT allowed", ATTN, bool_mask),
    Deviation("float_as_bool", {"float_masks": "as_bool", "fill": "-1e9"}, "float masks treated as bool",
              "turns float masks into hard masks (any non-zero value blocks) filled with -1e9",
              "add float masks to the scores: a finite value is a bias, only -inf blocks", ATTN, float_mask),
    Deviation("float_as_bool_inf", {"float_masks": "as_bool"}, "float masks treated as bool",
              "turns float masks into hard masks (any non-zero value blocks)",
              "add float masks to the scores: a finite value is a bias, only -inf blocks", ATTN, float_mask),
    Deviation("hint_drops_mask", {"causal_hint": "drops_mask"}, "*_is_causal handling",
              "drops the mask when a *_is_causal hint is given (the hint is not a mask)",
              "is_causal is only a hint that the mask is causal: keep applying the mask",
              ATTN, lambda c: bool(c.src_is_causal or c.tgt_is_causal)),
    Deviation("per_head_head_major", {"per_head_order": "head_major"}, "per-head mask layout",
              "reads a 3-D mask's rows as head * N + batch",
              "row n * nhead + h of an (N*nhead, L, S) mask is batch n, head h", ATTN, per_head),
    *(Deviation(f"{site}_padding_ignored", {f"{site}_kpm": "ignored"}, "padding masks ignored or on the wrong axis",
                f"ignores {site}_key_padding_mask", f"apply {site}_key_padding_mask to the keys of "
                + ("the decoder's cross-attention" if site == "memory" else f"the {site} self-attention"),
                ATTN, has(f"{site}_key_padding_mask"))
      for site in ("src", "tgt", "memory")),
    Deviation("padding_ignored", {"src_kpm": "ignored", "tgt_kpm": "ignored", "memory_kpm": "ignored"},
              "padding masks ignored or on the wrong axis", "ignores every key_padding_mask",
              "add each key_padding_mask (N, S) to its attention's scores, broadcast as (N, 1, 1, S)", ATTN,
              lambda c: any(getattr(c, f) != "none" for f in KPM_FIELDS)),
    Deviation("padding_on_queries", {"kpm_axis": "queries"}, "padding masks ignored or on the wrong axis",
              "applies self-attention key padding masks to the queries (rows) instead of the keys (columns)",
              "a key_padding_mask (N, S) blocks keys: broadcast it as (N, 1, 1, S) over heads and queries",
              ATTN, lambda c: any(getattr(c, f) != "none" for f in KPM_FIELDS)),
    *(Deviation(f"{site}_ignored", {site: "ignored"}, "attention masks ignored", f"ignores {site}",
                f"apply {site} to the scores of " + ("the cross-attention" if site == "memory_mask"
                                                     else "the self-attention"), ATTN, has(site))
      for site in MASK_FIELDS),
    Deviation("masks_ignored", {"src_mask": "ignored", "tgt_mask": "ignored", "memory_mask": "ignored"},
              "attention masks ignored", "ignores every attention mask (src_mask, tgt_mask, memory_mask)",
              "add each mask to its attention's scores (bool True / -inf = blocked)", ATTN,
              lambda c: any(getattr(c, f) != "none" for f in MASK_FIELDS)),
)

BY_KEY = {d.key: d for d in CATALOGUE}
