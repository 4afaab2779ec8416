"""The inferred weight map and calling convention, kept per configuration shape: not searched again per case.

Inferring a map records two forward passes, pairs the tensors and verifies by running; a drawn case with
the same *shape* (the options that change parameter shapes or the call: sizes, layer counts, biases, the
options discovery fixed, the layout, which inputs are given, the call's flags; not the seed, the sequence
lengths, the masks or their values, dropout, the activation or eps) pairs the same tensors. So a map is
inferred once per shape and used as is on every case of that shape: the engine's comparison judges the
outputs. A case of the same structure at other sizes (``structure_key``: every integer option aside) starts
from the map found there, its row ranges ``rescaled`` to the new sizes; it is used only when it reproduces the
built-in on the case (``disagreement``), else the map is inferred afresh. ``disagreement`` measures how far a map
is from the built-in on a case (the number of heads is measured with it, reference/inference/target.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Mapping
from typing import Any, cast

import torch
from torch import Tensor, nn

from reference.inference.auto import Inference
from reference.inference.copying import copy_model
from reference.inference.maps import Link, Source, WeightMap
from reference.inference.weightmap import difference
from reference.levels.registry import Level
from reference.verdict.engine import fastpath

# options that change no parameter and no call: a map found with one value holds with any other
NOT_STRUCTURAL = ("dropout", "activation", "layer_norm_eps", "eps")


def _kind(value: Any) -> Hashable:
    if isinstance(value, Tensor):
        return ("tensor", value.dtype, value.dim())
    return value if isinstance(value, Hashable) else repr(value)


def shape_key(case: Any, inputs: Mapping[str, Tensor | None], kwargs: Mapping[str, Any]) -> Hashable:
    """What decides the map and the call of ``case``: its options, which inputs it gives, and its flags (not its
    masks: their forms are measured once, reference/inference/mask_probe.py; how they act, the engine judges)."""
    options = tuple(sorted(((k, _kind(v)) for k, v in case.options().items() if k not in NOT_STRUCTURAL),
                           key=lambda kv: kv[0]))
    given = tuple((k, None if v is None else v.dim()) for k, v in inputs.items())
    flags = tuple((k, _kind(v)) for k, v in sorted(kwargs.items()) if not isinstance(v, Tensor) and "mask" not in k)
    return options, given, flags


def disagreement(inference: Inference, entry: Level, case: Any, model: nn.Module,
                 builtin: nn.Module | None = None) -> float:
    """How far ``inference`` is from reproducing the built-in on ``case``: the built-in's weights for the case
    loaded through the map into a float64 copy of ``model``, both called on the case's inputs and masks; the
    largest relative output difference (inf when it cannot be called so), over the layouts the values decide.
    ``builtin``: the case's seeded built-in, when the caller has built it already."""
    builtin = entry.seeded_builtin(case) if builtin is None else builtin
    inputs, kwargs = entry.inputs(case, torch.float64)
    sample = copy_model(model).to("cpu", torch.float64).eval()
    conv, worst = inference.convention, float("inf")
    try:
        inference.weight_map.load(sample, builtin)
        with torch.no_grad(), fastpath(False):
            expected = entry.call(builtin, **inputs, **kwargs)
            for layout in conv.alternatives or (conv.batch_first,):  # several only where the values decide
                got = dataclasses.replace(conv, batch_first=layout)(sample, inputs, kwargs,
                                                                    batch_first=case.batch_first)
                worst = min(worst, difference(expected, got))
    except Exception:  # it cannot even be called so: inferred afresh, which says why
        return float("inf")
    return worst


def structure_key(key: Hashable) -> Hashable:
    """``shape_key``'s key with its integer options (sizes, layer counts) aside: what a map may be rescaled across
    (a different layer count leaves tensors unpaired or missing, so the rescaled map is refused, not wrong)."""
    options, given, flags = cast(tuple[Any, Any, Any], key)
    sized = tuple((k, "int" if isinstance(v, int) and not isinstance(v, bool) else v) for k, v in options)
    return sized, given, flags


def _skeleton(name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A dotted name split into its path with every list index replaced by ``#``, and those indices in order."""
    parts = name.split(".")
    return tuple("#" if p.isdigit() else p for p in parts), tuple(p for p in parts if p.isdigit())


def _fill(skeleton: tuple[str, ...], indices: tuple[str, ...]) -> str:
    it = iter(indices)
    return ".".join(next(it) if p == "#" else p for p in skeleton)


def restacked(template: WeightMap, builtin: nn.Module, model: nn.Module) -> WeightMap | None:
    """``template`` carried to ``model``'s and ``builtin``'s number of layers: each link of layer ``i``
    (``blocks.i.w <- layers.i.linear1.weight``: the built-in's indices lead the target's; a target may index
    further, as a list of heads does) written for every layer the model has. None when a link's indices
    differ between the two sides (a list with holes, a layer shared), when some target parameter follows no
    pattern of the template, or a built-in tensor is left without a source. Its row ranges and
    ``builtin_shapes`` stay at the template's sizes (``rescaled`` scales them). Not verified: see
    ``disagreement``."""
    links: dict[tuple[tuple[str, ...], int, tuple[str, ...]], tuple[Link, tuple[tuple[str, ...], ...]]] = {}
    for link in template.links:
        skeleton, indices = _skeleton(link.target)
        named = [_skeleton(s.name) for s in link.sources]
        lead = {len(i) for _, i in named}
        if len(lead) != 1 or any(i != indices[:len(i)] for _, i in named):
            return None
        k = lead.pop()
        links[(skeleton, k, indices[k:])] = (link, tuple(sk for sk, _ in named))
    ignored = {_skeleton(n)[0] for n in template.ignored}
    shapes = {n: tuple(p.shape) for n, p in builtin.named_parameters()}
    sized = {_skeleton(n)[0]: shape for n, shape in template.builtin_shapes.items()}  # the template's sizes
    out, skipped = [], []
    for name, _ in model.named_parameters():
        skeleton, indices = _skeleton(name)
        if skeleton in ignored:
            skipped.append(name)
            continue
        found = next(((links[key], key[1]) for k in range(len(indices) + 1)
                      if (key := (skeleton, k, indices[k:])) in links), None)
        if found is None:
            return None
        (link, source_skeletons), k = found
        sources = tuple(Source(_fill(sk, indices[:k]), s.rows)
                        for sk, s in zip(source_skeletons, link.sources, strict=True))
        if any(s.name not in shapes for s in sources):
            return None
        out.append(Link(name, sources, link.transpose, link.how))
    builtin_shapes = {n: sized[sk] for n in shapes if (sk := _skeleton(n)[0]) in sized}
    if set(builtin_shapes) != {s.name for link in out for s in link.sources}:
        return None  # a built-in layer the target has no counterpart for (or the other way round)
    return WeightMap(links=tuple(out), builtin_shapes=builtin_shapes, ignored=tuple(skipped), notes=template.notes,
                     ties=template.ties)


def rescaled(template: WeightMap, builtin: nn.Module, model: nn.Module) -> WeightMap | None:
    """``template`` with its row ranges scaled to ``builtin``'s sizes, when every one scales exactly and fills its
    target tensor, the rows it holds at zero scaled too; None otherwise. Another number of layers is
    ``restacked`` first (not a template that holds rows). Not verified: see ``disagreement``."""
    shapes = {n: tuple(p.shape) for n, p in builtin.named_parameters()}
    params = dict(model.named_parameters())
    if not template.held and set(params) != {link.target for link in template.links} | set(template.ignored):
        stretched = restacked(template, builtin, model)
        if stretched is None:
            return None
        template = stretched  # still at the template's sizes: scaled below
    if any(n not in shapes for n in template.builtin_shapes) \
            or set(params) != {link.target for link in template.links} | set(template.ignored):
        return None  # tensors the template does not cover (another layer count)
    held = tuple(_scaled(s, template.builtin_shapes, shapes) if s.rows is None or s.name in template.builtin_shapes
                 else None for s in template.held)  # rows of a tensor with no link: their old size is not known
    if any(s is None for s in held):
        return None
    links = []
    for link in template.links:
        sources = [_scaled(s, template.builtin_shapes, shapes) for s in link.sources]
        target = params.get(link.target)
        if target is None or any(s is None for s in sources):
            return None
        numel = sum(_numel(s, shapes) for s in sources if s is not None)
        if numel != target.numel():
            return None
        links.append(Link(link.target, tuple(s for s in sources if s is not None), link.transpose, link.how))
    return WeightMap(links=tuple(links), builtin_shapes={n: shapes[n] for n in template.builtin_shapes},
                     ignored=template.ignored, notes=template.notes, ties=template.ties,
                     held=tuple(s for s in held if s is not None))


def _scaled(source: Source, old: Mapping[str, tuple[int, ...]], new: Mapping[str, tuple[int, ...]]) -> Source | None:
    if source.rows is None or source.name not in old:
        return source if source.name in new else None
    n_old, n_new = (old[source.name] or (1,))[0], (new[source.name] or (1,))[0]
    a, b = source.rows
    if (a * n_new) % n_old or (b * n_new) % n_old:
        return None
    return Source(source.name, (a * n_new // n_old, b * n_new // n_old))


def _numel(source: Source, shapes: Mapping[str, tuple[int, ...]]) -> int:
    shape = shapes[source.name]
    rows = (shape or (1,))[0] if source.rows is None else source.rows[1] - source.rows[0]
    inner = 1
    for d in shape[1:]:
        inner *= d
    return rows * inner
