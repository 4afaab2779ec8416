"""The diagnosis as text a learner can act on: a headline, then four numbered sections."""

from __future__ import annotations

import math
import re
import textwrap

from reference.diagnose.localize import Localization, SubmoduleError
from reference.diagnose.probes import Cause
from reference.diagnose.report import Diagnosis, builtin_of, headline

WIDTH = 100  # the text report's lines fit in this many columns


def _num(x: float) -> str:
    return "inf" if math.isinf(x) else f"{x:.3g}"


def _at(row: SubmoduleError) -> str:
    w = row.worst
    if not w:
        return ""
    where = ", ".join(f"{k} {v}" for k, v in w.items() if v is not None)
    return f" at ({where}): {row.candidate:.6g} vs {row.oracle:.6g}"


def _row(r: SubmoduleError) -> str:
    parts = []
    if not r.fed_passed:
        parts.append(f"fed a different input (max err {_num(r.fed_max_abs)})")
    if not r.passed:
        parts.append(f"{'its own output differs: ' if parts or r.fed_max_abs else ''}max err {_num(r.max_abs)}{_at(r)}")
    elif parts:
        parts.append("its own computation agrees")
    return "; ".join(parts)


def _short(r: SubmoduleError) -> str:
    parts = [] if r.fed_passed else [f"fed {_num(r.fed_max_abs)}"]
    return ", ".join([*parts, f"own {_num(r.max_abs)}"] if not r.passed else parts)


def _kind(name: str) -> str:
    """encoder.layers.0.norm1 -> norm1; encoder.layers.0 -> layers; encoder -> stacks."""
    last = name.rsplit(".", 1)[-1]
    return "layers" if last.isdigit() else "stacks" if "." not in name else last


def _names(items: list[str], limit: int = 8) -> str:
    return ", ".join(items[:limit]) + (f", and {len(items) - limit} more" if len(items) > limit else "")


def _family_names(labels: list[str]) -> list[str]:
    return list(dict.fromkeys(re.sub(r" \(2nd\)$", "", label) for label in labels))


def _where(cause: Cause, isolated: Localization | None) -> str:
    if isolated is None or not cause.sites:
        return ""
    rows = [r for r in isolated.diverging if any(re.search(s, r.name) for s in cause.sites)]
    rows += [SubmoduleError(name=n, passed=False, max_abs=math.nan, bound=0, worst={}, candidate=0,
                            oracle=0) for n in isolated.not_called
             if any(re.search(s, n) for s in cause.sites)]
    if not rows:
        return ""
    shown = ", ".join(f"{r.name} ({'never called' if math.isnan(r.max_abs) else _short(r)})" for r in rows[:4])
    return shown + (f", and {len(rows) - 4} more" if len(rows) > 4 else "")


def _wrap(lines: list[str]) -> list[str]:
    """Each line folded to WIDTH columns, continuation lines indented under its text."""
    out = []
    for line in lines:
        if len(line) <= WIDTH:
            out.append(line)
            continue
        indent = " " * (len(line) - len(line.lstrip()) + 4)
        out += textwrap.wrap(line, WIDTH, subsequent_indent=indent, break_on_hyphens=False) or [""]
    return out


def _place(name: str, module: str) -> str:
    return (name or "the module itself") + (f" (the target's {module})" if module else "")


def render(d: Diagnosis) -> str:
    """The text report (lines of at most WIDTH columns): the headline, then its four numbered sections."""
    b = builtin_of(d)
    lines = [f"parity diagnose {d.target} --as {d.level}  ({d.kind}; vs {b}; torch {d.torch}; float64 on "
             f"{d.device})", "", headline(d), *(f"Note: {n}" for n in d.notes), ""]
    for section in (_families_section(d), _where_section(d, b), _causes_section(d, b), _reproducer_section(d)):
        lines += [*section, ""]
    lines.pop()
    return "\n".join(_wrap(lines))


def _families_section(d: Diagnosis) -> list[str]:
    lines = ["1. Verdict per family (float64, 2 cases each: outputs, and gradients on the first)",
             f"   base: {d.base}" + ("" if d.base == "default" else " (fixed by its code, or the first it runs)")]
    if d.base_tried:
        names = [t.split(":", 1)[0] for t in d.base_tried]
        lines.append(f"   not the base ({len(names)}): {', '.join(names)}; first: {d.base_tried[0]}")
    group = None
    for f in d.families:
        if f.group != group:
            group = f.group
            lines.append(f"   {group}")
        text = f"     {f.name:44s} {f.verdict:14s}"
        if f.verdict == "divergent":
            text += f" max err {_num(f.max_abs)} ({f.detail})" if not math.isnan(f.max_abs) else f" {f.detail}"
        elif f.verdict in ("crashes", "not supported", "unresolved") and f.detail:
            text += f" {f.detail[:160]}"
        lines.append(text.rstrip())
        if f.closest and (f is d.families[0] or f.closest != d.families[0].closest):
            lines.append(f"{'':50s}{'matches' if f.closest_matches else 'closest:'} {f.closest}"
                         + ("" if f.closest_matches else " (the other causes account for the rest)"))
    if d.best_match:
        lines += ["", f"   Best match: {d.best_match}"]
    return lines


def _where_section(d: Diagnosis, b: str) -> list[str]:
    lines = ["2. Where it first differs" + (f" (on {d.localized_family})" if d.localized_family else "")]
    if d.not_localized:
        lines.append(f"   Not localized: {d.not_localized}")
    for loc in d.localization:
        title = {"propagated": "propagated (each model runs on its own activations)",
                 "isolated": f"isolated (each submodule is fed {b}'s input: its own error only)",
                 "gradients": f"gradients (each submodule fed {b}'s input and one output gradient: its input "
                              "gradient)"}[loc.mode]
        lines.append(f"   {title}")
        if loc.note:
            lines.append(f"     note: {loc.note}")
        first = loc.first
        if first is None and not loc.not_called and not loc.note:
            lines.append(f"     every mapped submodule agrees ({len(loc.rows)} compared)")
        elif first is not None:
            lines.append(f"     first: {_place(first.name, first.target_module)}  {_row(first)}")
        if loc.mode == "isolated" and loc.diverging:
            lines += _isolated_summary(loc, b)
        lines += [f"     set aside: {name}: {why}" for name, why in loc.set_aside.items()]
        if loc.not_called:
            lines.append(f"     mapped but never called as a module (compared through its parts): "
                         f"{', '.join(loc.not_called)}")
        if loc.rows:
            lines.append(f"     case: {loc.case}")
    return lines


def _isolated_summary(loc: Localization, b: str) -> list[str]:
    """Which submodules differ on their own, which are fed a different input, and how many agree."""
    lines = []
    own = [r for r in loc.rows if not r.passed]
    fed = [r for r in loc.rows if not r.fed_passed]
    if own:
        lines.append(f"     own computation differs ({len(own)}): "
                     + _names([f"{r.name or 'itself'} ({_num(r.max_abs)})" for r in own]))
    if fed:
        lines.append(f"     fed a different input ({len(fed)}): " + _names([r.name for r in fed]))
    agree = [r.name for r in loc.rows if not r.diverges]
    if agree:
        kinds = sorted({_kind(n) for n in agree})
        lines.append(f"     agree: {len(agree)} submodules ({', '.join(kinds)})")
    lines.append(f"     (own: its computation on {b}'s input; for a layer, its code outside its "
                 "mapped parts. fed: the code between mapped submodules gives it another input: norm "
                 "placement, activation, residuals)")
    return lines


def _causes_section(d: Diagnosis, b: str) -> list[str]:
    lines = ["3. Likely causes (each backed by a probe run on the target)"]
    if not d.causes:
        lines.append("   none found" + ("" if d.verdict == "equivalent" else ": the target was never run against "
                                         f"{b}" if d.verdict == "unresolved" else
                                         f": no known deviation or fit brings {b} closer to the target"))
    isolated = next((loc for loc in d.localization if loc.mode == "isolated" and loc.rows), None)
    for i, c in enumerate(d.causes, 1):
        lines += _cause_lines(d, c, i, b, isolated)
    ex = d.explanation
    if ex is not None and ex.causes and d.explained:
        lines.append(f"   Together: {b} with these changes matches the target to {_num(ex.residual)} "
                     "on every case tried.")
    elif ex is not None and ex.causes:
        lines.append(f"   With these changes the target still differs by {_num(ex.residual)} on "
                     f"{', '.join(_family_names(ex.unexplained)[:5])}.")
    if d.unexplained:
        lines.append(f"   Unexplained: {d.unexplained}")
    if d.crashes:
        lines += ["", "   Crashes (failures of the target, not of the harness):"]
        for cf in d.crashes:
            lines.append(f"     {cf.family}: {cf.message[:300]}")
            lines.append(f"       where: {cf.where or 'not localized (no map into the target, or it did not recur)'}")
    return lines


def _cause_lines(d: Diagnosis, c: Cause, i: int, b: str, isolated: Localization | None) -> list[str]:
    lines = [f"   [{i}] {c.cause}: {c.does if c.probe == 'fit' else 'it ' + c.does}"]
    families = _family_names(c.shows_on)
    lines.append(f"       evidence ({c.probe}): max err against {b} {_num(c.err_vs_builtin)}; against "
                 f"{b} with the causes found {_num(c.err_vs_explanation)}; without this one "
                 f"{_num(c.err_without_it)}")
    if not math.isnan(c.place_before):
        lines.append(f"       at {_place(c.place, c.place_module)}, fed {b}'s input: error "
                     f"{_num(c.place_before)} -> {_num(c.place_after)} with it")
    lines.append(f"       shows on: {', '.join(families[:6])}" + (" ..." if len(families) > 6 else ""))
    lines += [f"       or, equally well on these cases: it {twin}" for twin in c.alternatives]
    where = _where(c, isolated) if d.localized_family in families and math.isnan(c.place_before) else ""
    if where:
        lines.append(f"       where: {where}")
    if c.fix:
        lines.append(f"       fix: {c.fix}")
    return lines


def _reproducer_section(d: Diagnosis) -> list[str]:
    lines = ["4. Minimal failing example (hypothesis, shrunk)"]
    if d.reproducer is not None:
        r = d.reproducer
        lines += [f"   case: {r.case}", f"   {r.failure}", f"   reproducer: {r.folder}/repro.py + tensors.pt "
                  "(needs only torch and the target)", f"   run: {r.command}"]
    else:
        lines.append(f"   {d.reproducer_note or 'none'}")
    return lines
