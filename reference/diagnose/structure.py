"""Causes in a target's structure, measured when its weights cannot be paired with the built-in's at all.

**One projection shared across heads**: an attention whose q, k and v projections are each ONE
``head_dim x head_dim`` matrix applied to every head's slice of the input (a common tutorial bug), where
nn.MultiheadAttention projects the whole width (every head its own weights). No weight map pairs such a
target with nn.MultiheadAttention's, so the families cannot run; instead the hypothesis is measured:

1. the target is built (the harness's own construction) and called (its own calling convention inference);
2. its small matrices get the built-in's first head block of each of q, k and v (each assignment of its
   matrices to q, k and v is tried), its ``embed_dim x embed_dim`` matrix the output projection;
3. the error against nn.MultiheadAttention (``before``) and against nn.MultiheadAttention whose in_proj is
   that block repeated on the diagonal, with no in_proj bias (``after``): the cause is kept by the evidence
   rule (place.kept); whatever remains is measured by the attention fits (fits.py) on that restricted module,
   e.g. a score scale.
"""

from __future__ import annotations

import copy
import itertools
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

import reference.diagnose.fits as fits
from reference.catalogue import BY_KEY
from reference.diagnose.place import kept
from reference.diagnose.probes import Cause
from reference.diagnose.report import Diagnosis
from reference.diagnose.runs import bound_for
from reference.inference.calling import infer_calling
from reference.inference.construct import build
from reference.inference.copying import copy_model
from reference.levels.registry import LEVELS
from reference.targets.contract import Target

ROLES = ("q", "k", "v")


@dataclass(frozen=True, kw_only=True)
class Structural:
    """A cause found in the structure, with its numbers (max abs errors) and what the fits found after it."""

    what: str
    fix: str
    before: float
    after: float
    bound: float
    then: list[fits.Fit]  # the fits on the built-in restricted to the target's structure, best first


def shared_heads(target: Target, case: Any) -> Structural | None:
    """Whether ``target`` (an attention) projects q, k and v with one head_dim x head_dim matrix for all heads."""
    entry = LEVELS["attention"]
    E, H = case.embed_dim, case.num_heads
    hd = E // H
    try:
        model = build(target.obj, case.options(), "attention").model.to(torch.float64).eval()
    except Exception:  # it cannot even be built here: nothing to measure
        return None
    params = dict(model.named_parameters())
    small = [n for n, p in params.items() if tuple(p.shape) == (hd, hd)]
    wide = [n for n, p in params.items() if tuple(p.shape) == (E, E)]
    biases = [n for n, p in params.items() if tuple(p.shape) == (E,)]
    if H < 2 or len(small) != 3 or len(wide) != 1 or len(params) != 3 + 1 + len(biases) or len(biases) > 1:
        return None
    builtin = entry.seeded_builtin(case)
    assert isinstance(builtin, nn.MultiheadAttention)
    inputs, kwargs = entry.inputs(case, torch.float64)
    try:
        conv = infer_calling(copy_model(model), "attention", inputs, kwargs, batch_first=case.batch_first,
                             keep_mask=target.keep_masks)
    except Exception:
        return None
    with torch.no_grad():
        expected = entry.call(builtin, **inputs, **kwargs)["output"]
    best: tuple[float, nn.MultiheadAttention, Tensor, tuple[str, ...]] | None = None
    for order in itertools.permutations(small):
        restricted = _load(builtin, model, dict(zip(ROLES, order, strict=True)), wide[0], biases, E, hd)
        with torch.no_grad():
            out = conv(model, inputs, kwargs, batch_first=case.batch_first)["output"]
            mine = entry.call(restricted, **inputs, **kwargs)["output"]
        after = fits._err(out, mine)
        if best is None or after < best[0]:
            best = (after, restricted, out, order)
    assert best is not None
    after, restricted, out, order = best
    before, bound = fits._err(out, expected), bound_for(expected)
    query = inputs["query"]
    args = (query, inputs.get("key", query), inputs.get("value", query))
    with torch.no_grad():
        mine = entry.call(restricted, **inputs, **kwargs)["output"]
    then = fits.fit_component(restricted, args, kwargs, mine, out)
    names = ", ".join(f"{role}: {name}" for role, name in zip(ROLES, order, strict=True))
    return Structural(
        what=f"uses one projection shared across heads: q, k and v each go through one {hd}x{hd} matrix ({names}) "
        f"applied to every head's slice of the input, where {entry.builtin} projects the whole width "
        f"({E}x{E} each: every head has its own weights)",
        fix=f"project the whole width, then split into heads: nn.Linear({E}, {E}) for each of q, k and v",
        before=before, after=after,
        bound=bound, then=then)


def _load(builtin: nn.MultiheadAttention, model: nn.Module, roles: dict[str, str], out: str, biases: list[str], E: int,
          hd: int) -> nn.MultiheadAttention:
    """The built-in restricted to the target's structure, and the target loaded with the same weights."""
    restricted: nn.MultiheadAttention = copy.deepcopy(builtin)
    params = dict(model.named_parameters())
    H = E // hd
    with torch.no_grad():
        for i, role in enumerate(ROLES):
            block = builtin.in_proj_weight[i * E:i * E + hd, :hd].clone()
            restricted.in_proj_weight[i * E:(i + 1) * E] = torch.block_diag(*[block] * H)
            params[roles[role]].copy_(block)
        if restricted.in_proj_bias is not None:
            restricted.in_proj_bias.zero_()
        params[out].copy_(builtin.out_proj.weight)
        if biases:
            params[biases[0]].copy_(builtin.out_proj.bias)
        elif restricted.out_proj.bias is not None:
            restricted.out_proj.bias.zero_()
    return restricted


def diagnose_structure(d: Diagnosis, target: Target, case: Any) -> bool:
    """Every family failed to pair: measure the shared-heads structure; True when it is the cause (d is then
    filled: the verdict, the causes with their numbers, what remains unexplained)."""
    if d.level != "attention" or not d.families or any(
            f.verdict != "crashes" or "cannot be paired" not in f.detail for f in d.families):
        return False
    found = shared_heads(target, case)
    if found is None or not kept(found.before, found.after, found.bound):
        return False
    then = [f for f in found.then if kept(f.before, f.after, found.bound)][:1]
    rest = then[0].after if then else found.after
    base = d.families[0]
    for f in d.families:
        f.verdict, f.max_abs = "divergent", found.before if f is base else math.nan
        f.detail = ("its weights cannot be paired with the built-in's: measured with the built-in restricted to its "
                    "structure (see 3)" if f is base else "not paired: measured on the base family only")
    d.verdict = "divergent"
    d.not_localized = (f"its weights cannot be paired with {d.builtin}'s, so nothing inside it can be compared; "
                       "the module was measured as a whole (see 3)")
    module = type(target.obj).__name__ if isinstance(target.obj, nn.Module) else getattr(target.obj, "__name__", "")
    d.extra_causes.append(Cause(
        key="measured", cause="q/k/v projection", does=found.what, fix=found.fix, sites=("",), shows_on=[base.name],
        err_vs_builtin=found.before, err_vs_explanation=rest, err_without_it=found.before,
        probe="structure", place="", place_module=module, place_before=found.before, place_after=found.after,
        place_explains=rest <= found.bound))  # with the fit after it, it explains the module (measured so)
    for fit in then:
        dev = BY_KEY.get(fit.key or "")
        d.extra_causes.append(Cause(
            key=fit.key or "measured", cause=dev.cause if dev else "attention formula", does=fit.what,
            fix=dev.fix if dev else "", sites=("",),
            shows_on=[base.name], err_vs_builtin=found.before, err_vs_explanation=rest, err_without_it=fit.before,
            probe="fit", place="", place_module=module,
            place_before=fit.before, place_after=fit.after, place_explains=fit.after <= found.bound))
    if rest > found.bound:
        d.unexplained = (f"the module itself: with the shared projection accounted for it still differs by {rest:.3g}"
                         f" (tolerance {found.bound:.3g}); no fit accounts for it")
    return True
