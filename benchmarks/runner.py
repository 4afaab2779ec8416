"""The loop over cases: build every implementation, probe, count, time interleaved, measure memory, record."""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.benchmark import Measurement
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import memory
from benchmarks.flops import MATMUL_LIMIT, count_flops, matmul_timer
from benchmarks.ops import OpRecorder, paths_taken
from benchmarks.presets import Case, Size, attention_bytes
from benchmarks.timing import make_timer, round_ratios, run_rounds, summarize
from benchmarks.workload import BUILTIN, Impl, Inputs, build_models, make_inputs, make_step


@dataclass(kw_only=True)
class Options:
    """Everything the command line decides about a run."""

    sizes: list[Size]
    impls: list[Impl]
    devices: list[str]
    dtypes: list[str]
    modes: list[str]
    paddings: list[str]
    threads: int = 1
    clock: str = "wall"
    rounds: int = 5
    min_run_time: float = 0.2
    dropout: float = 0.1
    batch_first: bool = True
    seed: int = 0
    measure_memory: bool = True
    max_memory_bytes: int = 8 << 30


@dataclass
class Results:
    """The records of a run, the Compare measurements, and the matmul limits measured along the way."""

    records: list[dict] = field(default_factory=list)
    measurements: dict[tuple[str, str], list[Measurement]] = field(default_factory=dict)  # (device, dtype) -> all
    matmul_limits: dict[str, list[float]] = field(default_factory=dict)  # "device dtype" -> FLOP/s, per case


class Progress:
    """One status line on stderr: overwritten in place on a terminal, one line per update otherwise."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.start = total, 0, time.monotonic()
        self.tty = sys.stderr.isatty()

    def __call__(self, text: str) -> None:
        line = f"[{self.done}/{self.total} cases, {time.monotonic() - self.start:5.0f} s] {text}"
        sys.stderr.write(f"\r\033[K{line}" if self.tty else f"{line}\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")


def _record(impl: Impl, case: Case, mode: str, **fields: object) -> dict:
    return {
        "implementation": impl.name, "target": impl.target, "fastpath_enabled": impl.fastpath,
        "compiled": impl.compiled, "device": case.device, "dtype": case.dtype, "mode": mode,
        "padding": case.padding, "size": dataclasses.asdict(case.size), **fields,
    }


def _probe(impls: list[Impl], models: dict, inputs: Inputs, mode: str, failed: dict[str, str],
           progress: Callable[[str], None]) -> tuple[dict, dict]:
    """Warm every implementation up, then run it once under the FLOP counter and the op recorder.

    Returns (steps, probes): the step of each implementation that ran, and (FLOPs seen, fast paths taken)
    per eager implementation. Failures (a dtype a kernel lacks, a target that declines) go into ``failed``.
    """
    steps, probes = {}, {}
    for impl in impls:
        if impl.name in failed:
            continue
        try:
            step = make_step(impl, models[impl.name], inputs, mode)
            progress(f"warm-up {impl.name}")
            step()
            if not impl.compiled:  # dispatch modes and torch.compile do not mix; the eager twin has the answer
                with FlopCounterMode(display=False) as counter, OpRecorder() as recorder:
                    step()
                probes[impl.name] = (counter.get_total_flops(), paths_taken(recorder.counts))
            steps[impl.name] = step
        except Exception as exc:  # any failure of one implementation is recorded, not fatal
            failed[impl.name] = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:300]}"
    return steps, probes


def _peak_memory(opts: Options, impl: Impl, case: Case, mode: str, step: Callable[[], object],
                 model: nn.Module) -> tuple[int | None, str]:
    try:
        if case.device.startswith("cuda"):
            return memory.cuda_peak_bytes(step, model, case.device), memory.CUDA_METHOD
        config = case.size.config(opts.dropout, opts.batch_first)
        return memory.cpu_peak_bytes(impl, case, mode, config, opts.batch_first, opts.threads)
    except Exception as exc:  # a failed measurement leaves the timing intact
        return None, f"failed: {type(exc).__name__}: {(str(exc).splitlines() or [''])[-1][:300]}"


def run_mode(opts: Options, case: Case, mode: str, models: dict, inputs: Inputs, failed: dict[str, str],
             results: Results, progress: Progress) -> None:
    """Every implementation on one case in one mode: probe, count, time interleaved, memory, records."""
    where = f"{case.device} {case.dtype} {case.size.label} pad={case.padding} {mode}"
    steps, probes = _probe(opts.impls, models, inputs, mode, failed, lambda s: progress(f"{where}: {s}"))
    if BUILTIN not in steps:  # nothing to compare with (e.g. a dtype this device cannot run)
        reason = f"{BUILTIN} failed: {failed[BUILTIN]}"
        results.records += [_record(impl, case, mode, status="error", reason=failed.get(impl.name, reason))
                            for impl in opts.impls]
        return
    # the workload's FLOPs: the built-in without fast path (see flops), the same count for every implementation
    flops = count_flops(make_step(Impl(BUILTIN, fastpath=False), models[BUILTIN], inputs, mode, for_counting=True))
    timers = {
        name: make_timer(step, f"{case.device} {case.dtype}", f"{case.size.label} {mode} pad={case.padding}",
                         name, opts.threads, opts.clock)
        for name, step in steps.items()
    }
    timers[MATMUL_LIMIT], matmul_flops = matmul_timer(case.device, case.torch_dtype, opts.threads, opts.clock)
    rounds = run_rounds(timers, opts.rounds, opts.min_run_time, lambda s: progress(f"{where}: {s}"))
    limit = matmul_flops / summarize(rounds.pop(MATMUL_LIMIT)).median  # FLOP/s, in the same rounds
    results.matmul_limits.setdefault(f"{case.device} {case.dtype}", []).append(limit)
    results.measurements.setdefault((case.device, case.dtype), []).extend(m for ms in rounds.values() for m in ms)
    for impl in opts.impls:
        if impl.name in failed:
            results.records.append(_record(impl, case, mode, status="error", reason=failed[impl.name]))
            continue
        stats = summarize(rounds[impl.name])
        ratio = round_ratios(rounds[impl.name], rounds[BUILTIN])
        counted, paths = probes.get(impl.name, (None, None))
        peak, method = None, None
        if opts.measure_memory:
            progress(f"{where}: memory {impl.name}")
            peak, method = _peak_memory(opts, impl, case, mode, steps[impl.name], models[impl.name])
        results.records.append(_record(
            impl, case, mode, status="ok", median_s=stats.median, iqr_s=stats.iqr, spread=stats.spread,
            round_medians_s=list(stats.round_medians), flops=flops.total, flops_counter=flops.counted,
            flops_added_fused_attention=flops.added, flops_seen_by_counter_for_this_impl=counted,
            gflops_per_s=flops.total / stats.median / 1e9, matmul_limit_gflops_per_s=limit / 1e9,
            fraction_of_matmul_limit=flops.total / stats.median / limit, peak_memory_bytes=peak,
            memory_method=method, paths=paths,
            ratio_to_builtin={"median": ratio.median, "low": ratio.low, "high": ratio.high,
                              "rounds": list(ratio.rounds)},
        ))


@contextlib.contextmanager
def _quiet_nested_tensors() -> Iterator[None]:
    with warnings.catch_warnings():  # the built-in's nested-tensor path warns on every call
        warnings.filterwarnings("ignore", message="The PyTorch API of nested tensors is in prototype stage")
        yield


def run(opts: Options) -> Results:
    """Run every case; CUDA cases are skipped (with a message) when no CUDA device is available."""
    torch.set_num_threads(opts.threads)
    results = Results()
    devices = [d for d in opts.devices if not d.startswith("cuda") or torch.cuda.is_available()]
    for d in sorted(set(opts.devices) - set(devices)):
        print(f"skipping device {d}: torch.cuda.is_available() is False", file=sys.stderr)
    cases = [Case(s, d, t, p) for d in devices for t in opts.dtypes for s in opts.sizes for p in opts.paddings]
    progress = Progress(len(cases))
    try:
        with _quiet_nested_tensors():
            for case in cases:
                _run_case(opts, case, results, progress)
                progress.done += 1
    finally:
        torch.backends.mha.set_fastpath_enabled(True)
        progress.close()
    return results


def _run_case(opts: Options, case: Case, results: Results, progress: Progress) -> None:
    config = case.size.config(opts.dropout, opts.batch_first)
    for mode in opts.modes:
        estimate = attention_bytes(case.size, mode, case.dtype)
        if estimate > opts.max_memory_bytes:
            reason = (f"estimated attention memory {estimate / 2**30:.1f} GiB > "
                      f"--max-memory {opts.max_memory_bytes / 2**30:.1f} GiB")
            results.records += [_record(i, case, mode, status="skipped", reason=reason) for i in opts.impls]
            continue
        models, failed = build_models(opts.impls, case, config, opts.seed)
        inputs = make_inputs(case, opts.batch_first, opts.seed)
        run_mode(opts, case, mode, models, inputs, failed, results, progress)
        del models, inputs
