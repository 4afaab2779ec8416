"""Which of a level's masks each mask parameter of a target carries, decided by what it was measured to block.

A level's masks act on streams of keys: an attention's keys and values, a layer's or stack's own input, a
decoder's own input and its memory. Each stream has an attention mask (one row per query) and a padding mask
(one row per batch element). ``measure_forms`` finds, for each mask parameter, the stream it blocks and its
form (reference/inference/mask_probe.py); ``assign`` gives each stream's masks to the parameters that can carry
them: padding to a padding-only parameter, the attention mask to the first that takes rows per query, and the
padding merged into that one when it is the only one that can carry it. A mask parameter no probe explains
is paired by its name (``pair_by_name``) and given torch's masks, so a target that ignores its mask is still
run with it and judged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from reference.inference.binding import by_name
from reference.inference.mask_probe import Probe, Run, Stream
from reference.inference.masks import MaskForm

Forms = dict[str, tuple[str, MaskForm]]  # target parameter -> (the stream it blocks, its form)

# per level: its streams of keys, each with (attention-mask keyword, padding-mask keyword)
STREAMS: dict[str, tuple[tuple[Stream, str, str], ...]] = {
    "attention": ((Stream("key", ("key", "value"), "query", False), "attn_mask", "key_padding_mask"),),
    "encoder_layer": ((Stream("src", ("src",), "src", True), "src_mask", "src_key_padding_mask"),),
    "encoder": ((Stream("src", ("src",), "src", True), "mask", "src_key_padding_mask"),),
    "decoder_only": ((Stream("src", ("src",), "src", True), "mask", "src_key_padding_mask"),),
    "decoder_layer": ((Stream("tgt", ("tgt",), "tgt", True), "tgt_mask", "tgt_key_padding_mask"),
                      (Stream("memory", ("memory",), "tgt", False), "memory_mask", "memory_key_padding_mask")),
}
STREAMS["decoder"] = STREAMS["decoder_layer"]
# the whole model: only the target's own stream shows at the output (the source's masks act inside the encoder)
STREAMS["transformer"] = ((Stream("tgt", ("tgt",), "tgt", True), "tgt_mask", "tgt_key_padding_mask"),)
SELF_ATTENTION = Stream("key", ("query",), "query", True)  # an attention that takes one input

# names a mask parameter is paired by when no probe explains it (a whole model's source and memory masks act
# inside, out of the probes' sight)
KWARG_ALIASES: dict[str, tuple[str, ...]] = {
    "attn_mask": ("attn_mask", "mask", "attention_mask", "src_mask", "causal_mask"),
    "key_padding_mask": ("key_padding_mask", "padding_mask", "pad_mask", "src_key_padding_mask"),
    "mask": ("mask", "src_mask", "attn_mask", "attention_mask", "causal_mask"),
    "src_mask": ("src_mask", "mask", "attn_mask", "enc_mask", "encoder_mask", "attention_mask"),
    "tgt_mask": ("tgt_mask", "trg_mask", "self_mask", "causal_mask", "look_ahead_mask", "dec_mask", "mask"),
    "memory_mask": ("memory_mask", "cross_mask", "memory_attn_mask", "enc_dec_mask", "src_mask"),
    "src_key_padding_mask": ("src_key_padding_mask", "src_padding_mask", "padding_mask", "key_padding_mask"),
    "tgt_key_padding_mask": ("tgt_key_padding_mask", "tgt_padding_mask", "trg_padding_mask"),
    "memory_key_padding_mask": ("memory_key_padding_mask", "memory_padding_mask", "src_padding_mask"),
}
LEVEL_MASKS: dict[str, tuple[str, ...]] = {
    "attention": ("attn_mask", "key_padding_mask"),
    "encoder_layer": ("src_mask", "src_key_padding_mask"),
    "encoder": ("mask", "src_key_padding_mask"),
    "decoder_only": ("mask", "src_key_padding_mask"),
    "decoder_layer": ("tgt_mask", "memory_mask", "tgt_key_padding_mask", "memory_key_padding_mask"),
    "decoder": ("tgt_mask", "memory_mask", "tgt_key_padding_mask", "memory_key_padding_mask"),
    "transformer": ("src_mask", "tgt_mask", "memory_mask", "src_key_padding_mask", "tgt_key_padding_mask",
                    "memory_key_padding_mask"),
}


def measure_forms(level: str, run: Run, inputs: Mapping[str, object], params: Sequence[str], heads: int, *,
                  self_stream: bool = False) -> Forms:
    """Each of ``params`` that a probe explains: (the stream it blocks, its form)."""
    streams = [s for s, _, _ in STREAMS.get(level, ())]
    names = {s.name: (attn, pad) for s, attn, pad in STREAMS.get(level, ())}
    if level == "attention" and self_stream:
        streams = [SELF_ATTENTION]
    if not streams:
        return {}
    try:
        probe = Probe(run, inputs, heads)  # type: ignore[arg-type]
    except Exception:  # the target does not even run on the probe's inputs: nothing measured
        return {}
    out: Forms = {}
    for param in params:
        found = probe.find(param, streams, names)
        if found is not None:
            stream, form = found
            out[param] = (stream.name, form)
    return out


def queries_of(level: str, stream: str) -> str:
    """The level input whose length is the queries' of ``stream``."""
    return next((s.query for s, _, _ in STREAMS.get(level, ()) if s.name == stream), "query")


def assign(level: str, forms: Forms) -> dict[str, str]:
    """The level's mask keywords -> the measured parameters that carry them (see the module's docstring)."""
    out: dict[str, str] = {}
    for stream, attn_kw, pad_kw in STREAMS.get(level, ()):  # exact forms first, then the closest
        on = sorted(((p, f) for p, (name, f) in forms.items() if name == stream.name), key=lambda pf: not pf[1].exact)
        padding_only = [p for p, f in on if f.capability == "padding"]
        rows = [p for p, f in on if f.capability != "padding"]
        full = [p for p, f in on if f.capability == "full"]
        if padding_only:
            out[pad_kw] = padding_only[0]
        if rows:
            out[attn_kw] = rows[0]
        if pad_kw not in out and full:
            others = [p for p in full if p != out.get(attn_kw)]
            out[pad_kw] = (others or full)[0]
    return out


def pair_by_name(level: str, params: Sequence[str]) -> dict[str, str]:
    """The level's mask keywords -> ``params`` by name: exact names first, then the usual spellings."""
    return by_name(LEVEL_MASKS.get(level, ()), params, KWARG_ALIASES)


# the level's keyword for its self-attention's mask: a target taking none, called causal, applies it itself
CAUSAL_MASK = {"attention": "attn_mask", "encoder_layer": "src_mask", "encoder": "mask", "decoder_layer": "tgt_mask",
               "decoder": "tgt_mask", "decoder_only": "mask"}


def resolve(level: str, params: Sequence[str], forms: Forms,
            is_causal: bool) -> tuple[dict[str, str], Forms, bool, bool]:
    """(the level's mask keywords -> the target's parameters, the forms used, whether an attention's padding is
    merged by name into its one mask, whether the target is always causal): measured parameters by ``assign``;
    the others (and a closest form that carries nothing) by name; an attention taking one mask by name carries
    the padding too; a GPT (or an attention drawn causal) that takes no attention mask applies the causal mask
    itself."""
    masks = assign(level, forms)
    unused = [p for p, (_, f) in forms.items() if not f.exact and p not in masks.values()]
    forms = {p: v for p, v in forms.items() if p not in unused}  # a closest form that carries nothing: by name
    for name, param in pair_by_name(level, [p for p in params if p not in forms]).items():
        masks.setdefault(name, param)  # a mask parameter no probe explained: torch's masks, by its name
    merge = level == "attention" and "attn_mask" in masks and masks["attn_mask"] not in forms and \
        "key_padding_mask" not in masks and masks["attn_mask"] != "attn_mask"
    if merge:
        masks["key_padding_mask"] = masks["attn_mask"]
    causal_level = level == "decoder_only" or is_causal
    always_causal = causal_level and CAUSAL_MASK.get(level, "attn_mask") not in masks
    return masks, forms, merge, always_causal
