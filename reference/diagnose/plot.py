"""The diagnosis as a picture: the error at every mapped submodule in forward order, against the tolerance.

Top: each submodule's error in forward order on a log scale, isolated (fed the built-in's input: its own
error) and propagated (fed its own previous output: what reaches it), with the tolerance bound as a step
line; the first diverging submodule is marked and named in the title, and the causes' fixes are annotated.
Below, when the first diverging submodule's own output differs: its output and the built-in's side by side
(position x feature, the batch element with the worst error) and their difference.

matplotlib is an optional extra (``pip install "transformer-parity[plot]"``) imported here only, on use;
the figure is a plain ``matplotlib.figure.Figure`` (no pyplot: nothing is shown or kept open by itself).
"""

from __future__ import annotations

import io
import math
import textwrap
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from reference.diagnose.localize import Localization, Replay, SubmoduleError
from reference.diagnose.report import Diagnosis, builtin_of
from reference.diagnose.runs import as_case

if TYPE_CHECKING:
    from matplotlib.figure import Figure

INSTALL = 'pip install "transformer-parity[plot]"'
MISSING = f"the picture needs matplotlib, an optional extra: {INSTALL}"


class PlotUnavailableError(ImportError):
    """matplotlib is not installed: the message says how to get it."""


def available() -> bool:
    """Whether matplotlib can be imported (the picture can be drawn)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _plane(t: Tensor, batch: int | None, batch_first: bool) -> Tensor:
    """A 2-D (position x feature) view of an output in the built-in's layout: the given batch element."""
    t = t.detach().to("cpu", torch.float64)
    if t.dim() == 3:
        axis = 0 if batch_first else 1
        t = t.select(axis, min(batch or 0, t.shape[axis] - 1))
    return t.reshape(1, -1) if t.dim() < 2 else t.reshape(-1, t.shape[-1])


def maps_of(localization: list[Localization], replay: Replay | None, case: Any) -> tuple[str, Tensor, Tensor] | None:
    """(name, the built-in's output, the target's fed the same input) at the first isolated submodule whose own
    output differs, as 2-D planes; None when there is none or its output could not be read."""
    isolated = next((loc for loc in localization if loc.mode == "isolated"), None)
    row = next((r for r in isolated.rows if not r.passed), None) if isolated else None
    if row is None or replay is None or row.name not in replay.got or row.name not in replay.expected:
        return None
    batch_first = as_case(case).config.batch_first
    batch = row.worst.get("batch")
    return (row.name, _plane(replay.expected[row.name], batch, batch_first),
            _plane(replay.got[row.name], batch, batch_first))


def _place(row: SubmoduleError | None) -> str:
    if row is None:
        return ""
    mine = row.target_module if row.target_module and row.target_module != row.name else ""
    return (row.name or "the module itself") + (f" (the target's {mine})" if mine else "")


def title(d: Diagnosis) -> str:
    """The figure's title: the verdict and the first diverging submodule (the PNG's Title too)."""
    first = _first(d)
    where = f": first diverging submodule {_place(first)}" if first is not None else ""
    return f"{d.verdict.upper()} against {builtin_of(d)} ({d.level}){where}"


def _first(d: Diagnosis) -> SubmoduleError | None:
    ordered = sorted(d.localization, key=lambda loc: loc.mode != "isolated")  # isolated first, else propagated
    return next((loc.first for loc in ordered if loc.first is not None), None)


def _fixes(d: Diagnosis) -> str:
    lines = []
    for i, c in enumerate(d.causes[:3], 1):
        lines.append(textwrap.shorten(f"[{i}] {c.cause}: {c.does if c.probe == 'fit' else 'it ' + c.does}", 90))
        if c.fix:
            lines += textwrap.wrap(f"fix: {c.fix}", 90, initial_indent="    ", subsequent_indent="      ")
    if len(d.causes) > 3:
        lines.append(f"and {len(d.causes) - 3} more cause(s): see the report")
    if d.unexplained:
        lines += textwrap.wrap(f"unexplained: {d.unexplained}", 90)[:3]
    return "\n".join(lines) or "no known cause found: see the report"


def _errors(ax: Any, d: Diagnosis, first: SubmoduleError | None) -> None:
    by_mode = {loc.mode: {r.name: r for r in loc.rows} for loc in d.localization}
    names = list(dict.fromkeys([r.name for loc in sorted(d.localization, key=lambda loc: loc.mode != "isolated")
                                for r in loc.rows]))
    rows = {n: by_mode.get("isolated", {}).get(n) or by_mode.get("propagated", {}).get(n) for n in names}
    series = {mode: [by_mode.get(mode, {}).get(n) for n in names] for mode in ("isolated", "propagated")}
    values = [r.max_abs for rs in series.values() for r in rs if r is not None] + [r.bound for r in rows.values()
                                                                                      if r is not None]
    finite = [v for v in values if math.isfinite(v) and v > 0]
    low = 10 ** math.floor(math.log10(min(finite))) / 10 if finite else 1e-17
    high = max(finite) if finite else 1.0
    x = list(range(len(names)))

    def shown(v: float) -> float:
        return low if v <= 0 else high * 10 if not math.isfinite(v) else v

    bounds = [shown(r.bound) if r is not None else math.nan for r in rows.values()]
    ax.hlines(bounds, [i - 0.42 for i in x], [i + 0.42 for i in x], color="0.4", linestyle="--", linewidth=1.5,
              label="tolerance bound")
    styles = {"isolated": dict(marker="o", color="C3", label="isolated (fed the built-in's input)"),
              "propagated": dict(marker="s", color="C0", mfc="none", label="propagated (fed its own outputs)")}
    for mode, rs in series.items():
        pts = [(i, shown(r.max_abs)) for i, r in zip(x, rs, strict=True) if r is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), linestyle="-" if mode == "propagated" else "none", markersize=7,
                    **styles[mode])
    ax.set_yscale("log")
    ax.set_ylim(low / 2, high * 1e4)  # headroom above for the annotation
    ax.set_xticks(x, [n or "(the module itself)" for n in names], rotation=90 if len(names) > 4 else 0,
                  fontsize=8 if len(names) > 12 else 9)
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_ylabel("max abs error (float64)")
    ax.grid(axis="y", which="major", alpha=0.3)
    ax.figure.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=3, fontsize=8)
    if first is not None and first.name in names:
        i = names.index(first.name)
        ax.axvline(i, color="C3", alpha=0.25, linewidth=8)
        right = i > len(names) / 2
        ax.annotate(f"first diverging: {_place(first)}\n{_fixes(d)}", xy=(i, shown(first.max_abs)),
                    xytext=(0.02 if right else 0.98, 0.97), textcoords="axes fraction", ha="left" if right else "right",
                    va="top", multialignment="left", fontsize=8, family="monospace",
                    bbox=dict(boxstyle="round", facecolor="white", edgecolor="C3", alpha=0.95),
                    arrowprops=dict(arrowstyle="->", color="C3"))


def _maps(fig: Any, cells: list[Any], d: Diagnosis) -> None:
    from matplotlib.ticker import MaxNLocator

    assert d.maps is not None
    name, expected, got = d.maps
    diff = (got - expected).abs()
    scale = max(float(expected.abs().max()), float(got.abs().max()), 1e-300)
    for ax, data, label, cmap, lim in (
            (cells[0], expected, f"{builtin_of(d)}: {name or 'output'}", "RdBu_r", (-scale, scale)),
            (cells[1], got, "the target, fed the same input", "RdBu_r", (-scale, scale)),
            (cells[2], diff, "|difference|", "magma", (0.0, float(diff.max()) or 1.0))):
        image = ax.imshow(data.numpy(), aspect="auto", cmap=cmap, vmin=lim[0], vmax=lim[1], interpolation="nearest")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("feature", fontsize=8)
        ax.set_ylabel("position", fontsize=8)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        fig.colorbar(image, ax=ax, shrink=0.85)


def figure(d: Diagnosis) -> Figure:
    """The picture of ``d`` (a matplotlib Figure, not shown by itself); PlotUnavailableError without matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise PlotUnavailableError(MISSING) from exc
    rows = {r.name for loc in d.localization for r in loc.rows}
    width = min(16.0, max(8.0, 0.32 * len(rows) + 4))
    fig = Figure(figsize=(width, 7.5 if d.maps is not None else 4.8), layout="constrained")
    fig.suptitle(textwrap.fill(title(d), int(width * 10)), fontsize=11)
    if not rows:
        ax = fig.add_subplot()
        ax.axis("off")
        reason = d.not_localized or "nothing was localized"
        ax.text(0.5, 0.5, "\n".join(textwrap.wrap(reason, 80)), ha="center", va="center", fontsize=10)
        return fig
    grid = fig.add_gridspec(2 if d.maps is not None else 1, 3, height_ratios=[1.25, 1] if d.maps is not None else [1])
    _errors(fig.add_subplot(grid[0, :]), d, _first(d))
    if d.maps is not None:
        _maps(fig, [fig.add_subplot(grid[1, i]) for i in range(3)], d)
    return fig


def png(d: Diagnosis, dpi: int = 100) -> bytes:
    """The picture as PNG bytes, its title kept in the PNG's Title text (PlotUnavailableError without matplotlib)."""
    out = io.BytesIO()
    figure(d).savefig(out, format="png", dpi=dpi, metadata={"Title": title(d)})
    return out.getvalue()
