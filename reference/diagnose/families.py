"""Verdicts per family of configurations, relative to a base configuration the target supports.

A family is one option of the level's built-in (norm_first, activation, batch_first, bias, ...) or one kind
of mask, changed from the **base**: the built-in's default when the target runs it, else the closest
configuration it does run (pre-norm + GELU + batch-first, say), so a target that supports one configuration
still has every other option and mask kind examined from there. Each family has two small cases: the first
is also a probe case (probes.py), the second (other sizes and seed) guards the verdict. Verdicts come from
the engine, the suite's own comparison and tolerance policy: equivalent, divergent, crashes or not supported
(declined, or an option the target takes no argument for and so was not varied).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from reference.builtin.config import Config
from reference.cases.case import Case
from reference.cases.kinds import AttentionCase, LayerNormCase, StackCase
from reference.catalogue import BY_KEY
from reference.catalogue._base import KPM_FIELDS, MASK_FIELDS
from reference.diagnose.probes import Scorer, shows
from reference.diagnose.runs import Observation, observe, with_seed
from reference.diagnose.variations import Variation, variations
from reference.inference.prepare import prepare
from reference.levels.registry import LEVELS
from reference.targets.contract import NotSupportedError, Target, TargetError
from reference.verdict.engine import compare_modules
from reference.verdict.tolerance import Verdict

CONFIG_SWITCHES = tuple(key for key, d in BY_KEY.items() if d.option)
@dataclass(kw_only=True)
class Family:
    """One family's cases and verdict; ``closest`` names the built-in option the target follows."""

    name: str
    group: str
    cases: list[Any]
    verdict: str = "not run"  # equivalent | divergent | crashes | not supported
    max_abs: float = 0.0
    detail: str = ""
    closest: str = ""
    closest_err: float = math.nan
    closest_matches: bool = False
    adapted: list[Any] = field(default_factory=list, repr=False, metadata={"json": False})  # as checked
    variation: Variation | None = field(default=None, repr=False, metadata={"json": False})
    crash_obs: Observation | None = field(default=None, repr=False, metadata={"json": False})

    @property
    def probe_case(self) -> Any:
        return (self.adapted or self.cases)[0]


# -- the base, the grid, the verdicts ----------------------------------------------------------------------------

def default_case(level: str) -> Any:
    """The level's default case: two layers (sharing between layers shows), distinct sizes (layouts show)."""
    case = LEVELS[level].from_config(Config(num_encoder_layers=2, num_decoder_layers=2))
    return with_seed(case, 1)


def _base_candidates(level: str) -> list[tuple[str, Any]]:
    """The default first, then the nn options a target may fix (one, two, then all three changed), among
    those the level's case has."""
    default = default_case(level)
    options = {k: v for k, v in {"norm_first": True, "activation": "gelu", "batch_first": True}.items()
               if k in default.options()}
    out = [("default", default)]
    for n in range(1, len(options) + 1):
        for keys in itertools.combinations(options, n):
            changes = {k: options[k] for k in keys}
            out.append((", ".join(f"{k}={v}" for k, v in changes.items()), default.with_options(changes)))
    return out


def _difference(case: Any, default: Any) -> str:
    """How ``case``'s options differ from ``default``'s, as keyword arguments ("" when they do not)."""
    a, b = case.options(), default.options()
    keep = ("norm_first", "activation", "batch_first", "bias", "layer_norm_eps", "dropout", "eps",
            "elementwise_affine", "add_bias_kv", "add_zero_attn", "d_model", "nhead", "dim_feedforward",
            "embed_dim", "num_heads", "normalized_shape", "final_norm")
    return ", ".join(f"{k}={getattr(a[k], '__name__', a[k])!r}".replace("'", "") for k in keep
                     if k in a and k in b and a[k] != b[k])


def find_base(target: Target, level: str, device: torch.device | str) -> tuple[str, Any, list[str]]:
    """The base configuration: the first candidate the target runs without crashing (else the first it takes),
    as the target is checked on it (the options its code fixes set as found); named by how it differs from
    the built-in's default ("default" when it does not)."""
    tried, taken = [], None
    default = default_case(level)
    for name, case in _base_candidates(level):
        try:
            obs = observe(target, case, device, level)
        except NotSupportedError as exc:
            tried.append(f"{name}: declined ({str(exc).splitlines()[0][:80]})")
            continue
        if obs.error is None:
            return _difference(obs.case, default) or "default", obs.case, tried
        tried.append(f"{name}: crashed ({obs.error[:80]})")
        taken = taken or (_difference(obs.case, default) or "default", obs.case)
    return (*taken, tried) if taken else ("default", default, tried)


def family_grid(names: tuple[str, ...] | None = None, level: str = "transformer", base: Any = None,
                base_name: str = "default") -> list[Family]:
    """The families (all, or those named), each with its probe case and a second, differently sized case."""
    base = default_case(level) if base is None else base
    title = "default (post-norm, relu, seq-first, bias)" if base_name == "default" and level != "attention" \
        else "default" if base_name == "default" else f"base ({base_name})"
    grid = [Variation(title, "configuration", lambda c: c), *variations(level, base)]
    out = []
    for v in grid:
        if names is not None and not any(v.name.startswith(n) for n in names):
            continue
        first = v.change(base)
        out.append(Family(name=v.name, group=v.group, cases=[first, _second(first)], variation=v))
    return out


def _whole_model_second(c: Case | StackCase) -> dict[str, Any]:
    return {"seed": 2, "src_len": 3, "tgt_len": 6, "batch": None if c.batch is None else 3}


_SECOND: dict[type, Callable[[Any], dict[str, Any]]] = {  # the fields a family's second case changes, per kind
    Case: _whole_model_second, StackCase: _whole_model_second,
    AttentionCase: lambda c: {"seed": 2, "query_len": 5, "key_len": 5 if c.self_attention else 2,
                              "batch": None if c.batch is None else 3},
    LayerNormCase: lambda c: {"seed": 2, "lead_shape": (4,)},
}


def _second(case: Any) -> Any:
    """The family's second case: the same configuration with another seed, other lengths and batch size."""
    return case.replace(**_SECOND[type(case)](case))


def verdicts_for(target: Target, level: str, case: Any, device: torch.device | str,
                 grads: bool) -> tuple[Any, list[Verdict]]:
    """(the case as the target is checked on it, the engine's verdicts) at ``level``."""
    case, cand = prepare(target, level, case)
    entry = LEVELS[level]
    inputs, kwargs = entry.inputs(case, torch.float64)
    return case, compare_modules(entry.seeded_builtin(case), cand, entry.call, inputs, kwargs, dtype=torch.float64,
                                 device=device, grads=grads, seed=case.seed)


def judge_family(target: Target, family: Family, device: torch.device | str = "cpu",
                 level: str = "transformer") -> Family:
    """Judge the family's cases (gradients too on the first); set its verdict.

    crashes: the target raised, or its output has NaN/inf where the built-in's is finite; divergent: any
    output or gradient beyond the tolerance (a parameter gradient the target lacks counts as divergent).
    """
    bad, supported = [], 0
    variation = family.variation
    for i, case in enumerate(family.cases):
        try:
            adapted, verdicts = verdicts_for(target, level, case, device, grads=i == 0)
        except NotSupportedError as exc:
            declined = exc.__cause__
            family.detail = f"build raised NotImplementedError: {declined}" if declined else str(exc).splitlines()[0]
            continue
        except TargetError as exc:
            reason = _declined_by_check(target, level, case, device)
            if reason is not None:  # check declines it (the target's API cannot express it): so does diagnosis
                family.detail = reason
                continue
            family.verdict, family.max_abs, family.detail = "crashes", math.inf, str(exc)
            family.adapted = family.adapted or [case]
            return family
        if variation is not None and not variation.shows(adapted):
            family.verdict = "not supported"
            family.detail = "not varied: the target's code fixes it (no argument or input for it)"
            return family
        family.adapted.append(adapted)
        supported += 1
        output = verdicts[0]
        if output.note:
            family.verdict, family.max_abs = "crashes", math.inf
            family.detail = f"{output.note} ({adapted.describe()})"
            return family
        bad += [v for v in verdicts if not v.passed]
    if not supported:
        family.verdict = "not supported"
    elif bad:
        family.verdict = "divergent"
        family.max_abs = max((v.max_abs for v in bad if math.isfinite(v.max_abs)), default=math.inf)
        names = list(dict.fromkeys(v.what if not v.what.startswith("grad ") or v.what.count(".") == 0
                                   else "parameter grads" for v in bad))
        missing = {v.what for v in bad if not math.isfinite(v.max_abs) and v.what.startswith("grad ")}
        if missing:
            names.append(f"{len(missing)} parameters get no gradient: shared or unused weights")
        family.detail = ", ".join(names)
    else:
        family.verdict, family.detail = "equivalent", ""
    return family


def _declined_by_check(target: Target, level: str, case: Any, device: torch.device | str) -> str | None:
    """Why ``parity check`` calls ``case`` not supported, when it does (None when check runs it)."""
    try:
        verdicts_for(target, level, case, device, grads=False)
    except NotSupportedError as exc:
        return f"not supported, as check says: {str(exc).splitlines()[0]}"
    except Exception:
        pass
    return None


def closest_configuration(family: Family, obs: Observation, keys: list[str]) -> None:
    """Name the built-in options the target follows on this family (from the causes found), if any."""
    if obs.got is None or family.verdict != "divergent":
        return
    switches = [BY_KEY[k] for k in keys if k in CONFIG_SWITCHES and shows(BY_KEY[k], obs.case)]
    if not switches:
        return
    ratio = Scorer([obs]).ratio(0, switches)
    family.closest = " + ".join(d.option for d in switches)
    family.closest_err = ratio * obs.bound
    family.closest_matches = ratio <= 1.0


def families_like(case: Case) -> tuple[str, ...]:
    """The families whose probe case sets what ``case`` sets (its options and mask kinds): where it can show."""
    config = case.config
    wanted = {
        "norm_first": config.norm_first, "activation=gelu": config.activation == "gelu",
        "batch_first": config.batch_first and case.batch is not None, "bias=False": not config.bias,
        "dropout": config.dropout > 0, "unbatched": case.batch is None,
        "causal": bool(case.src_is_causal or case.tgt_is_causal),
        "bool attention": any(getattr(case, f) in ("random_bool", "causal_bool") for f in MASK_FIELDS),
        "-inf float attention": any(getattr(case, f) in ("random_inf", "causal_float") for f in MASK_FIELDS),
        "additive": any(getattr(case, f) == "additive" for f in MASK_FIELDS),
        "per-head": any(getattr(case, f).startswith("per_head") for f in MASK_FIELDS),
        "bool key padding": any(getattr(case, f) == "bool" for f in KPM_FIELDS),
        "-inf float key padding": any(getattr(case, f) == "float_inf" for f in KPM_FIELDS),
        "finite float key padding": any(getattr(case, f) == "float_finite" for f in KPM_FIELDS),
    }
    return ("default", *(name for name, on in wanted.items() if on))
