"""``parity zoo``: run the equivalence suite against every bug-zoo entry and print the kill matrix.

Each entry (equivalence_tests/zoo, one classic Transformer bug each) is a plug-in target. For each, the whole
suite runs in its own pytest process (``--impl SPEC --parity-report FILE``); component-level tests of
handmade skip themselves under another target, so what runs is the set of properties any plug-in faces.
The matrix shows, per entry and property, whether the property caught the bug (X, or C when the target
crashed), and then the shrunk example of the first property that caught it. Exit status 1 if an entry
survives, 0 if every entry is caught.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Tests that do not take the --impl target (the zoo's own check, timing, the diagnose and plug-in machinery)
NOT_PROPERTIES = (
    "test_zoo.py", "test_benchmarks.py", "test_diagnose.py", "test_plugins.py", "test_verdicts.py",
)
SYMBOL = {"failed": "X", "error": "X", "crashed": "C", "passed": ".", "skipped": "-"}


@dataclass
class EntryResult:
    """One entry's run: the outcome of each property and how the first killing property caught it."""

    name: str
    spec: str
    bug: str
    outcomes: dict[str, str] = field(default_factory=dict)
    killer: str | None = None
    example: str = ""
    seconds: float = 0.0
    problem: str = ""

    @property
    def caught(self) -> bool:
        return self.killer is not None


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="parity zoo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", default="", help="comma-separated entry names (default: every entry)")
    parser.add_argument("--profile", default="ci", help="hypothesis profile for the suite (default ci)")
    parser.add_argument("-m", "--marker", default="not edge", help='pytest -m expression (default "not edge")')
    parser.add_argument("-k", "--keyword", default="", help="pytest -k expression (default: every property)")
    parser.add_argument("--jobs", type=int, default=1, help="entries run in parallel (default 1)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    parser.add_argument("--reports", metavar="DIR", help="keep each entry's parity report as DIR/ENTRY.json")
    parser.add_argument("--list", action="store_true", help="list the entries and their bugs, run nothing")
    parser.add_argument("--render", metavar="PATH", help="print the matrix of an earlier --json PATH, run nothing")
    return parser.parse_args(argv)


def _property(test: dict) -> str:
    return test.get("property") or re.sub(r"\[.*\]$", "", test["nodeid"].split("::")[-1])


def _outcome(test: dict) -> str:
    if test["outcome"] in ("failed", "error") and "the target crashed" in (test.get("message") or ""):
        return "crashed"
    return test["outcome"]


def _example(test: dict) -> str:
    """The shrunk example: hypothesis' falsifying example if reported, else the failure's context line."""
    if test.get("falsifying_example"):
        return " ".join(test["falsifying_example"].split())
    message = (test.get("message") or "").strip()
    first = message.splitlines()[0] if message else ""
    context = first.split("tolerance: ", 1)[-1].split("context: ", 1)[-1]
    numbers = next((line.strip() for line in message.splitlines() if line.strip().startswith("[FAIL]")), "")
    return f"{context} {numbers}".strip()


RANK = {"crashed": 0, "failed": 1, "error": 1, "skipped": 2, "passed": 3}


def summarize(result: EntryResult, report: dict) -> None:
    """Fill ``result`` from a parity report: per property the worst outcome; the first numeric kill."""
    kills: list[tuple[int, str, str]] = []
    for test in report.get("tests", []):
        prop, outcome = _property(test), _outcome(test)
        current = result.outcomes.get(prop)
        if current is None or RANK[outcome] < RANK[current]:  # parametrized tests: the worst of their outcomes
            result.outcomes[prop] = outcome
        if outcome in ("failed", "error", "crashed"):
            kills.append((outcome == "crashed", prop, _example(test)))
    if kills:  # the first numeric kill in suite order; a crash only if nothing else caught it
        _, result.killer, result.example = min(kills, key=lambda k: k[0])


def run_entry(name: str, spec: str, args: argparse.Namespace) -> EntryResult:
    """Run the suite against one entry in a fresh pytest process and read its parity report."""
    from reference.targets import load_target

    result = EntryResult(name, spec, getattr(load_target(spec).obj, "bug", ""))
    with tempfile.TemporaryDirectory() as tmp:
        report_path = Path(tmp) / "report.json"
        command = [
            sys.executable, "-m", "pytest", "equivalence_tests", "--impl", spec, "--parity-report", str(report_path),
            "-p", "no:cacheprovider", f"--hypothesis-profile={args.profile}", "-q", "-m", args.marker,
            *[f"--ignore=equivalence_tests/{f}" for f in NOT_PROPERTIES],
            *(["-k", args.keyword] if args.keyword else []),
        ]
        start = time.perf_counter()
        proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"})
        result.seconds = time.perf_counter() - start
        if not report_path.exists():
            result.problem = f"pytest exited {proc.returncode} without a report: {(proc.stdout + proc.stderr)[-600:]}"
            return result
        if args.reports:
            Path(args.reports).mkdir(parents=True, exist_ok=True)
            (Path(args.reports) / f"{name}.json").write_text(report_path.read_text())
        summarize(result, json.loads(report_path.read_text()))
    return result


def kill_matrix(results: list[EntryResult]) -> str:
    """The entry x property table, a legend, and each entry's shrunk killing example."""
    seen = {p for r in results for p in r.outcomes}  # a property every entry skipped (handmade-only) says nothing
    props = sorted(p for p in seen if any(r.outcomes.get(p) not in (None, "skipped") for r in results))
    keys = {p: f"p{i + 1}" for i, p in enumerate(props)}
    width = max([len(r.name) for r in results] + [5])
    lines = ["properties:"] + [f"  {keys[p]:>4} {p}" for p in props]
    lines.append(f"{'entry':<{width}}  " + " ".join(f"{keys[p]:>3}" for p in props) + "  caught by")
    for r in results:
        cells = " ".join(f"{SYMBOL[r.outcomes[p]] if p in r.outcomes else '?':>3}" for p in props)
        verdict = keys[r.killer] if r.killer else ("ERROR" if r.problem else "SURVIVED")
        lines.append(f"{r.name:<{width}}  {cells}  {verdict}")
    caught = sum(r.caught for r in results)
    lines += ["", f"X caught (a property failed), C caught by a crash, . passed, - skipped. "
                  f"Caught {caught}/{len(results)}."]
    lines += ["", "shrunk examples (the first property that caught each entry):"]
    for r in results:
        example = re.sub(r"target=Target\(spec='[^']*', obj=<[^>]*>\),\s*", "", r.example)
        detail = f"[{keys[r.killer]}] {example}" if r.killer else (r.problem or "SURVIVED every property")
        lines.append(f"  {r.name}: {r.bug}\n      {detail[:600]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run ``parity zoo``; exit 1 if any entry survives."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from equivalence_tests.zoo import ENTRIES
    from reference.targets import load_target

    names = [n.strip() for n in args.entries.split(",") if n.strip()] or list(ENTRIES)
    unknown = [n for n in names if n not in ENTRIES]
    if unknown:
        print(f"unknown entries {unknown}; known: {', '.join(ENTRIES)}", file=sys.stderr)
        return 2
    if args.render:
        fields = {f for f in EntryResult.__dataclass_fields__}
        print(kill_matrix([EntryResult(**{k: v for k, v in r.items() if k in fields})
                           for r in json.loads(Path(args.render).read_text())]))
        return 0
    if args.list:
        for n in names:
            print(f"{n:32s} {load_target(ENTRIES[n]).obj.bug}")
        return 0
    print(f"parity zoo: {len(names)} entries, suite profile {args.profile}, -m {args.marker!r}"
          f"{f', -k {args.keyword!r}' if args.keyword else ''}, {args.jobs} job(s)", flush=True)
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = [pool.submit(run_entry, n, ENTRIES[n], args) for n in names]
        results = []
        for future in futures:
            results.append(future.result())
            r = results[-1]
            print(f"  {r.name}: {'caught' if r.caught else 'SURVIVED'} ({r.seconds:.0f} s)", flush=True)
    print()
    print(kill_matrix(results))
    print(f"\n{len(results)} entries in {time.perf_counter() - start:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps([{**asdict(r), "caught": r.caught} for r in results], indent=1))
    return 0 if all(r.caught for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
