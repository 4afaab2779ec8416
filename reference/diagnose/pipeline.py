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
from reference.catalogue import BY_KEY
from reference.diagnose.crashes import crash_causes
from reference.diagnose.localize import localize
from reference.diagnose.measure import measure_layout, refit_options
from reference.diagnose.place import Finding, probe_places
from reference.diagnose.plot import MISSING, PlotUnavailableError, maps_of, png
from reference.diagnose.probes import Cause, dropout_in_eval, explain
from reference.diagnose.report import Diagnosis, to_json
from reference.diagnose.reproducer import minimal_failing_case, write
from reference.diagnose.runs import Observation, as_case, observe, one_thread
from reference.diagnose.text import render
from reference.inference.prepare import is_adapter, is_drop_in
from reference.levels.registry import LEVELS
from reference.targets.contract import HandmadeAdapter, NotSupportedError, Target, TargetError, load_target

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
    when they were found (a bug hides which), is diagnosed once more with the options the causes found say
    it follows (``refit``): the configuration by measurement at the places, not by the closest whole output.
    """
    target = load_target(target) if isinstance(target, str) else target
    return _diagnose(target, device, out_dir, family_names, reproduce, examples, level, refit)


def _diagnose(target: Target, device: torch.device | str, out_dir: Path | str | None,
              family_names: tuple[str, ...] | None, reproduce: bool, examples: int, level: str,
              refit: bool) -> Diagnosis:
    if refit:
        first = _diagnose(target, device, out_dir, family_names, False, examples, level, refit=False)
        note = refit_options(target, level, first)
        if note is None:
            if reproduce:
                _reproduce(first, target, device, out_dir, examples)
            return first
        again = _diagnose(target, device, out_dir, family_names, reproduce, examples, level, refit=False)
        again.notes.append(note)
        return again
    entry = LEVELS[level]
    d = Diagnosis(target.spec, kind_of(target, level), torch.__version__, str(device), level=level,
                  builtin=entry.builtin)
    with one_thread(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(mismatched|nested tensor|enable_nested_tensor).*")
        d.base, base, d.base_tried = fam.find_base(target, level, device)
        layout = measure_layout(target, level, base, device) if d.kind.startswith("inferred") else None
        d.notes += [layout] if layout else []
        grid = fam.family_grid(family_names, level, base, d.base)
        d.families = [fam.judge_family(target, f, device, level) for f in grid]
        verdicts = {f.verdict for f in d.families}
        d.verdict = ("divergent" if "divergent" in verdicts else "crashes" if "crashes" in verdicts
                     else "not supported" if verdicts == {"not supported"} else "equivalent")
        if d.verdict in ("equivalent", "not supported"):
            d.not_localized = ("nothing to localize: every family is equivalent" if d.verdict == "equivalent"
                               else "nothing to localize: the target declined every configuration tried")
            d.reproducer_note = "none: nothing failed"
            return d
        observed = _observe(target, d.families, device, level)  # (label, observation, is the family's first case)
        by_name = {label: o for label, o, first in observed if first}
        dropout = next((o for name, o in by_name.items() if name.startswith("dropout")), None)
        extra = None if dropout is None else dropout_in_eval(target, dropout, device)
        d.extra_causes = [extra] if extra else []
        if extra:  # random outputs: no variant can explain them, so they stay out of the search
            observed = [(label, o, first) for label, o, first in observed if as_case(o.case).config.dropout == 0]
        ordered = sorted(observed, key=lambda item: not item[2])  # first cases (searched) before second ones
        d.explanation = explain([o for _, o, _ in ordered], [label for label, _, _ in ordered],
                                probe_count=sum(first for _, _, first in observed))
        for f in d.families:
            if f.name in by_name:
                fam.closest_configuration(f, by_name[f.name], d.explanation.keys)
        d.extra_causes += crash_causes(d, by_name, target, device, level)
        d.best_match = _best_match(d.families)
        _localize(d, by_name, target, device, level)
        if reproduce:
            _reproduce(d, target, device, out_dir, examples)
        else:
            d.reproducer_note = "skipped (--no-reproducer)"
    return d


def _reproduce(d: Diagnosis, target: Target, device: torch.device | str, out_dir: Path | str | None,
               examples: int) -> None:
    """hypothesis' shrunk failing case, and for whole-model adapters and drop-ins a standalone script."""
    if d.verdict in ("equivalent", "not supported"):
        d.reproducer_note = "none: nothing failed"
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


def _observe(target: Target, families: list[fam.Family], device: torch.device | str,
             level: str) -> list[tuple[str, Observation, bool]]:
    """The probe observations of every family that ran: (label, observation, is it the family's first case)."""
    observed = []
    for f in families:
        if f.verdict == "not supported":
            continue
        for j, case in enumerate(f.cases):
            try:
                obs = observe(target, case, device, level)
            except NotSupportedError:
                continue
            if f.verdict == "crashes" and j == 0:
                f.crash_obs = obs
            if f.verdict != "crashes":
                observed.append((f.name if j == 0 else f"{f.name} (2nd)", obs, j == 0))
    return observed


def _localize(d: Diagnosis, by_name: dict[str, Observation], target: Target, device: torch.device | str,
              level: str) -> None:
    """Localize the first divergent family (else the first making NaN/inf) and measure causes at the place."""
    divergent = next((f for f in d.families if f.verdict == "divergent" and f.name in by_name), None)
    nan = next((f for f in d.families if f.verdict == "crashes" and f.crash_obs is not None
                and f.crash_obs.got is not None), None)
    if divergent is None and nan is None:
        crashed = [c for c in d.crashes if c.where]
        d.not_localized = ("no family diverges with finite outputs; the crashes are localized in 3" if crashed else
                           "no family diverges with finite outputs, and the crashes could not be localized")
        return
    family = divergent or nan
    assert family is not None
    obs = by_name[family.name] if divergent is not None else family.crash_obs
    assert obs is not None
    d.localized_family = family.name
    try:
        d.localization, d.not_localized, replay = localize(obs)
    except Exception as exc:  # hooks on the target's modules failed: report it, keep the rest
        d.not_localized = f"localization failed on the target: {type(exc).__name__}: {exc}"
        return
    d.maps = maps_of(d.localization, replay, obs.case)
    if d.localization:
        _merge(d, probe_places(obs, d.localization, replay), family.name)


def _merge(d: Diagnosis, findings: list[Finding], family: str) -> None:
    """Place findings: evidence for causes already found; new causes only where the whole outputs left a gap."""
    by_key = {c.key: c for c in d.causes}
    explained = d.explanation is not None and d.explanation.explained and bool(d.causes)
    for f in findings:
        cause = by_key.get(f.key or "")
        if cause is not None:
            if not cause.place_module and math.isnan(cause.place_before):
                cause.place, cause.place_module, cause.place_before, cause.place_after = (
                    f.place, f.target_module, f.before, f.after)
                cause.place_explains = f.explains
            continue
        if explained:
            continue
        dev = BY_KEY.get(f.key or "")
        what = f.what.removeprefix("it ")
        fix = f.fix or (dev.fix if dev else "")
        d.extra_causes.append(Cause(
            f.key or "measured", dev.cause if dev else "measured at the place", what, fix, (f.place,), [family],
            f.before, f.after, f.before, probe=f.probe, place=f.place, place_module=f.target_module,
            place_before=f.before, place_after=f.after, place_explains=f.explains))
        by_key[f.key or f.what] = d.extra_causes[-1]
    isolated = next((t for t in d.localization if t.mode == "isolated" and t.rows), None)
    if explained or isolated is None:
        return
    row = isolated.first
    if row is None:
        return
    if not any(f.place == row.name and f.explains for f in findings):
        before = [r.name for r in isolated.rows[:isolated.rows.index(row)] if r.name.rsplit(".", 1)[0]
                  == row.name.rsplit(".", 1)[0]]
        between = f" (the code between {before[-1]} and it: residuals, norm placement, activation)" if before else ""
        own = f"its own output differs by {row.max_abs:.3g} (tolerance {row.bound:.3g})" if not row.passed else \
            f"the input the target gives it differs by {row.fed_max_abs:.3g}{between}"
        d.unexplained = (f"{row.name or 'the module itself'}" + (f" (the target's {row.target_module})"
                         if row.target_module else "") + f": {own} on {family}; no catalogue deviation or fit "
                         "accounts for it")


def _best_match(families: list[fam.Family]) -> str:
    """One line on the built-in configuration the target follows when it matches none asked for."""
    asked = families[0] if families else None
    if asked is None or asked.verdict != "divergent" or not asked.closest:
        return ""
    if asked.closest_matches:
        return f"matches {asked.closest}, not the configuration asked for ({asked.name})"
    return (f"matches no configuration asked for; closest configuration: {asked.closest} "
            f"(the other causes below account for the rest)")


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
