"""Infer how to call a user's module at a level: arguments from its signature, layout, masks by measurement.

The level's standard call is torch's (``inputs`` such as query/key/value or src/tgt, and keyword masks and
flags with torch's names and conventions). ``infer_calling`` reads the target's ``forward`` signature and
pairs the level's inputs with its parameters (reference/inference/binding.py: by name, else by position; passed
by keyword unless positional-only; a mask parameter without a default gets None when the case has no mask),
tries each pairing in each layout (batch-first, sequence-first) on sample inputs, unmasked, and keeps those
whose output has the built-in's shape (values decide between them: reference/inference/auto.py). Then what each
mask parameter means is measured (reference/inference/mask_probe.py): which keys it blocks, its layout and kind;
the level's masks go to the parameters that can carry them, merged where one carries both. A declared
keep-mask (``keep_mask=True``, ``--keep-masks``) skips the measurement: masks then go by name, as keep-masks.
A required parameter the call leaves out (a mask the code reads unconditionally) gets a neutral mask, and a
GPT causal when given no mask is called with none when its mask is not understood (defaults.py, required.py);
among pairings that run, one binding an input the target ignores is not kept. ``Convention`` turns the
standard call into the target's and says in words what it assumed; what a target cannot take raises
NotSupportedError.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

import reference.inference.binding as binding
import reference.inference.defaults as defaults
import reference.inference.hints as hints
import reference.inference.required as required
from reference.builtin.config import randomize_
from reference.inference.binding import FLAGS
from reference.inference.byname import one_mask_only
from reference.inference.convention import Convention
from reference.inference.copying import copy_model
from reference.inference.keep64 import kept
from reference.inference.mask_probe import keeps_batch_apart
from reference.inference.outputs import read_outputs
from reference.inference.streams import Forms, measure_forms, resolve
from reference.targets.contract import NotSupportedError

__all__ = ["OUTPUT_LIKE", "CallError", "Convention", "infer_calling", "read_outputs"]

# the level's output: which input its shape follows


class CallError(NotSupportedError):
    """No pairing of the level's inputs runs in any layout: the call itself fails, whatever the configuration."""


OUTPUT_LIKE = {"attention": "query", "decoder_layer": "tgt", "decoder": "tgt", "transformer": "tgt"}


def _probe_inputs(conv: Convention, sample: Mapping[str, Tensor], batch_first: bool) -> dict[str, Tensor]:
    """Batch-first example tensors for the probes: the inputs the target takes, keys distinct from queries."""
    bf = {k: v if batch_first else v.transpose(0, 1) for k, v in sample.items()}
    if conv.level != "attention":
        return bf
    query = bf["query"]
    if conv.self_attention_only:
        return {"query": query}
    key = bf.get("key", query[:, :1].expand(-1, query.shape[1] + 1, -1))
    return {"query": query, "key": key} if conv.key_is_value else {"query": query, "key": key,
                                                                  "value": bf.get("value", key)}


def infer_calling(model: nn.Module, level: str, inputs: Mapping[str, Tensor], kwargs: Mapping[str, Any], *,
                  batch_first: bool, expected: Any = None, keep_mask: bool = False, heads: int = 1,
                  mask_cache: MutableMapping[Any, Any] | None = None) -> Convention:
    """The target's calling convention at ``level``, from its signature, sample calls and mask probes.

    ``inputs``/``kwargs`` are one standard call of the level (batched, N != L is best), laid out
    ``batch_first`` or not; ``expected`` the built-in's result for it (for its output shape). Pairings and
    layouts whose unmasked output shape matches are kept (the first in ``inputs``/``batch_first``, the others
    in ``bindings``/``alternatives``: only values decide between them, see ``reference.inference.infer_target``).
    ``heads`` is the number of heads (for per-head mask layouts); ``mask_cache`` keeps measured mask forms per
    pairing and layout, so they are measured once. Raises NotSupportedError when nothing runs.
    """
    params, varargs = binding.forward_params(model)
    sample = {k: v for k, v in inputs.items() if v is not None}
    level_inputs = list(sample)
    all_inputs = ["query", "key", "value"] if level == "attention" else level_inputs
    flags = tuple(f for f in FLAGS if any(p.name == f for p in params))
    batched = next(iter(sample.values())).dim() == 3
    want = read_outputs(expected)["output"].shape if expected is not None else \
        sample[OUTPUT_LIKE.get(level, level_inputs[0])].shape
    # unmasked trials: no masks, and no causal hints (a hint without its mask is refused, as torch refuses it)
    bare = {k: v for k, v in kwargs.items() if k in flags and not isinstance(v, Tensor) and "causal" not in k}
    viable: list[tuple[Convention, list[bool]]] = []
    errors: list[str] = []
    full = binding.pairings(all_inputs, params, varargs)
    for tried in (full, [f for pairs in full for f in binding.fewer(pairs, params)]):  # fewer: if none runs
        for pairs in dict.fromkeys(tried):
            attention = level == "attention"
            conv = Convention(level=level, inputs=pairs, flags=flags, keep_mask=keep_mask, params=params,
                              self_attention_only=attention and len(pairs) == 1,
                              key_is_value=attention and len(pairs) == 2)
            conv, layouts, weights = _runs(conv, model, sample, bare, batch_first, batched, want, errors)
            if layouts:
                viable.append((replace(conv, returns_weights=weights), layouts))
        if viable:
            break
    if not viable:
        raise CallError("the target cannot be called at this level: " + "; ".join(dict.fromkeys(errors))
                        + hints.embeds(model, level))
    viable, ignored = _inputs_matter(viable, model, sample, bare, batch_first)
    conv, layouts = viable[0]
    measured = False
    if len(layouts) > 1:  # the shapes allow both: the layout that keeps batch elements apart, if one does
        layouts = _apart(conv, model, sample, bare, batch_first, layouts)
        measured = len(layouts) == 1
    conv = replace(conv, batch_first=layouts[0] if batched else None, alternatives=tuple(layouts),
                   bindings=tuple((c.inputs, tuple(ls)) for c, ls in viable[1:]))
    conv = _with_masks(conv, model, sample, kwargs, batch_first, heads, mask_cache)
    notes = _notes(conv, layouts, batched, measured) + ignored
    unbatched = _try_unbatched(conv, model, sample, bare, batch_first) if batched else True
    notes.append("takes unbatched input" if unbatched else "does not take unbatched input")
    if (cast := kept(model)) is not None:
        notes.append(f"casts down when run in float64 ({cast}): kept float64 there, so float64 judges its "
                     "arithmetic and the other dtypes its casts")
    returns_weights = conv.returns_weights
    if level == "attention":
        notes.append("returns attention weights" if returns_weights else "returns the output only (no weights)")
    elif returns_weights:
        notes.append("returns a second tensor (attention weights?), which the built-in does not: not judged")
    return replace(conv, unbatched=unbatched, returns_weights=bool(returns_weights), assumptions=tuple(notes))


def _runs(conv: Convention, model: nn.Module, sample: Mapping[str, Tensor], bare: Mapping[str, Any],
          batch_first: bool, batched: bool, want: torch.Size, errors: list[str]) -> tuple[Convention, list[bool], bool]:
    """``conv`` and ``_layouts``'s answer; when it runs in no layout and required parameters get None, ``conv``
    with the first neutral masks for them that run (reference/inference/required.py)."""
    layouts, weights = _layouts(conv, model, sample, bare, batch_first, batched, want, errors)
    names = required.unbound(conv.params, conv.inputs)
    if layouts or not names:
        return conv, layouts, weights
    for neutral in required.candidates(names, list(_probe_inputs(conv, sample, batch_first)),
                                       conv.self_attention_only):
        trial = replace(conv, neutral=neutral)
        layouts, weights = _layouts(trial, model, sample, bare, batch_first, batched, want, [])
        if layouts:
            return trial, layouts, weights
    return conv, [], False


def _layouts(conv: Convention, model: nn.Module, sample: Mapping[str, Tensor], bare: Mapping[str, Any],
             batch_first: bool, batched: bool, want: torch.Size, errors: list[str]) -> tuple[list[bool], bool]:
    """(the layouts in which ``conv`` runs unmasked and gives the built-in's output shape, whether it returns
    attention weights)."""
    layouts: list[bool] = []
    weights = False
    if conv.key_is_value:  # keys and values from one input: whether it runs asks nothing of the sample's values
        sample = {k: v for k, v in sample.items() if k != "value"}
    for layout in ((True, False) if batched else (batch_first,)):
        trial = replace(conv, batch_first=layout if batched else None)
        where = f"{binding.describe(conv.inputs, {}, conv.params)} {'batch-first' if layout else 'sequence-first'}"
        try:
            with torch.no_grad():
                out = trial(model, sample, bare, batch_first=batch_first)
            if conv.neutral and not bool(torch.isfinite(out["output"]).all()):
                raise ValueError("NaN or inf in the output with neutral masks")  # they block every key
        except Exception as exc:
            errors.append(f"{where}: {type(exc).__name__}: {exc}")
            continue
        if out["output"].shape == want:
            layouts.append(layout)
            weights = weights or "weights" in out
        else:
            errors.append(f"{where}: output shape {tuple(out['output'].shape)}, the built-in's {tuple(want)}")
    return layouts, weights


def _apart(conv: Convention, model: nn.Module, sample: Mapping[str, Tensor], bare: Mapping[str, Any],
           batch_first: bool, layouts: list[bool]) -> list[bool]:
    """The layouts in which the target keeps batch elements apart (mask_probe.keeps_batch_apart), else all."""
    probe_model = random_float64_copy(model)
    inputs = _probe_inputs(conv, sample, batch_first)

    def runner(layout: bool) -> Callable[[Mapping[str, Tensor]], Tensor]:
        trial = replace(conv, batch_first=layout)
        return lambda x: trial(probe_model, x, bare, batch_first=True)["output"]

    return [layout for layout in layouts if keeps_batch_apart(runner(layout), inputs)] or layouts


def _inputs_matter(viable: list[tuple[Convention, list[bool]]], model: nn.Module, sample: Mapping[str, Tensor],
                   bare: Mapping[str, Any], batch_first: bool) -> tuple[list[tuple[Convention, list[bool]]], list[str]]:
    """(the pairings in which every bound input moves the output, or all when none does; notes on those
    rejected). A pairing that binds an input to a parameter the target ignores (an optional position or cache
    tensor) runs, but the built-in's input is lost there: a pairing that uses every input is the call meant."""
    if len(viable) < 2:
        return viable, []
    probe_model = functools.cache(lambda: random_float64_copy(model))
    kept, notes = [], []
    for conv, layouts in viable:
        unused = _ignored_inputs(replace(conv, batch_first=layouts[0]), probe_model(), sample, bare, batch_first)
        if unused:
            notes.append(f"{binding.describe(conv.inputs, {}, conv.params)} also runs but ignores "
                         f"{', '.join(unused)} (perturbing it leaves the output unchanged): not used")
        else:
            kept.append((conv, layouts))
    return (kept, notes) if kept else (viable, [])


def _ignored_inputs(conv: Convention, probe_model: nn.Module, sample: Mapping[str, Tensor], bare: Mapping[str, Any],
                    batch_first: bool) -> list[str]:
    """The level inputs bound by ``conv`` whose perturbation leaves its output exactly as it was."""
    inputs = _probe_inputs(conv, sample, batch_first)
    if conv.level == "attention" and not conv.self_attention_only and "value" not in inputs and not conv.key_is_value:
        inputs["value"] = inputs["key"]
    g = torch.Generator().manual_seed(2)
    x = {k: torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in inputs.items()}
    out: list[str] = []
    try:
        with torch.no_grad():
            y0 = conv(probe_model, x, bare, batch_first=True)["output"]
            for name, _ in conv.inputs:
                if name in x:
                    y1 = conv(probe_model, {**x, name: x[name] + torch.randn(x[name].shape, generator=g,
                                                                             dtype=torch.float64)},
                              bare, batch_first=True)["output"]
                    if bool(torch.equal(y0, y1)):
                        out.append(name)
    except Exception:
        return []
    return out


def random_float64_copy(model: nn.Module) -> nn.Module:
    """A float64 copy of ``model`` with random weights (no zero-initialized projection hides what a probe asks)."""
    return randomize_(copy_model(model).to(torch.float64), torch.Generator().manual_seed(0)).eval()


def _with_masks(conv: Convention, model: nn.Module, sample: Mapping[str, Tensor], kwargs: Mapping[str, Any],
                batch_first: bool, heads: int, cache: MutableMapping[Any, Any] | None) -> Convention:
    """``conv`` with the level's masks assigned to the target's parameters: measured, or by name if declared."""
    mask_params = [p.name for p in conv.params if "mask" in p.name or p.name in conv.neutral]
    probe_model = functools.cache(lambda: random_float64_copy(model))  # built once, and only if a probe runs
    inputs = _probe_inputs(conv, sample, batch_first)
    forms: Forms = {}
    if not conv.keep_mask and mask_params:
        key = (conv.inputs, conv.batch_first, tuple(sorted(conv.neutral.items())))  # masks follow the inputs' layout
        found = cache[key] if cache is not None and key in cache else \
            defaults.measured(conv, probe_model, inputs, mask_params, heads, measure_forms)
        if cache is not None:
            cache[key] = found
        if found is None:
            raise CallError(f"the target cannot be called at this level: {defaults.describe_required(conv)}")
        forms, neutral = found
        conv = replace(conv, neutral=neutral)
    causal = bool(kwargs.get("is_causal") or kwargs.get("tgt_is_causal"))  # the level's hint for its self-attention
    masks, forms, merge, always_causal = resolve(conv.level, mask_params, forms, causal)
    if conv.level == "decoder_only" and masks.get("mask") not in (None, *forms) and \
            defaults.causal_by_default(conv, probe_model(), inputs, heads):  # unmeasured: no mask, its own causality
        masks = {k: v for k, v in masks.items() if v != masks["mask"]}
        always_causal = True
        conv = replace(conv, causal_default=True)
    conv = replace(conv, masks=masks, forms=forms, merge_padding=merge, always_causal=always_causal)
    param = masks.get("attn_mask")
    if conv.level == "attention" and param in forms and param not in conv.neutral and \
            defaults.causal_by_default(conv, probe_model(), {"query": inputs["query"]}, heads):
        cols = "query" if conv.self_attention_only else "key"  # unmasked, it is not: its mask blocking nothing
        conv = replace(conv, causal_default=True, neutral={**conv.neutral, param: ("query", cols, forms[param][1])})
    by_name = {k: p for k, p in masks.items() if p not in forms and "padding" not in k
               and (conv.level != "attention" or p == "attn_mask")}  # merged or renamed: written (N, 1|H, L, S)
    if conv.keep_mask or not by_name or conv.batch_first is None:
        return conv

    def run_with(raw: Mapping[str, Tensor]) -> Tensor:
        return conv.invoke(probe_model(), inputs, raw, batch_first=True)["output"]

    return replace(conv, one_mask_only=one_mask_only(conv.level, run_with, inputs, by_name, heads))


def _notes(conv: Convention, layouts: list[bool], batched: bool, measured: bool) -> list[str]:
    notes = [f"called as {binding.describe(conv.inputs, conv.masks, conv.params)}"]
    if conv.self_attention_only:
        notes.append("its attention takes one input: self-attention only")
    if conv.key_is_value:
        notes.append("its attention takes (query, context): keys and values from one input")
    if conv.bindings:
        notes.append("other pairings of the inputs run too: the values decide")
    for param, (_, form) in conv.forms.items():
        carried = " + ".join(k for k, v in conv.masks.items() if v == param) or "nothing the level passes"
        notes.append(f"{param} measured as {form.describe()}; carries {carried}")
    by_name = sorted({v for k, v in conv.masks.items() if v not in conv.forms})
    if by_name:
        notes.append(f"{', '.join(by_name)} passed as keep-masks (True = may attend), as declared" if conv.keep_mask
                     else f"{', '.join(by_name)} passed as torch's masks (True or -inf = blocked), by name: no "
                     "probe showed what it blocks")
    if conv.one_mask_only:
        notes.append(f"{', '.join(conv.one_mask_only)} take(s) one (L, S) mask for every head: it raised with a zero "
                     "(N*H, L, S) one, so per-head masks are not supported")
    if conv.merge_padding:
        notes.append(f"key_padding_mask merged into {conv.masks['attn_mask']} as one (N, 1|H, L, S) mask")
    if conv.neutral:
        causal = conv.level == "attention" and conv.causal_default
        notes.append(("it attends causally when given no mask (measured): " if causal else "") +
                     required.describe(conv.neutral).replace(" is required:", ":" if causal else " is required:"))
    if conv.always_causal:
        notes.append("it attends causally when given no mask (measured), and no probe showed what its mask "
                     "takes: called with none (the level's causal mask is its behaviour)"
                     if conv.causal_default and conv.level == "decoder_only"
                     else "it takes no mask: assumed always causal (the level's causal mask is not passed)")
    layout = "batch-first" if layouts[0] else "sequence-first"
    if measured:
        notes.append(f"layout measured: {layout} (the shapes allow both; it keeps batch elements apart only so)")
    elif batched:
        notes.append(layout + (" (the shapes allow both: values decide)" if len(layouts) > 1 else ""))
    return notes


def _try_unbatched(conv: Convention, model: nn.Module, sample: Mapping[str, Tensor], kwargs: Mapping[str, Any],
                   batch_first: bool) -> bool:
    one = {k: v[0] if batch_first else v[:, 0] for k, v in sample.items()}
    try:
        with torch.no_grad():
            out = replace(conv, unbatched=None)(model, one, kwargs, batch_first=batch_first)
    except Exception:
        return False
    return out["output"].dim() == next(iter(one.values())).dim()
