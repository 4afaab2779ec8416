"""Time and peak memory against sequence length, one line per implementation (needs matplotlib)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path


def plot(records: list[dict], path: Path, title: str) -> Path | None:
    """Write a PNG with a row per mode: time per call (left) and peak memory (right) against length.

    Solid lines are unpadded inputs, dashed lines right-padded ones. Returns None without matplotlib
    (``pip install transformer-parity[plot]``) or without records to plot.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    ok = [r for r in records if r["status"] == "ok"]
    if not ok:
        return None
    modes = sorted({r["mode"] for r in ok})
    lines: dict[tuple, list[tuple[int, float, float | None]]] = defaultdict(list)
    for r in ok:
        key = (r["mode"], r["implementation"], r["size"]["name"], r["padding"])
        lines[key].append((r["size"]["seq_len"], r["median_s"], r["peak_memory_bytes"]))
    fig, axes = plt.subplots(len(modes), 2, figsize=(12, 4.2 * len(modes)), squeeze=False)
    impls = sorted({r["implementation"] for r in ok})
    colors = {name: f"C{i}" for i, name in enumerate(impls)}
    for (mode, impl, model, padding), points in sorted(lines.items()):
        points.sort()
        row = modes.index(mode)
        xs = [p[0] for p in points]
        padded = padding != "none"
        style = {"color": colors[impl], "marker": "s" if padded else "o", "linestyle": "--" if padded else "-",
                 "label": f"{impl} ({model}{', padded' if padded else ''})"}
        axes[row][0].plot(xs, [1e3 * p[1] for p in points], **style)
        mem = [(x, p[2]) for x, p in zip(xs, points, strict=True) if p[2] is not None]
        if mem:
            axes[row][1].plot([m[0] for m in mem], [m[1] / 2**20 for m in mem], **style)
    for row, mode in enumerate(modes):
        for col, ylabel in enumerate(("median time per call (ms)", "peak memory of one call (MiB)")):
            ax = axes[row][col]
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("sequence length (source = target)")
            ax.set_ylabel(ylabel)
            ax.set_title(f"{mode}: {'time' if col == 0 else 'memory'}")
            ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
