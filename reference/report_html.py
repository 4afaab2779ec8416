"""The notebook API's reports as HTML (Jupyter's ``_repr_html_``): the verdict in one line, then the detail.

A check report: the verdict, the summary table (the rows ``parity check`` prints), what was inferred, and
for a failure the worst example in a few lines with the command that reruns it. A diagnosis: the verdict,
the families' table, what was measured, where it first differs, the causes with their fixes, the minimal
example, and the picture (reference/diagnose/plot.py) when matplotlib is there, else how to get it.
"""

from __future__ import annotations

import base64
import math
from html import escape
from typing import Any

from reference.check import summary_rows

GOOD, BAD, OTHER = "#1a7f37", "#cf222e", "#9a6700"
TABLE = "border-collapse:collapse;font-size:90%;margin:4px 0"
CELL = "padding:1px 8px;border-bottom:1px solid #ddd;text-align:{}"


def _verdict(text: str, colour: str, rest: str = "") -> str:
    return (f'<p style="font-size:110%;margin:4px 0"><b style="color:{colour}">{escape(text)}:</b>'
            f"{(' ' + escape(rest)) if rest else ''}</p>")


def _table(header: list[str], rows: list[list[str]], right: frozenset[int] = frozenset()) -> str:
    def cells(tag: str, values: list[str]) -> str:
        return "".join(f'<{tag} style="{CELL.format("right" if i in right else "left")}">{escape(v)}</{tag}>'
                       for i, v in enumerate(values))
    body = "".join(f"<tr>{cells('td', r)}</tr>" for r in rows)
    return f'<table style="{TABLE}"><tr>{cells("th", header)}</tr>{body}</table>'


def _list(title: str, items: list[str]) -> str:
    if not items:
        return ""
    return f"<p style='margin:6px 0 0'><b>{escape(title)}</b></p><ul style='margin:2px 0'>" + "".join(
        f"<li>{escape(i)}</li>" for i in items) + "</ul>"


def _code(text: str) -> str:
    return f"<pre style='margin:2px 0;padding:4px;background:#f6f8fa;white-space:pre-wrap'>{escape(text)}</pre>"


def _ratio(x: float) -> str:
    return f"{x:.3g}" if math.isfinite(x) else "inf"


def _worst_failure(report: dict) -> dict | None:
    """The failed test whose failing verdicts reach the largest ratio to PyTorch's own error (else the first)."""
    failed = [t for t in report.get("tests", []) if t["outcome"] in ("failed", "error")]
    worst: dict[str, float] = {}
    for v in report.get("verdicts", []):
        if not v["passed"]:
            worst[v["nodeid"]] = max(worst.get(v["nodeid"], 0.0), float(v["ratio"]))
    return max(failed, key=lambda t: worst.get(t["nodeid"], -1.0), default=None)


def check_html(report: dict, status: int, name: str, rerun: str, diagnose: str, error: str = "") -> str:
    """A check report: ``rerun`` is the call or command for one test, with ``{k}`` where its -k expression goes;
    ``diagnose`` the one that explains where and why it differs."""
    if not report:
        return _verdict("DID NOT RUN", BAD, f"the suite did not run (pytest exit status {status}); "
                                            "report.log has pytest's output") + (_code(error) if error else "")
    tests, verdicts = report["tests"], report["verdicts"]
    failed = [t for t in tests if t["outcome"] in ("failed", "error")]
    if failed:
        head = _verdict("FAILED", BAD, f"{name}: {len(failed)} of {len(tests)} tests failed")
    elif not verdicts:
        head = _verdict("NOT SUPPORTED", OTHER, f"{name} supported none of the drawn configurations")
    else:
        worst = max((float(v["ratio"]) for v in verdicts), default=0.0)
        head = _verdict("PASSED", GOOD, f"{name}: {len(tests)} tests, {len(verdicts)} examples judged; its "
                                        f"worst error is {_ratio(worst)} x PyTorch's own")
    rows = [[component, dtype, device, str(r["examples"]), f"{r['max_abs']:.3g}", _ratio(r["ratio"]),
             str(r["failed"]), str(r["declined"])] for (component, dtype, device), r in summary_rows(report)]
    parts = [head, _table(["component", "dtype", "device", "examples", "worst error", "worst ratio", "failed",
                           "not supported"], rows, right=frozenset({3, 4, 5, 6, 7})),
             "<p style='font-size:85%;color:#555;margin:0'>ratio: error / PyTorch's own error at that dtype and "
             "device (in float64 on the CPU, error / the float64 floor)</p>",
             _list("What the harness inferred about the target",
                   [note.replace(f"{report['impl']} at ", "") for note in report.get("notes", [])])]
    declined = sorted({r["reason"] for r in report["not_supported"]})
    if declined:
        parts.append(_list(f"Not supported (reported, not failures): {len(report['not_supported'])} drawn "
                           "configurations, e.g.", [d[:200] for d in declined[:3]]))
    worst_test = _worst_failure(report)
    if worst_test is not None:
        message = (worst_test["message"] or "").splitlines()
        summary, _, case = (message[0] if message else "").partition("; case: ")
        fails = [line.strip() for line in message[1:] if line.strip().startswith("[FAIL]")][:3]
        test = worst_test["nodeid"].rsplit("::", 1)[-1]
        parts += [f"<p style='margin:6px 0 0'><b>Worst failure</b>: <code>{escape(test)}</code></p>",
                  _code("\n".join([summary, *fails, *([f"case: {case}"] if case else [])])),
                  "<p style='margin:2px 0'>rerun it:</p>", _code(rerun.replace("{k}", test)),
                  "<p style='margin:2px 0'>see where and why it differs:</p>", _code(diagnose)]
    parts.append("<p style='font-size:85%;color:#555'>pytest's own output: <code>report.log</code>; "
                 "the plain-text table: <code>print(report)</code></p>")
    return "<div>" + "".join(parts) + "</div>"


def _worst_example(d: Any, rerun: str) -> str:
    """The case localized and its worst element in a few lines, and how to reproduce a shrunk failing case."""
    loc = next((loc for loc in sorted(d.localization, key=lambda loc: loc.mode != "isolated") if loc.first), None)
    lines = []
    if loc is not None and loc.first is not None:
        row = loc.first
        at = ", ".join(f"{k} {v}" for k, v in row.worst.items() if v is not None)
        lines += [f"case: {loc.case}", f"worst element of {row.name or 'the output'}" + (f" at ({at})" if at else "")
                  + f": {row.candidate:.6g} (the target) vs {row.oracle:.6g} (the built-in)"]
    if d.reproducer is not None:
        lines += [f"shrunk: {d.reproducer.case}", d.reproducer.failure, f"run: {d.reproducer.command}"]
    elif rerun:
        lines.append(f"hypothesis' shrunk failing case: {rerun}")
    else:
        lines.append(d.reproducer_note)
    return "<p style='margin:6px 0 0'><b>Worst example</b></p>" + _code("\n".join(lines))


def diagnosis_html(d: Any, picture: bytes | None, missing: str, name: str = "", rerun: str = "") -> str:
    """A diagnosis (reference.diagnose.report.Diagnosis) of ``name``; ``picture``: its PNG, else ``missing``
    says why not; ``rerun``: the check call or command that prints hypothesis' shrunk failing case."""
    from reference.diagnose.report import builtin_of, headline

    b = builtin_of(d)
    colour = {"equivalent": GOOD, "divergent": BAD, "crashes": BAD}.get(d.verdict, OTHER)
    word, _, rest = headline(d).replace("(see 3)", "(see the causes)").partition(": ")
    parts = [_verdict(word, colour, rest),
             f"<p style='font-size:85%;color:#555;margin:0'>{escape(name or d.target)} as {escape(d.level)} "
             f"({escape(d.kind)}; vs {escape(b)}; torch {escape(d.torch)}; float64 on {escape(d.device)})</p>",
             _table(["family", "verdict", "max error", "detail"],
                    [[f.name, f.verdict, "" if f.verdict != "divergent" else f"{f.max_abs:.3g}", f.detail[:120]]
                     for f in d.families], right=frozenset({2})),
             _list("What diagnosis measured and assumed", [f"base configuration: {d.base}", *d.notes,
                                                           *([d.best_match] if d.best_match else [])])]
    where = []
    for loc in d.localization:
        first = loc.first
        if first is not None:
            mine = f" (the target's {first.target_module})" if first.target_module not in ("", first.name) else ""
            err = (f"own error {first.max_abs:.3g}" if not first.passed
                   else f"fed input differs by {first.fed_max_abs:.3g}")
            where.append(f"{loc.mode}: {first.name or 'the module itself'}{mine}: {err} (tolerance {first.bound:.3g})")
        elif loc.note:
            where.append(f"{loc.mode}: {loc.note}")
    if d.not_localized:
        where.append(d.not_localized)
    parts.append(_list("Where it first differs" + (f" (on {d.localized_family})" if d.localized_family else ""),
                       where))
    causes = [f"{c.cause}: {c.does if c.probe == 'fit' else 'it ' + c.does}" + (f" — fix: {c.fix}" if c.fix else "")
              for c in d.causes]
    parts.append(_list("Likely causes (each backed by a probe run on the target)", causes + (
        [f"unexplained: {d.unexplained}"] if d.unexplained else [])))
    if d.verdict != "equivalent":
        parts.append(_worst_example(d, rerun))
    if picture is not None:
        parts.append(f'<img style="max-width:100%" src="data:image/png;base64,{base64.b64encode(picture).decode()}"/>')
    elif d.localization:
        parts.append(f"<p style='color:{OTHER}'>{escape(missing)}</p>")
    parts.append("<p style='font-size:85%;color:#555'>the full text report: <code>print(report)</code>; "
                 "the figure: <code>report.plot()</code></p>")
    return "<div>" + "".join(parts) + "</div>"
