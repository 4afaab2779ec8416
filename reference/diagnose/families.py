"""Verdicts per family of configurations, and the nn.Transformer configuration a target matches best.

A family is one option of nn.Transformer (norm_first, activation, batch_first, bias, ...) or one kind of
mask, tried on two small cases: the first is also a probe case (probes.py), the second (other sizes and
seed) guards the verdict. Verdicts come from compare.whole_model, the suite's own comparison and
tolerance policy: equivalent, divergent, crashes or not supported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from reference.build import Config
from reference.cases import Case
from reference.catalogue import BY_KEY
from reference.catalogue._base import KPM_FIELDS, MASK_FIELDS
from reference.compare import whole_model
from reference.diagnose.probes import Scorer
from reference.diagnose.runs import Observation
from reference.targets import NotSupportedError, Target, TargetError

STACK = Config(num_encoder_layers=2, num_decoder_layers=2)  # two layers: sharing between layers shows
LAYER = Config()  # one layer each: enough for masks


def _masks(**kinds: str) -> dict[str, str]:
    """The same mask kind at every site it names: src/tgt/memory attention masks or padding masks."""
    out: dict[str, str] = {}
    for site, kind in kinds.items():
        if site == "attn":
            out.update(src_mask=kind, tgt_mask=kind, memory_mask=kind)
        elif site == "padding":
            out.update(src_key_padding_mask=kind, tgt_key_padding_mask=kind, memory_key_padding_mask=kind)
        else:
            out[site] = kind
    return out


# (family, group, configuration, case fields)
FAMILIES: tuple[tuple[str, str, Config, dict], ...] = (
    ("default (post-norm, relu, seq-first, bias)", "configuration", STACK, {}),
    ("norm_first=True", "configuration", Config(**{**STACK.kwargs(), "norm_first": True}), {}),
    ("activation=gelu", "configuration", Config(**{**LAYER.kwargs(), "activation": "gelu"}), {}),
    ("batch_first=True", "configuration", Config(**{**LAYER.kwargs(), "batch_first": True}), {}),
    ("bias=False", "configuration", Config(**{**LAYER.kwargs(), "bias": False}), {}),
    ("dropout=0.1 in eval", "configuration", Config(**{**LAYER.kwargs(), "dropout": 0.1}), {}),
    ("layer_norm_eps=0.01", "configuration", Config(**{**LAYER.kwargs(), "layer_norm_eps": 0.01}), {}),
    ("unbatched input", "configuration", LAYER, {"batch": None}),
    ("causal masks + is_causal hints", "masks", LAYER,
     {"src_mask": "causal_bool", "tgt_mask": "causal_float", "tgt_is_causal": True}),
    ("bool attention masks", "masks", LAYER, _masks(attn="random_bool")),
    ("-inf float attention masks", "masks", LAYER, _masks(attn="random_inf")),
    ("additive float attention masks", "masks", LAYER, _masks(attn="additive")),
    ("per-head (N*nhead, L, S) masks", "masks", LAYER,
     {"src_mask": "per_head_bool", "tgt_mask": "per_head_additive", "memory_mask": "per_head_bool"}),
    ("bool key padding masks", "masks", LAYER, _masks(padding="bool")),
    ("-inf float key padding masks", "masks", LAYER, _masks(padding="float_inf")),
    ("finite float key padding masks", "masks", LAYER, _masks(padding="float_finite")),
)
# nn.Transformer options a target may apply whatever it is asked: tried as "the closest configuration"
CONFIG_SWITCHES = tuple(key for key, d in BY_KEY.items() if d.option)


@dataclass
class Family:
    """One family's cases and verdict; ``closest`` names the nn.Transformer option the target follows."""

    name: str
    group: str
    cases: list[Case]
    verdict: str = "not run"  # equivalent | divergent | crashes | not supported
    max_abs: float = 0.0
    detail: str = ""
    closest: str = ""
    closest_err: float = math.nan
    closest_matches: bool = False

    @property
    def probe_case(self) -> Case:
        return self.cases[0]


def family_grid(names: tuple[str, ...] | None = None) -> list[Family]:
    """The families (all, or those named), each with its probe case and a second, differently sized case."""
    out = []
    for name, group, config, fields in FAMILIES:
        if names is not None and not any(name.startswith(n) for n in names):
            continue
        first = Case(config, seed=1, **fields)
        second = first.replace(seed=2, src_len=3, tgt_len=6, batch=None if first.batch is None else 3)
        out.append(Family(name, group, [first, second]))
    return out


def judge_family(target: Target, family: Family, device: torch.device | str = "cpu") -> Family:
    """Run compare.whole_model on the family's cases (gradients too on the first); set its verdict.

    crashes: the target raised, or its output has NaN/inf where nn.Transformer's is finite; divergent: any
    output or gradient beyond the tolerance (a parameter gradient the target lacks counts as divergent).
    """
    bad, supported = [], 0
    for i, case in enumerate(family.cases):
        try:
            verdicts = whole_model(target, case, device, torch.float64, grads=i == 0)
        except NotSupportedError as exc:
            declined = exc.__cause__
            family.detail = f"build raised NotImplementedError: {declined}" if declined else "supports() returned False"
            continue
        except TargetError as exc:
            family.verdict, family.max_abs, family.detail = "crashes", math.inf, str(exc)
            return family
        supported += 1
        output = verdicts[0]
        if output.note:
            family.verdict, family.max_abs = "crashes", math.inf
            family.detail = f"{output.note} ({case.describe()})"
            return family
        bad += [v for v in verdicts if not v.passed]
    if not supported:
        family.verdict = "not supported"
    elif bad:
        family.verdict = "divergent"
        family.max_abs = max((v.max_abs for v in bad if math.isfinite(v.max_abs)), default=math.inf)
        names = list(dict.fromkeys(v.what if v.what in ("output", "grad src", "grad tgt") else "parameter grads"
                                   for v in bad))
        missing = {v.what for v in bad if not math.isfinite(v.max_abs) and v.what.startswith("grad ")}
        if missing:
            names.append(f"{len(missing)} parameters get no gradient: shared or unused weights")
        family.detail = ", ".join(names)
    else:
        family.verdict, family.detail = "equivalent", ""
    return family


def closest_configuration(family: Family, obs: Observation, keys: list[str]) -> None:
    """Name the nn.Transformer options the target follows on this family (from the causes found), if any.

    "matches" when those options alone make nn.Transformer equal the target here; "closest" otherwise (the
    other causes account for the rest).
    """
    if obs.got is None or family.verdict != "divergent":
        return
    switches = [BY_KEY[k] for k in keys if k in CONFIG_SWITCHES and BY_KEY[k].shows_on(obs.case)]
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
