"""Peak memory of one step, per implementation and mode.

CUDA: ``torch.cuda.max_memory_allocated`` over one step, less what was allocated before it (the model,
its inputs): the activations, workspaces, output and gradients the step needs.

CPU: torch has no allocator statistics there, so each (implementation, case, mode) runs in a fresh
subprocess (``python -m benchmarks.memory``) that builds the model and inputs, runs one warm-up step, sets
the gradients to None, resets the kernel's peak-RSS mark (``/proc/self/clear_refs``), runs one more step and
reports the peak RSS (``VmHWM``) less the RSS just before that step. glibc's mmap threshold is pinned
(``MALLOC_MMAP_THRESHOLD_``) so freed tensors leave the RSS instead of lingering in malloc's heap, which
would hide them from the second step's growth. Where clear_refs is unavailable the child falls back to
the growth of ``ru_maxrss`` over the first step (warm-up included, so a little higher).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from benchmarks.presets import Case, Size
from benchmarks.workload import Impl, build_model, make_inputs, make_step

CPU_METHOD = "peak RSS growth over one step after a warm-up, in a fresh subprocess (VmHWM after clear_refs)"
CPU_FALLBACK = "ru_maxrss growth over the first step, in a fresh subprocess"
CUDA_METHOD = "torch.cuda.max_memory_allocated over one step, less memory allocated before it"


def cuda_peak_bytes(step: Callable[[], object], model: nn.Module, device: str) -> int:
    """Peak CUDA memory one (already warmed-up) step adds on top of the model and inputs."""
    model.zero_grad(set_to_none=True)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    step()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def cpu_peak_bytes(
    impl: Impl, case: Case, mode: str, config: dict, batch_first: bool, threads: int, timeout: float = 600
) -> tuple[int, str]:
    """(peak bytes, method) of one step, measured in a fresh subprocess; see the module docstring."""
    spec = {
        "impl": dataclasses.asdict(impl), "size": dataclasses.asdict(case.size), "device": case.device,
        "dtype": case.dtype, "padding": case.padding, "mode": mode, "config": config,
        "batch_first": batch_first, "threads": threads,
    }
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="16384", OMP_NUM_THREADS=str(threads))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.memory", json.dumps(spec)],
        env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"memory subprocess failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["peak_bytes"], result["method"]


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _maxrss_bytes() -> int:
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024  # bytes on macOS, KiB on Linux


def measure_in_this_process(spec: dict) -> dict:
    """The child's side: build, warm up, measure one step. Run it only in a fresh process."""
    torch.set_num_threads(spec["threads"])
    case = Case(Size(**spec["size"]), spec["device"], spec["dtype"], spec["padding"])
    impl = Impl(**spec["impl"])
    model = build_model(impl, case, spec["config"])
    step = make_step(impl, model, make_inputs(case, spec["batch_first"]), spec["mode"])
    before_first = _maxrss_bytes()
    step()
    model.zero_grad(set_to_none=True)
    gc.collect()
    if _reset_peak_rss():
        before = _status_kib("VmRSS") * 1024
        step()
        return {"peak_bytes": _status_kib("VmHWM") * 1024 - before, "method": CPU_METHOD}
    return {"peak_bytes": _maxrss_bytes() - before_first, "method": CPU_FALLBACK}


if __name__ == "__main__":
    print(json.dumps(measure_in_this_process(json.loads(sys.argv[1]))))
