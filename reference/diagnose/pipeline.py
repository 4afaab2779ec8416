"""``parity diagnose``: the steps of the package (see its ``__init__``) run in order, and the command line.

Exit status: 0 equivalent, 1 divergent / crashes / not supported, 2 bad arguments or target spec.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import math
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

import reference.diagnose.families as fam
import reference.diagnose.findings as found
from reference.diagnose.crashes import crash_causes
from reference.diagnose.measure import Refits, may_refit, measure_layout, refit_options
from reference.diagnose.plot import MISSING, PlotUnavailableError, png
from reference.diagnose.probes import explain
from reference.diagnose.report import Diagnosis, to_json
from reference.diagnose.reproducer import minimal_failing_case, write
from reference.diagnose.runs import one_thread
from reference.diagnose.search import family_of, search
from reference.diagnose.structure import diagnose_structure
from reference.diagnose.text import render
from reference.diagnose.unresolved import mark_unresolved
from reference.inference.prepare import is_adapter, is_drop_in
from reference.levels.registry import LEVELS
from reference.targets.contract import HandmadeAdapter, Target, TargetError, load_target

__all__ = ["Diagnosis", "diagnose", "main"]


def kind_of(target: Target, level: str) -> str:
    """How the target is run: handmade, an adapter, a drop-in class, or inferred (and from what)."""
    obj = target.obj
    if isinstance(obj, HandmadeAdapter) and type(obj).__module__ == HandmadeAdapter.__module__:
        return "handmade"
    if level == "transformer" and is_adapter(obj):
        return "adapter"
    if level == "transformer" and is_drop_in(target):
        return "drop-in class"
    what = "class" if inspect.isclass(obj) else "instance" if isinstance(obj, nn.Module) else "factory"
    return f"inferred from a {what}"


def diagnose(
    target: Target | str,
    device: torch.device | str = "cpu",
    out_dir: Path | str | None = ".",
    family_names: tuple[str, ...] | None = None,
    reproduce: bool = True,
    examples: int = 60,
    level: str = "transformer",
    refit: bool = True,
) -> Diagnosis:
    """Diagnose ``target`` (a Target or a MODULE:OBJECT spec) at ``level``; write the reproducer under ``out_dir``.

    An inferred target whose code fixes options it takes no argument for, and that matched no configuration
    when they were found (a bug hides which), is diagnosed again as long as the causes found correct those
    options (``refit``, at most MAX_REFITS times): the configuration by measurement at the places, not by the
    closest whole output.
    """
    target = load_target(target) if isinstance(target, str) else target
    with one_thread():
        return _run(target, device, out_dir, family_names, reproduce, examples, level, refit)


def _run(target: Target, device: torch.device | str, out_dir: Path | str | None,
         family_names: tuple[str, ...] | None, reproduce: bool, examples: int, level: str, refit: bool) -> Diagnosis:
    """Passes until the options an inferred target's code fixes are settled (``refit``: each pass whose causes
    correct none is the diagnosis), then the reproducer. What a pass measured once (the layout) is kept."""
    notes: list[str] = []
    history = Refits()
    d: Diagnosis | None = None
    if refit and may_refit(target, level, kind_of(target, level)):
        for _ in range(MAX_REFITS):
            probe = _diagnose(target, device, family_names, level, search=True)
            note = refit_options(target, level, probe, history)
            notes += [n for n in probe.notes if n.startswith("layout measured")] + ([note] if note else [])
            if note is None:
                d = probe  # nothing to correct: this pass is the diagnosis
                break
    d = d or _diagnose(target, device, family_names, level, search=True)
    d.notes = list(dict.fromkeys([*notes, *d.notes]))
    if reproduce:
        _reproduce(d, target, device, out_dir, examples)
    elif d.verdict not in ("equivalent", "not supported", "unresolved"):
        d.reproducer_note = "skipped (--no-reproducer)"
    return d


MAX_REFITS = 3  # passes that may each correct the options an inferred target's code fixes


def _diagnose(target: Target, device: torch.device | str, family_names: tuple[str, ...] | None, level: str,
              search: bool) -> Diagnosis:
    """One pass: the families, then (if any fails) the probes, localization and causes."""
    entry = LEVELS[level]
    d = Diagnosis(target=target.spec, kind=kind_of(target, level), torch=torch.__version__, device=str(device),
                  level=level,
                  builtin=entry.builtin)
    with one_thread(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(mismatched|nested tensor|enable_nested_tensor).*")
        d.base, base, d.base_tried = fam.find_base(target, level, device)
        layout = measure_layout(target, level, base, device) if d.kind.startswith("inferred") else None
        d.notes += [layout] if layout else []
        grid = fam.family_grid(family_names, level, base, d.base)
        d.families = [fam.judge_family(target, f, device, level) for f in grid]
        if search and {f.verdict for f in d.families} <= {"equivalent", "not supported"}:
            _search(d, target, device, level)
        if diagnose_structure(d, target, base):  # it cannot be paired: a structure measured whole instead
            return d
        if mark_unresolved(d, target, level):  # never run against the built-in: not a crash of the target
            return d
        verdicts = {f.verdict for f in d.families}
        d.verdict = ("divergent" if "divergent" in verdicts else "crashes" if "crashes" in verdicts
                     else "not supported" if verdicts == {"not supported"} else "equivalent")
        if d.verdict in ("equivalent", "not supported"):
            d.not_localized = ("nothing to localize: every family is equivalent" if d.verdict == "equivalent"
                               else "nothing to localize: the target declined every configuration tried")
            d.reproducer_note = "none: nothing failed"
            return d
        observed = found.observe_families(target, d.families, device, level)  # (label, observation, first case)
        by_name = {label: o for label, o, first in observed if first}
        random = found.random_in_eval(d, observed, target, device)
        # random outputs: no variant can explain them, so they stay out of the search
        observed = [(label, o, first) for label, o, first in observed if label not in random]
        ordered = sorted(observed, key=lambda item: not item[2])  # first cases (searched) before second ones
        d.explanation = explain([o for _, o, _ in ordered], [label for label, _, _ in ordered],
                                probe_count=sum(first for _, _, first in observed))
        for f in d.families:
            if f.name in by_name:
                fam.closest_configuration(f, by_name[f.name], d.explanation.keys)
        d.extra_causes += crash_causes(d, by_name, target, device, level)
        d.best_match = found.best_match(d.families)
        found.localize_some(d, by_name, random)
        if d.kind.startswith("inferred"):
            found.weight_layouts(d)
        found.after_the_last(d)
        if not d.localization and not d.not_localized:
            d.not_localized = "no family could be localized, and no reason was recorded"  # never an empty section
    return d


def _search(d: Diagnosis, target: Target, device: torch.device | str, level: str) -> None:
    """Every family equivalent: search as check does; a failing case joins the families (never EQUIVALENT where
    check fails)."""
    hit = search(target, level, device)
    if hit is None:
        d.notes.append(f"check's own search found no failing case either (its pinned cases and the {level} "
                       "strategy, ci budget, in float64)")
        return
    family = family_of(hit)
    fam.judge_family(target, family, device, level)
    if family.verdict in ("not run", "equivalent", "not supported"):  # check's sentence stands: never EQUIVALENT
        family.verdict, family.max_abs = "divergent", math.nan
        family.detail = f"check fails it: {hit.message[:200]}"
    d.families.append(family)
    d.notes.append(f"every family drawn for diagnosis is equivalent; check's own search found the failing case "
                   f"{family.name.split(': ', 1)[1]}, diagnosed below")


def _reproduce(d: Diagnosis, target: Target, device: torch.device | str, out_dir: Path | str | None,
               examples: int) -> None:
    """hypothesis' shrunk failing case, and for whole-model adapters and drop-ins a standalone script."""
    if d.verdict in ("equivalent", "not supported", "unresolved"):
        d.reproducer_note = d.reproducer_note or "none: nothing failed"
        return
    if d.level != "transformer" or d.kind not in ("adapter", "drop-in class", "handmade"):
        d.reproducer_note = (f"no script for this kind of target; `parity check {target.spec} --as {d.level}` "
                             "prints hypothesis' shrunk falsifying case")
        return
    with one_thread():
        case = minimal_failing_case(target, device, examples)
    if case is None:
        d.reproducer_note = f"hypothesis found no failing case in {examples} tries"
    elif out_dir is None:
        d.reproducer_note = f"case: {case.describe()} (no --out folder, so no script was written)"
    else:
        d.reproducer = write(target, case, Path(out_dir))


def main(argv: list[str] | None = None) -> int:
    """``parity diagnose MODULE:OBJECT [--as LEVEL] [--json] [--out DIR] [--device cpu]``."""
    parser = argparse.ArgumentParser(prog="parity diagnose", description=__doc__.split("\n\n")[0])
    parser.add_argument("target", metavar="MODULE:OBJECT", help="the implementation to diagnose")
    parser.add_argument("--as", dest="level", choices=LEVELS, default="transformer", metavar="LEVEL",
                        help=f"the piece it is: one of {', '.join(LEVELS)} (default transformer)")
    parser.add_argument("--keep-masks", action="store_true",
                        help="its bool masks mean True = attend (torch's mean True = blocked)")
    parser.add_argument("--weight-map", metavar="FILE", help="an override file for the inferred weight map")
    parser.add_argument("--json", action="store_true", help="print the diagnosis as JSON instead of text")
    parser.add_argument("--out", default=".", metavar="DIR", help="where to write repro_<target>/ (default .)")
    parser.add_argument("--device", default="cpu", help="the device the target runs on (default cpu)")
    parser.add_argument("--family", action="append", metavar="NAME",
                        help="only the families whose names start with NAME (repeatable)")
    parser.add_argument("--no-reproducer", action="store_true", help="skip the hypothesis search and the script")
    parser.add_argument("--examples", type=int, default=60, help="hypothesis examples for the search (default 60)")
    parser.add_argument("--plot", metavar="FILE.png", help="also draw where it differs into FILE.png "
                        "(the error per submodule against the tolerance; needs the plot extra: matplotlib)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        target = dataclasses.replace(load_target(args.target), keep_masks=args.keep_masks,
                                     weight_map=args.weight_map)
    except ValueError as exc:
        print(f"parity diagnose: {exc}", file=sys.stderr)
        return 2
    try:
        d = diagnose(target, args.device, args.out, tuple(args.family) if args.family else None,
                     not args.no_reproducer, args.examples, level=args.level)
    except TargetError as exc:  # it cannot be built or paired at all: say so, as check does
        print(f"parity diagnose: {exc}", file=sys.stderr)
        return 1
    print(to_json(d) if args.json else render(d))
    if args.plot:
        try:
            Path(args.plot).write_bytes(png(d))
        except PlotUnavailableError:
            print(f"parity diagnose: --plot {args.plot} not written: {MISSING}", file=sys.stderr)
    return 0 if d.verdict == "equivalent" else 1


if __name__ == "__main__":
    sys.exit(main())
