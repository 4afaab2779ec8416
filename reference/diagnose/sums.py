"""Fits of the code between mapped submodules, measured at one place (place.py runs them).

- **Residual sums.** The tensor the built-in gives a place (a norm after a residual, or a layer's output) is
  read from its own recording as the sum of two tensors it computed inside the same layer: the residual
  stream x and a sublayer's output f(x) (no table of where residuals are: the pair that adds up to it). The
  target's tensor there is then tested against the sums real code gets wrong: f(x) alone (the residual
  missing), 2x + f(x) (the residual added twice), x + 2 f(x) (the sublayer's output added twice), x alone
  (the sublayer's output never added).
- **The activation between linear1 and linear2** (``fit_activation``), from what linear1 gave and what the
  target feeds linear2;
- **A feed-forward standing for both linears** (a site ``layers.0.linear1+linear2``: one target module holds
  both matrices): linear2(act(linear1(x))) with each activation ``ACTIVATIONS`` names.

Each is an exact hypothesis, so each is kept only where it removes the error at the place to the tolerance.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reference.diagnose.fits import Fit, _err, _keep, _scale

SUBLAYER = re.compile(r"(self_attn|multihead_attn|linear2)$")  # whose output a residual adds (a group's too)
LAYER = re.compile(r"layers\.\d+$")
SAME = 1e-12  # relative: a sum recomputed from its two recorded terms equals the recorded sum this closely
RESIDUAL = "residual connection"


@dataclass(frozen=True, kw_only=True)
class Measured:
    """A fitted hypothesis at one place: what it says, its catalogue key if any, and the error before/after."""

    what: str
    key: str | None
    cause: str
    fix: str
    before: float
    after: float


def _first(args: tuple) -> Tensor | None:
    return next((a for a in args if isinstance(a, Tensor)), None)


def _terms(layer: str, calls: dict[str, tuple[tuple, dict]], expected: dict[str, Tensor]) -> dict[str, Tensor]:
    """Every tensor the built-in recorded inside ``layer``: each submodule's first input, and its output."""
    inside = lambda n: not layer or n == layer or n.startswith(f"{layer}.")  # noqa: E731  ("": the module itself)
    out = {f"the input of {n}": t for n, (args, _) in calls.items() if inside(n) and (t := _first(args)) is not None}
    out |= {f"{n}'s output": t for n, t in expected.items() if n and n != layer and inside(n)}
    return out


def _distinct(terms: dict[str, Tensor], bound: float) -> dict[str, Tensor]:
    """One entry per distinct tensor, named by every name it has ("norm1's output = the input of multihead_attn")."""
    out: dict[str, Tensor] = {}
    for name, t in terms.items():
        same = next((n for n, u in out.items() if _err(u, t) <= bound), None)
        if same is None:
            out[name] = t
        else:
            out[f"{same} = {name}"] = out.pop(same)
    return out


def _norms(model: nn.Module | None, layer: str) -> dict[str, nn.Module]:
    """The built-in's LayerNorms inside ``layer`` (the layer itself when it is one), by their short names."""
    if model is None:
        return {}
    try:
        inside = model.get_submodule(layer) if layer else model
    except AttributeError:
        return {}
    return {(n or layer).rpartition(".")[2]: m for n, m in inside.named_modules() if isinstance(m, nn.LayerNorm)}


def residual(place: str, builtin: str, reference: Tensor, observed: Tensor,
             calls: dict[str, tuple[tuple, dict]], expected: dict[str, Tensor], bound: float,
             model: nn.Module | None = None) -> list[Measured]:
    """The residual sum at ``place``: which wrong sum the target gives there (``observed``), if one is exact.
    ``model`` (the built-in) lends its norms inside the layer: a residual carrying norm(x) instead of x."""
    layer = place if LAYER.search(place) else place.rpartition(".")[0]
    terms = _terms(layer, calls, expected)
    norms = _norms(model, layer)
    scale = max(1.0, float(reference.abs().nan_to_num().max()))
    before = _err(observed, reference)
    for f_name, f in terms.items():
        sub = f_name.removesuffix("'s output")
        if not f_name.endswith("'s output") or not SUBLAYER.search(sub) or f.shape != reference.shape:
            continue
        for x_name, x in terms.items():
            if x_name == f_name or x.shape != reference.shape or _err(reference, x + f) > SAME * scale:
                continue
            short = sub.rpartition(".")[2]
            short = "ff" if short.endswith("linear2") else short  # nn's _ff_block: linear2's output
            sums = [
                (f"the residual around {short} is missing: it passes on {short}(x) alone, where {builtin} "
                 f"has x + {short}(x)", f, f"add the sublayer's input back: x + {short}(x)"),
                (f"the residual around {short} is added twice: 2·x + {short}(x), where {builtin} has "
                 f"x + {short}(x)", 2 * x + f, "add the residual once: x + f(x)"),
                (f"{short}'s output is added twice: x + 2·{short}(x), where {builtin} has x + {short}(x)",
                 x + 2 * f, "add the sublayer's output once: x + f(x)"),
                (f"{short}'s output is never added: it passes on x alone, where {builtin} has x + {short}(x)", x,
                 f"add the sublayer's output: x + {short}(x)"),
            ]
            with torch.no_grad():
                sums += [(f"the residual around {short} carries the normalized input: {n}(x) + {short}(x), where "
                          f"{builtin} has x + {short}(x)", norm(x) + f,
                          f"add the un-normalized input: x + {short}(x)") for n, norm in norms.items()]
                others = _distinct({n: y for n, y in terms.items() if n != f_name and y.shape == x.shape
                                    and _err(y, x) > bound}, bound)
                sums += [(f"the residual around {short} skips part of the layer: it adds {y_name} where {builtin} "
                          f"adds x, {short}'s input (y + {short}(x) for x + {short}(x))", y + f,
                          f"add the sublayer's own input: x + {short}(x)") for y_name, y in others.items()]
            kept: list[tuple[str, Tensor, str]] = []
            for what, value, fix in sums:  # one wording per sum: y + f(x) with y = norm1(x) is said once
                if not any(_err(value, v) <= bound for _, v, _ in kept):
                    kept.append((what, value, fix))
            found = [Measured(what=what, key=None, cause=RESIDUAL, fix=fix, before=before,
                              after=_err(observed, value)) for what, value, fix in kept]
            return [m for m in found if before > bound >= m.after]
    return []


def placement(place: str, builtin: nn.Module, reference: Tensor, observed: Tensor,
              calls: dict[str, tuple[tuple, dict]], expected: dict[str, Tensor], bound: float,
              fed: dict[str, Tensor]) -> list[Measured]:
    """The norm placement a norm's input shows. A pre-norm built-in's norm fed x + f(x): the target normalizes
    after the residual (post-norm); ``f`` is the built-in's own sublayer that the norm feeds, called as it was with
    the norm's output replaced by x. A post-norm built-in's norm (fed x + f(x)) fed x, while the target feeds the
    sublayer norm(x) (``fed``: what the target gave each site): it normalizes before the sublayer (pre-norm)."""
    normed, norm = expected.get(place), _module(builtin, place)
    if normed is None or not isinstance(norm, nn.LayerNorm):
        return []
    return _post_norm(place, builtin, reference, observed, calls, expected, bound) or \
        _pre_norm(place, norm, reference, observed, calls, expected, bound, fed)


def _pre_norm(place: str, norm: nn.Module, reference: Tensor, observed: Tensor,
              calls: dict[str, tuple[tuple, dict]], expected: dict[str, Tensor], bound: float,
              fed: dict[str, Tensor]) -> list[Measured]:
    layer, before = place.rpartition(".")[0], _err(observed, reference)
    for sub, (args, _) in calls.items():
        x, f, given = _first(args), expected.get(sub), fed.get(sub)
        if sub.rpartition(".")[0] != layer or not SUBLAYER.search(sub) or x is None or f is None or given is None \
                or x.shape != reference.shape or f.shape != reference.shape or _err(reference, x + f) > bound:
            continue
        with torch.no_grad():  # the sublayer reads this norm's output (isolated mode: the built-in's) or norm(x)
            shown = max(_err(observed, x), min(_err(given, expected[place]), _err(given, norm(x))))
        if before > bound >= shown:
            short = sub.rpartition(".")[2]
            return [Measured(what=f"it normalizes before the sublayer: x + {short}(norm(x)) (pre-norm), where the "
                             f"built-in normalizes after the residual: norm(x + {short}(x))", key="pre_norm",
                             cause="pre/post-norm placement", fix="normalize after the residual: norm(x + f(x))",
                             before=before, after=shown)]
    return []


def _post_norm(place: str, builtin: nn.Module, reference: Tensor, observed: Tensor,
               calls: dict[str, tuple[tuple, dict]], expected: dict[str, Tensor], bound: float) -> list[Measured]:
    normed = expected[place]
    layer, before = place.rpartition(".")[0], _err(observed, reference)
    for sub, (args, kwargs) in calls.items():
        module = _module(builtin, sub)
        if module is None or sub.rpartition(".")[0] != layer or not SUBLAYER.search(sub) or \
                not any(isinstance(a, Tensor) and a.shape == normed.shape and bool((a == normed).all()) for a in args):
            continue
        swap = tuple(reference if isinstance(a, Tensor) and a.shape == normed.shape and bool((a == normed).all())
                     else a for a in args)
        with torch.no_grad():
            out = module(*swap, **kwargs)
        f = out[0] if isinstance(out, tuple) else out
        short = sub.rpartition(".")[2]
        # the sublayer run on x (code no module stands for), or its recorded output (a mapped module, whose output
        # isolated mode replaces by the built-in's)
        recorded = expected.get(sub)
        after = min(_err(observed, reference + f), _err(observed, reference + (f if recorded is None else recorded)))
        if before > bound >= after:
            return [Measured(what=f"it normalizes after the residual: norm(x + {short}(x)) (post-norm), where the "
                             f"built-in normalizes before the sublayer: x + {short}(norm(x))", key="post_norm",
                             cause="pre/post-norm placement", fix="normalize before the sublayer: x + f(norm(x))",
                             before=before, after=after)]
    return []


def _module(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def feed_forward(linear1: nn.Module, linear2: nn.Module, x: Tensor, expected: Tensor, got: Tensor,
                 bound: float) -> list[Measured]:
    """The activation a module standing for both linears applies between them, when one is exact."""
    before = _err(got, expected)
    with torch.no_grad():
        found = [Measured(what=f"between linear1 and linear2 it applies {what}", key=key, cause="activation", fix="",
                          before=before,
                          after=_err(got, linear2(act(linear1(x))))) for what, key, act in ACTIVATIONS]
    return sorted((m for m in found if before > bound >= m.after), key=lambda m: m.after)[:1]


ACTIVATIONS: tuple[tuple[str, str | None, Callable[[Tensor], Tensor]], ...] = (
    ("relu", "always_relu", F.relu), ("gelu (exact, erf): F.gelu(x)", "always_gelu", F.gelu),
    ("gelu, tanh approximation: F.gelu(x, approximate='tanh')", "gelu_tanh_approximation",
     lambda x: F.gelu(x, approximate="tanh")),
    ("gelu, sigmoid approximation: x * sigmoid(1.702 x)", None, lambda x: x * torch.sigmoid(1.702 * x)),
    ("silu / swish: x * sigmoid(x)", None, F.silu), ("identity (no activation)", None, lambda x: x),
    *((name, None, f) for name, f in (("elu", F.elu), ("tanh", torch.tanh), ("sigmoid", torch.sigmoid),
                                     ("softplus", F.softplus), ("mish", F.mish))),
    ("relu squared", None, lambda x: F.relu(x).square()),
)


def fit_activation(pre: Tensor, post: Tensor) -> list[Fit]:
    """Which elementwise function maps pre (linear1's output) to post (what the target feeds linear2):
    relu, gelu (erf), gelu (tanh), silu, identity, leaky relu ... best first, same rule.

    Without the built-in's own activation there is no expected output: ``before`` is max |post| (nothing
    explained), and since an elementwise function either is the one or is not, only fits that reproduce post
    to 1e-6 relative are kept (an output scaled by 1.01 matches none)."""
    pre, post = pre.detach().double(), post.detach().double()
    if pre.shape != post.shape:
        return []  # not elementwise
    before, tol = _err(post, torch.zeros_like(post)), 1e-6 * _scale(post)
    fits = [Fit(what, key=key, before=before, after=_err(post, f(pre))) for what, key, f in ACTIVATIONS]
    neg = pre < 0
    if bool(neg.any()):
        slope = float((post[neg] * pre[neg]).sum() / pre[neg].square().sum())
        if abs(slope) > 1e-6 and abs(slope - 1) > 1e-6:
            default = " (F.leaky_relu's default)" if abs(slope - 0.01) < 1e-9 else ""
            fits.append(Fit(f"leaky relu, negative slope {slope:.4g}{default}", key=None, before=before,
                            after=_err(post, F.leaky_relu(pre, slope))))
    return [f for f in _keep(fits) if f.after <= tol]
