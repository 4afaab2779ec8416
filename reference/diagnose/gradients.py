"""Where a difference shows only in the gradients: every mapped submodule's output agrees, yet a family's
gradients differ (a norm dividing by std + eps is exact forward, but the square root's gradient at a zero
variance is infinite).

Each site one target module stands for is fed the built-in's recorded input, as in isolated mode, and run
backward with one seeded output gradient, in the target and in the built-in: the first (in the built-in's
order) whose input gradient differs is the place. At a LayerNorm place the norm formulas fits.py knows are run
backward the same way; one whose input gradient is the target's (NaN where it is NaN) is the cause, kept by the
one evidence rule (place.kept) and only where it leaves nothing above the tolerance.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from reference.diagnose.fits import NORM_FORMULAS, _err, _layer_norm
from reference.diagnose.hooks import _first_tensor, _layout
from reference.diagnose.localize import Localization, Replay, SubmoduleError
from reference.diagnose.place import Finding, kept
from reference.verdict.tolerance import judge

SEED = 0  # the output gradient is drawn from a seeded generator, never from the data
# what a formula's gradient shows that its output may not
GRADIENT_NOTE = {"layer_norm_eps_outside_sqrt": "; the square root's gradient at a zero variance is infinite"}


def _input_grad(fn: Any, x: Tensor, upstream: Any) -> Tensor | None:
    """d(<fn(x), upstream>)/dx, or None when fn's output is not a tensor of upstream's shape."""
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        out = _first_tensor(fn(x))
        if out is None or not out.requires_grad:
            return None
        grad_out = upstream(out)
        if grad_out is None:
            return None
        (g,) = torch.autograd.grad(out, x, grad_out, allow_unused=True)
    return torch.zeros_like(x) if g is None else g.detach()


def _with_first(call: tuple[tuple, dict], x: Tensor) -> tuple[tuple, dict]:
    args, kwargs = call
    i = next((i for i, a in enumerate(args) if isinstance(a, Tensor)), None)
    return (args if i is None else (*args[:i], x, *args[i + 1:])), kwargs


def _site_grads(built: nn.Module, call: tuple[tuple, dict], mine: nn.Module, own: tuple[tuple, dict], mine_x: Tensor,
                dy: Tensor) -> tuple[Tensor | None, Tensor | None]:
    """(the built-in's input gradient, the target module's) for one output gradient ``dy`` (the built-in's layout)."""
    x = _first_tensor(call[0])
    assert x is not None
    ref = _input_grad(lambda t: built(*_with_first(call, t)[0], **call[1]), x, lambda o: dy)

    def theirs(o: Tensor) -> Tensor | None:
        back = _layout(dy.shape, o.shape)
        return None if back is None else back[0](dy).to(o.dtype)

    return ref, _input_grad(lambda t: mine(*_with_first(own, t)[0], **own[1]), mine_x, theirs)


def gradient_table(replay: Replay, isolated: Localization) -> tuple[Localization, dict[str, Tensor]]:
    """Each single-module site's input gradient, target against built-in, in the isolated table's order; and the
    target's input gradients (in the built-in's layout), for the fits at the place."""
    table = Localization(mode="gradients", case=isolated.case)
    grads: dict[str, Tensor] = {}
    for row in isolated.rows:
        name, mine = row.name, replay.targets.get(row.name)
        built, call, own = replay.modules.get(name), replay.calls.get(name), replay.target_calls.get(name)
        x = None if call is None else _first_tensor(call[0])
        mine_x = None if own is None else _first_tensor(own[0])
        if mine is None or built is None or x is None or mine_x is None or not x.is_floating_point():
            continue
        layout, expected = _layout(x.shape, mine_x.shape), replay.expected.get(name)
        if layout is None or expected is None or own is None or call is None:
            continue
        dy = torch.randn(expected.shape, generator=torch.Generator().manual_seed(SEED), dtype=expected.dtype)
        ref, got = _site_grads(built, call, mine, own, layout[0](x).to(mine_x.dtype), dy)
        if ref is None or got is None:
            continue
        got = layout[1](got.to(torch.float64))
        grads[name] = got
        v = judge(f"{name} input gradient", got, ref)
        table.rows.append(SubmoduleError(name=name, passed=v.passed, max_abs=v.max_abs, bound=v.bound, worst={},
                                         candidate=v.candidate_value, oracle=v.oracle_value, note=v.note,
                                         target_module=row.target_module))
    return table, grads


def norm_fits(replay: Replay, row: SubmoduleError, got: Tensor) -> list[Finding]:
    """At a LayerNorm whose input gradient differs: the formula whose gradient is the target's, if one is."""
    module, call = replay.modules.get(row.name), replay.calls.get(row.name)
    x = None if call is None else _first_tensor(call[0])
    expected = replay.expected.get(row.name)
    if not isinstance(module, nn.LayerNorm) or x is None or expected is None:
        return []
    dy = torch.randn(expected.shape, generator=torch.Generator().manual_seed(SEED), dtype=expected.dtype)
    before = row.max_abs if math.isfinite(row.max_abs) else math.inf
    found = []
    for what, key, kw in NORM_FORMULAS:
        g = _input_grad(lambda t, kw=kw: _layer_norm(module, t, module.eps, **kw), x, lambda o: dy)
        after = math.inf if g is None else _err(got, g)
        if after <= row.bound and kept(before, after, row.bound):
            note = GRADIENT_NOTE.get(key or "", "")
            found.append(Finding(place=row.name, target_module=row.target_module, what=f"it {what}{note}", key=key,
                                 fix="", before=before, after=after, bound=row.bound, probe="fit",
                                 cause="layer-norm formula"))
    return found[:1]
