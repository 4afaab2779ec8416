"""``parity check [MODULE:OBJECT]``: run the equivalence suite on a target and print the summary table.

First resolves the target (how to construct it, call it and map its weights, found once by discovery): when
the harness cannot, it says so in its first lines, what and why, and runs nothing (exit status 1). Otherwise
runs pytest on the installed ``equivalence_tests`` package with ``--impl`` and ``--parity-report`` (a temp
file), then prints one row per component x dtype x device: examples judged, the worst absolute error, the
worst ratio to PyTorch's own error, failures; what the harness inferred; then what the target did not
support and which tests failed, with their falsifying examples. Exit status: pytest's, or 1 when the target
supported nothing or could not be resolved.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import sys
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

from reference.levels.registry import LEVELS
from reference.targets.contract import DEFAULT_TARGET

DTYPE_ORDER = {"float64": 0, "float32": 1, "bfloat16": 2, "float16": 3}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="parity check", description=__doc__.splitlines()[0])
    parser.add_argument("target", nargs="?", default=DEFAULT_TARGET,
                        help=f"the implementation under test, MODULE:OBJECT (default {DEFAULT_TARGET})")
    parser.add_argument("--as", dest="level", choices=LEVELS, default=None, metavar="LEVEL",
                        help=f"the level the target implements, one of {', '.join(LEVELS)} (default: the whole "
                             "model; handmade provides every level)")
    parser.add_argument("--profile", choices=("ci", "dev", "thorough", "kill"), default="dev",
                        help="hypothesis profile: ci (deterministic), dev (default), thorough (10x ci), "
                             "kill (ci without shrinking)")
    parser.add_argument("--device", choices=("cpu", "cuda", "all"), default="all",
                        help="run on cpu, cuda or all available devices (default all)")
    parser.add_argument("--keep-masks", action="store_true",
                        help="the target's bool masks mean True = may attend (torch's: True = blocked); never guessed")
    parser.add_argument("--weight-map", metavar="FILE",
                        help="override the inferred weight map (JSON, TOML or a .py with WEIGHT_MAP; docs/plugins.md)")
    parser.add_argument("--show-map", action="store_true",
                        help="print what is inferred about the target (configuration, calling, weight map) and stop")
    parser.add_argument("-x", "--exitfirst", action="store_true", help="stop at the first failing test")
    parser.add_argument("--report", metavar="PATH", help="also keep the JSON parity report at PATH")
    parser.epilog = "Arguments after -- go to pytest, e.g. parity check -- -k transformer -n 2"
    return parser


def _number(x: float | str) -> float:
    return float(x)  # non-finite numbers travel as strings ("inf")


def unresolved_lines(report: dict) -> list[str]:
    """What could not be resolved and why, one paragraph per level: the answer, when nothing could run."""
    lines = []
    for item in report.get("unresolved", []):
        builtin = LEVELS[item["level"]].builtin
        lines.append(f"parity check: {report['impl']} could not be resolved at {item['level']} (against {builtin}), "
                     "so nothing was checked:")
        lines += [f"  {line}" for line in item["reason"].splitlines() if line.strip()]
    return lines


def summary_rows(report: dict) -> list[tuple[tuple[str, str, str], dict]]:
    """Per (component, dtype, device), in the table's order: examples, failed, max_abs, ratio, declined."""
    rows: dict[tuple[str, str, str], dict] = defaultdict(
        lambda: {"examples": 0, "failed": 0, "max_abs": 0.0, "ratio": 0.0, "declined": 0})
    for v in report["verdicts"]:
        row = rows[(v["component"], v["dtype"], v["device"])]
        row["examples"] += 1
        row["failed"] += not v["passed"]
        row["max_abs"] = max(row["max_abs"], _number(v["max_abs"]))
        row["ratio"] = max(row["ratio"], _number(v["ratio"]))
    for r in report["not_supported"]:
        rows[(r["component"], r["dtype"], r["device"])]["declined"] += 1
    return sorted(rows.items(), key=lambda kv: (kv[0][0], DTYPE_ORDER.get(kv[0][1], 9), kv[0][2]))


def _reasons(declined: list[dict], most: int = 5) -> list[str]:
    """Up to ``most`` distinct reasons, one for each dtype first (in the table's order), then the rest sorted."""
    reasons = sorted({(DTYPE_ORDER.get(r["dtype"], 9), r["reason"]) for r in declined})
    first = list(dict.fromkeys(next(reason for d, reason in reasons if d == dtype)
                               for dtype in sorted({d for d, _ in reasons})))
    return (first + [reason for _, reason in reasons if reason not in first])[:most]


def table(report: dict) -> list[str]:
    """The summary: per component x dtype x device, then not-supported configurations, tests, failures; or,
    when the target could not be resolved, why (``unresolved_lines``) and nothing else."""
    if report.get("unresolved"):
        return unresolved_lines(report)
    rows = summary_rows(report)
    width = max([len("component"), *(len(component) for (component, _, _), _ in rows)])
    lines = [f"parity check: {report['impl']} (hypothesis profile {report['profile']}, torch {report['torch']})",
             "",
             f"{'component':{width}s} {'dtype':9s} {'device':6s} {'examples':>8s} {'worst error':>12s} "
             f"{'worst ratio':>12s} {'failed':>6s} {'not supported':>13s}"]
    for (component, dtype, device), row in rows:
        ratio = f"{row['ratio']:.3g}" if math.isfinite(row["ratio"]) else "inf"
        lines.append(f"{component:{width}s} {dtype:9s} {device:6s} {row['examples']:8d} {row['max_abs']:12.3g} "
                     f"{ratio:>12s} {row['failed']:6d} {row['declined']:13d}")
    lines.append("(ratio: error / PyTorch's own error at that dtype and device; in float64 on the CPU, "
                 "where PyTorch's own error is 0, error / the float64 floor)")
    if report.get("notes"):
        lines.append("what the harness inferred about the target (the configuration it was checked in):")
        lines += [f"  {note}" for note in report["notes"]]
    tests = report["tests"]
    counts: dict[str, int] = defaultdict(int)
    for t in tests:
        counts[t["outcome"]] += 1
    lines.append("")
    lines.append("tests: " + ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items())))
    declined = report["not_supported"]
    if declined:
        lines.append(f"not supported (reported, not failures): {len(declined)} drawn configurations, e.g.")
        lines += [f"  {reason[:160]}" for reason in _reasons(declined)]
        if not report["verdicts"]:
            lines.append(f"FAILED: {report['impl']} supported none of the drawn configurations")
    for t in tests:
        if t["outcome"] in ("failed", "error"):
            lines.append(f"FAILED {t['nodeid']}")
            lines += [f"    {line}" for line in (t["message"] or "").splitlines()[:6]]
            if t["falsifying_example"]:
                lines += [f"    {line}" for line in t["falsifying_example"].splitlines()[:40]]
    return lines


def show_map(spec: str, level: str | None, keep_masks: bool, weight_map: str | None) -> int:
    """Print what is inferred about ``spec`` at ``level``; 1 with the reason when it cannot be inferred."""
    import dataclasses

    from reference.builtin.weights import WeightMapError
    from reference.inference.prepare import inferred, is_adapter
    from reference.targets.contract import TargetError, load_target

    target = dataclasses.replace(load_target(spec), keep_masks=keep_masks, weight_map=weight_map)
    if is_adapter(target.obj):
        print(f"{spec} is an adapter: its load_reference is its weight map; nothing is inferred")
        return 0
    try:
        print(inferred(target, level or "transformer").show_map())
    except (TargetError, WeightMapError) as exc:
        print(f"parity check --show-map: {exc}", file=sys.stderr)
        return 1
    return 0


@contextlib.contextmanager
def captured() -> Iterator[io.StringIO]:
    """Everything written to sys.stdout and sys.stderr inside (pytest's report, warnings) kept in the buffer
    yielded, not shown: the notebook API keeps it as the report's ``log``."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        yield buffer


def run_suite(spec: str, *, level: str | None = None, profile: str = "dev", device: str = "all",
              exitfirst: bool = False, keep_masks: bool = False, weight_map: str | None = None,
              extra: tuple[str, ...] = (),
              report_path: Path | None = None) -> tuple[int, dict]:
    """Run the installed suite on ``spec`` in this process; (pytest's exit status, the parity report).

    The target is resolved first (``reference.inference.prepare.unresolved``; discovery is kept for the run): when it
    cannot be, (1, a report saying where and why) and pytest does not run."""
    import pytest

    from reference.pytest_plugin import suite_dir

    failed = _unresolved(spec, level, keep_masks, weight_map)
    if failed is not None:
        if report_path is not None:
            report_path.write_text(json.dumps(failed, indent=1))
        return 1, failed
    suite = suite_dir()
    with tempfile.TemporaryDirectory() as tmp, _fresh_suite():
        path = report_path or Path(tmp) / "parity.json"
        args = [str(suite), "-p", "no:cacheprovider", "-q", f"--impl={spec}", *([f"--as={level}"] if level else []),
                f"--parity-report={path}", f"--hypothesis-profile={profile}", f"--parity-device={device}",
                *(["-x"] if exitfirst else []), *(["--keep-masks"] if keep_masks else []),
                *([f"--weight-map={weight_map}"] if weight_map else []), *extra]
        status = int(pytest.main(args))
        report = json.loads(path.read_text()) if path.exists() else {}
    return status, report


@contextlib.contextmanager
def _fresh_suite() -> Iterator[None]:
    """Run the suite as a fresh process would: its modules imported anew, and the caller's hypothesis profile
    back afterwards.

    The suite's tests take their hypothesis settings when their module is imported (``@settings`` inherits the
    profile loaded then); a second run in the same process (the notebook API, a test of the harness) would
    reuse the modules of the first and run under its profile: ``kill`` would still shrink, ``thorough`` would
    draw ci's number of examples. And pytest leaves the run's profile loaded for whatever runs next."""
    from hypothesis import settings

    from reference.pytest_plugin import SUITE

    def forget() -> None:
        for name in [m for m in sys.modules if m == SUITE or m.startswith(SUITE + ".")]:
            del sys.modules[name]

    previous = settings.get_current_profile_name()
    forget()
    try:
        yield
    finally:
        forget()
        settings.load_profile(previous)


def _unresolved(spec: str, level: str | None, keep_masks: bool, weight_map: str | None) -> dict | None:
    """The parity report of a run that cannot start: the levels at which ``spec`` cannot be resolved, and why;
    None when it resolves (or cannot even be loaded: pytest's usage error says so)."""
    import dataclasses

    import torch

    from reference.inference.prepare import unresolved
    from reference.targets.contract import load_target

    try:
        target = dataclasses.replace(load_target(spec), keep_masks=keep_masks, weight_map=weight_map)
    except ValueError:
        return None
    failed = unresolved(target, level)
    if not failed:
        return None
    return {"impl": spec, "profile": None, "torch": torch.__version__, "tests": [], "verdicts": [],
            "not_supported": [], "notes": [], "unresolved": [{"level": lv, "reason": why} for lv, why in failed]}


def main(argv: list[str] | None = None) -> int:
    """Run the suite on the target; print the table; nonzero on failures or when nothing was supported."""
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = tuple(argv[argv.index("--") + 1:]) if "--" in argv else ()
    args = _parser().parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    if args.show_map:
        return show_map(args.target, args.level, args.keep_masks, args.weight_map)
    status, report = run_suite(args.target, level=args.level, profile=args.profile, device=args.device,
                               exitfirst=args.exitfirst, keep_masks=args.keep_masks, weight_map=args.weight_map,
                               extra=extra,
                               report_path=Path(args.report) if args.report else None)
    if not report:
        print(f"parity check: the suite did not run (pytest exit status {status})", file=sys.stderr)
        return status or 1
    print("\n".join(table(report)))
    nothing = bool(report["not_supported"]) and not report["verdicts"]
    return status or int(nothing)


if __name__ == "__main__":
    sys.exit(main())
