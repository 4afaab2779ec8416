"""What a run prints and writes: header lines, the Compare table, efficiency rows, the ratio line, results.json."""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import torch
from torch.utils.benchmark import Compare

from benchmarks.flops import __doc__ as FLOPS_NOTE
from benchmarks.memory import __doc__ as MEMORY_NOTE
from benchmarks.runner import Options, Results
from benchmarks.workload import BUILTIN

SCHEMA = "transformer-parity/benchmarks/1"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: str) -> str:
    return torch.cuda.get_device_name(device) if device.startswith("cuda") else _cpu_name()


def header(device: str, dtype: str, threads: int) -> str:
    """The line above each table: device, torch version, dtype, threads."""
    return (
        f"device {device} ({device_name(device)}) | torch {torch.__version__} | dtype {dtype} | "
        f"threads {threads} (torch.get_num_threads) | {os.cpu_count()} cores visible"
    )


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False,
                             cwd=Path(__file__).resolve().parent, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(opts: Options, results: Results, argv: list[str]) -> dict:
    """Everything about the machine and the run that the numbers depend on."""
    return {
        "torch": torch.__version__, "python": sys.version.split()[0], "platform": platform.platform(),
        "cpu": _cpu_name(), "cpu_count": os.cpu_count(), "threads": opts.threads, "clock": opts.clock,
        "cuda_available": torch.cuda.is_available(),
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "git_commit": _git_commit(), "argv": argv, "rounds": opts.rounds, "min_run_time_s": opts.min_run_time,
        "dropout": opts.dropout, "batch_first": opts.batch_first, "seed": opts.seed,
        "matmul_limit_gflops_per_s": {k: [x / 1e9 for x in v] for k, v in results.matmul_limits.items()},
        "notes": {"flops": " ".join(FLOPS_NOTE.split()), "memory": " ".join(MEMORY_NOTE.split())},
    }


def write_json(path: Path, opts: Options, results: Results, argv: list[str]) -> None:
    doc = {"schema": SCHEMA, "environment": environment(opts, results, argv), "records": results.records}
    path.write_text(json.dumps(doc, indent=1) + "\n")


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:.1f}"


def _paths(paths: dict | None) -> str:
    if paths is None:
        return "n/a (compiled)"
    taken = [f"{name} x{count}" for name, count in paths.items() if count]
    return ", ".join(taken) or "none"


def efficiency_table(records: list[dict]) -> str:
    """One line per implementation and case: ratio, GFLOP/s, fraction of the matmul limit, peak memory, paths."""
    rows = [("case", "implementation", "vs built-in [min-max]", "spread", "GFLOP/s", "of matmul", "peak MiB",
             "fast paths taken")]
    for r in records:
        case = f"{_case_label(r)} {r['mode']}"
        if r["status"] != "ok":
            rows.append((case, r["implementation"], r["status"], "", "", "", "", r["reason"]))
            continue
        q = r["ratio_to_builtin"]
        rows.append((
            case, r["implementation"], f"{q['median']:.3f} [{q['low']:.2f}-{q['high']:.2f}]",
            f"{100 * r['spread']:.1f}%", f"{r['gflops_per_s']:.1f}", f"{100 * r['fraction_of_matmul_limit']:.0f}%",
            _mib(r["peak_memory_bytes"]), _paths(r["paths"]),
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=False)) + "  " + row[-1] for row in rows
    )


def _case_label(r: dict) -> str:
    s = r["size"]
    return f"{s['name']} N{s['batch']} L{s['seq_len']} pad={r['padding']}"


def ratio_line(records: list[dict]) -> str:
    """The last line: each non-built-in implementation's time over nn.Transformer's, per mode."""
    by_impl: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        if r["status"] == "ok" and not r["implementation"].startswith(BUILTIN):
            by_impl[r["implementation"]][r["mode"]].append(r["ratio_to_builtin"]["median"])
    parts = []
    for impl, modes in by_impl.items():
        per_mode = ", ".join(
            f"{mode} {_geomean(v):.2f} (range {min(v):.2f}-{max(v):.2f}, {len(v)} cases)" for mode, v in modes.items()
        )
        parts.append(f"{impl} / {BUILTIN} time, geometric mean of per-case median ratios: {per_mode}")
    if not records:
        return "nothing was measured (see the messages above)"
    return "\n".join(parts) or "no implementation besides the built-in ran"


def _geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def print_report(opts: Options, results: Results) -> None:
    """Per device and dtype: the header, the Compare table, the efficiency rows; then the ratio line."""
    for (device, dtype), measurements in results.measurements.items():
        print(header(device, dtype, opts.threads))
        compare = Compare(measurements)
        compare.print()
        limits = results.matmul_limits[f"{device} {dtype}"]
        print(f"matmul limit (a square matmul timed in every case's rounds): median "
              f"{statistics.median(limits) / 1e9:.1f} GFLOP/s, range {min(limits) / 1e9:.1f}-{max(limits) / 1e9:.1f}; "
              "FLOPs: FlopCounterMode, plus the CPU fused-attention matmuls it misses (results.json notes)")
        group = [r for r in results.records if r["device"] == device and r["dtype"] == dtype]
        print(efficiency_table(group))
        print()
    skipped = [r for r in results.records if r["status"] != "ok" and (r["device"], r["dtype"]) not in
               results.measurements]
    if skipped:
        print(efficiency_table(skipped))
    print(ratio_line(results.records))
