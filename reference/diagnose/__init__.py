"""``parity diagnose MODULE:OBJECT``: whether, where and why a hand-written Transformer differs from nn.Transformer.

Steps, each in its own module:

- families.py    verdict per family of configurations (compare.whole_model, the suite's tolerance policy);
- localize.py    the first diverging submodule, propagated and isolated (needs ``submodules()``);
- probes.py      likely causes, each a probe run on the target (handmade with deviations from the bug
                 catalogue, reference/catalogue, planted; dropout in eval: the target run twice; a crash:
                 handmade with a deviation crashing the same way);
- reproducer.py  hypothesis' minimal failing example, as a standalone script + tensors;
- report.py      text and ``--json``.

Exit status: 0 equivalent, 1 divergent / crashes / not supported, 2 bad arguments or target spec.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch

from reference.diagnose import families as fam
from reference.diagnose.localize import localize
from reference.diagnose.probes import Cause, dropout_in_eval, explain, same_crash
from reference.diagnose.report import Diagnosis, render, to_json
from reference.diagnose.reproducer import minimal_failing_case, write
from reference.diagnose.runs import Observation, observe, one_thread
from reference.targets import NotSupportedError, Target, load_target

__all__ = ["Diagnosis", "diagnose", "main"]


def diagnose(
    target: Target | str,
    device: torch.device | str = "cpu",
    out_dir: Path | str | None = ".",
    family_names: tuple[str, ...] | None = None,
    reproduce: bool = True,
    examples: int = 60,
) -> Diagnosis:
    """Diagnose ``target`` (a Target or a MODULE:OBJECT spec); write the reproducer under ``out_dir``."""
    target = load_target(target) if isinstance(target, str) else target
    d = Diagnosis(target.spec, "drop-in class" if target.is_drop_in else "adapter", torch.__version__, str(device))
    with one_thread(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(mismatched|nested tensor|enable_nested_tensor).*")
        d.families = [fam.judge_family(target, f, device) for f in fam.family_grid(family_names)]
        verdicts = {f.verdict for f in d.families}
        d.verdict = ("divergent" if "divergent" in verdicts else "crashes" if "crashes" in verdicts
                     else "not supported" if verdicts == {"not supported"} else "equivalent")
        if d.verdict == "equivalent":
            d.not_localized = "nothing to localize: every family is equivalent"
            d.reproducer_note = "none: nothing failed"
            return d
        observed = _observe(target, d.families, device)  # (label, observation, is the family's first case)
        by_name = {label: o for label, o, first in observed if first}
        dropout = next((o for name, o in by_name.items() if name.startswith("dropout")), None)
        extra = None if dropout is None else dropout_in_eval(target, dropout, device)
        d.extra_causes = [extra] if extra else []
        if extra:  # random outputs: no variant can explain them, so they stay out of the search
            observed = [(label, o, first) for label, o, first in observed if o.case.config.dropout == 0]
        ordered = sorted(observed, key=lambda item: not item[2])  # first cases (searched) before second ones
        d.explanation = explain([o for _, o, _ in ordered], [label for label, _, _ in ordered],
                                probe_count=sum(first for _, _, first in observed))
        for f in d.families:
            if f.name in by_name:
                fam.closest_configuration(f, by_name[f.name], d.explanation.keys)
        d.extra_causes += _crash_causes(target, d, device)
        d.best_match = _best_match(d.families)
        divergent = next((f for f in d.families if f.verdict == "divergent"), None)
        if divergent is None:
            d.not_localized = "no family diverges without crashing, so there is no output to localize"
        else:
            d.localized_family = divergent.name
            try:
                d.localization, d.not_localized = localize(target, divergent.probe_case, device)
            except Exception as exc:  # hooks on the target's modules failed: report it, keep the rest
                d.not_localized = f"localization failed on the target: {type(exc).__name__}: {exc}"
        if reproduce:
            case = minimal_failing_case(target, device, examples)
            if case is None:
                d.reproducer_note = f"hypothesis found no failing case in {examples} tries"
            elif out_dir is None:
                d.reproducer_note = f"case: {case.describe()} (no --out folder, so no script was written)"
            else:
                d.reproducer = write(target, case, Path(out_dir))
        else:
            d.reproducer_note = "skipped (--no-reproducer)"
    return d


def _observe(target: Target, families: list[fam.Family],
             device: torch.device | str) -> list[tuple[str, Observation, bool]]:
    """The probe observations of every family that ran: (label, observation, is it the family's first case)."""
    observed = []
    for f in families:
        if f.verdict in ("not supported", "crashes"):
            continue
        for j, case in enumerate(f.cases):
            try:
                observed.append((f.name if j == 0 else f"{f.name} (2nd)", observe(target, case, device), j == 0))
            except NotSupportedError:
                continue
    return observed


def _crash_causes(target: Target, d: Diagnosis, device: torch.device | str) -> list[Cause]:
    """Causes of the crashes: per crashing family, a deviation that makes handmade crash the same way."""
    found: list[Cause] = []
    for f in d.families:
        if f.verdict != "crashes":
            continue
        try:
            cause = same_crash(observe(target, f.probe_case, device))
        except NotSupportedError:
            continue
        if cause is not None and cause.key not in {c.key for c in [*d.causes, *found]}:
            found.append(cause)
    return found


def _best_match(families: list[fam.Family]) -> str:
    """One line on the nn.Transformer configuration the target follows when it matches none asked for."""
    asked = families[0] if families else None
    if asked is None or asked.verdict != "divergent" or not asked.closest:
        return ""
    if asked.closest_matches:
        return f"matches {asked.closest}, not the configuration asked for ({asked.name})"
    return (f"matches no configuration asked for; closest nn.Transformer configuration: {asked.closest} "
            f"(the other causes below account for the rest)")


def main(argv: list[str] | None = None) -> int:
    """``parity diagnose MODULE:OBJECT [--json] [--out DIR] [--device cpu]``."""
    parser = argparse.ArgumentParser(prog="parity diagnose", description=__doc__.split("\n\n")[0])
    parser.add_argument("target", metavar="MODULE:OBJECT", help="the implementation to diagnose")
    parser.add_argument("--json", action="store_true", help="print the diagnosis as JSON instead of text")
    parser.add_argument("--out", default=".", metavar="DIR", help="where to write repro_<target>/ (default .)")
    parser.add_argument("--device", default="cpu", help="the device the target runs on (default cpu)")
    parser.add_argument("--family", action="append", metavar="NAME",
                        help="only the families whose names start with NAME (repeatable)")
    parser.add_argument("--no-reproducer", action="store_true", help="skip the hypothesis search and the script")
    parser.add_argument("--examples", type=int, default=60, help="hypothesis examples for the search (default 60)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        target = load_target(args.target)
    except ValueError as exc:
        print(f"parity diagnose: {exc}", file=sys.stderr)
        return 2
    d = diagnose(target, args.device, args.out, tuple(args.family) if args.family else None,
                 not args.no_reproducer, args.examples)
    print(to_json(d) if args.json else render(d))
    return 0 if d.verdict == "equivalent" else 1


if __name__ == "__main__":
    sys.exit(main())
