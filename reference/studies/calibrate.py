"""Measure handmade's error against PyTorch's own error, to set the constants of reference/verdict/tolerance.py.

``python -m reference.studies.calibrate [--examples N] [--dtypes float64,float32,bfloat16,float16]`` draws N
whole-model cases per dtype from the suite's own strategy (``reference.cases.strategies.cases()``, so the
distribution is the one the tests see), judges outputs and gradients (inputs and every parameter; in
bfloat16/float16 gradients only for smooth activations, as the suite does) and prints, per dtype and kind:

- the ratio max|handmade - oracle| / max|torch - oracle|: max, p99, median;
- the error in units of the floor, max|handmade - oracle| / (eps(dtype) * max(1, max|oracle|)): max, p99;
- for each candidate floor (in ulps), the smallest K with which every measured comparison passes.

For float64 it prints the error relative to max(1, max|oracle|) (PyTorch's own error is zero there).
Choose K and FLOOR_ULPS with a margin above what is needed, and record the run in the tolerance module's
docstring and the README.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch

import reference.verdict.tolerance as tolerance
from reference.cases.case import Case
from reference.inference.prepare import whole_model
from reference.targets.contract import DEFAULT_TARGET, load_target

DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
FLOORS = (0, 4, 8, 16, 32, 64, 128, 256)


@dataclass(frozen=True, kw_only=True)
class Sample:
    """One judged tensor: its kind, the candidate's error, PyTorch's own error, and the floor's unit."""

    kind: str
    smooth: bool  # the activation is not relu
    max_abs: float
    torch_err: float
    unit: float  # eps(dtype) * max(1, max|oracle|)


def _kind(what: str) -> str:
    if what == "output":
        return "output"
    return "input grads" if what in ("grad src", "grad tgt") else "param grads"


def _unit(verdict: tolerance.Verdict, dtype: torch.dtype) -> float:
    """eps(dtype) * max(1, max|oracle|), recovered from the verdict's bound."""
    floor = verdict.bound - tolerance.K * verdict.torch_err
    if dtype == torch.float64:
        return floor / tolerance.FLOAT64_FLOOR
    return floor / tolerance.floor_ulps(dtype)


def collect(target_spec: str, dtype: torch.dtype, examples: int, seed: int, all_grads: bool = False) -> list[Sample]:
    """Judge ``examples`` drawn cases at ``dtype`` on the CPU and return every comparison's numbers."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed

    from reference.cases.strategies import cases, is_smooth

    target = load_target(target_spec)
    samples: list[Sample] = []

    @settings(max_examples=examples, database=None, deadline=None, derandomize=False,
              suppress_health_check=list(HealthCheck), phases=[Phase.generate])
    @hypothesis_seed(seed)  # reproducible draws
    @given(case=cases())
    def run(case: Case) -> None:
        grads = dtype in (torch.float64, torch.float32) or is_smooth(case.config) or all_grads
        smooth = is_smooth(case.config)
        for v in whole_model(target, case, "cpu", dtype, grads):
            samples.append(Sample(kind=_kind(v.what), smooth=smooth, max_abs=v.max_abs, torch_err=v.torch_err,
                                  unit=_unit(v, dtype)))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run()
    return samples


def needed_k(samples: list[Sample], floor_ulps: float) -> float:
    """The smallest K with which every sample passes: max|err| <= K * torch_err + floor_ulps * unit."""
    k = 0.0
    for s in samples:
        excess = s.max_abs - floor_ulps * s.unit
        if excess > 0:
            k = float("inf") if s.torch_err == 0 else max(k, excess / s.torch_err)
    return k


def report(name: str, samples: list[Sample]) -> list[str]:
    """Lines describing the distribution of ``samples``."""
    lines = []
    by_kind: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        by_kind[s.kind].append(s)
        by_kind["all"].append(s)
        by_kind[f"{s.kind}, {'smooth' if s.smooth else 'relu'}"].append(s)
    for kind, group in by_kind.items():
        errs = np.array([s.max_abs / s.unit for s in group])
        if name == "float64":
            lines.append(f"  {kind:20s} n={len(group):5d}  err/max(1,|oracle|): max {errs.max():.3g}  "
                         f"p99 {np.percentile(errs, 99):.3g}  median {np.median(errs):.3g}")
            continue
        ratios = np.array([s.max_abs / s.torch_err if s.torch_err > 0 else np.inf for s in group])
        finite = ratios[np.isfinite(ratios)]
        lines.append(
            f"  {kind:20s} n={len(group):5d}  ratio to torch: max {finite.max():.3g} p99 "
            f"{np.percentile(finite, 99):.3g} median {np.median(finite):.3g}   err in ulps: max {errs.max():.3g} "
            f"p99 {np.percentile(errs, 99):.3g}   K needed at floor "
            + " ".join(f"{f}:{needed_k(group, f):.3g}" for f in FLOORS)
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reference.studies.calibrate", description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=300, help="cases per dtype (default 300)")
    parser.add_argument("--dtypes", default=",".join(DTYPES), help="comma-separated (default: all four)")
    parser.add_argument("--target", default=DEFAULT_TARGET, help=f"MODULE:OBJECT (default {DEFAULT_TARGET})")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(f"calibration: target {args.target}, torch {torch.__version__}, {args.examples} cases per dtype, "
          f"cpu, threads {torch.get_num_threads()}, current K={tolerance.K} FLOOR_ULPS={tolerance.FLOOR_ULPS} "
          f"FLOAT64_FLOOR={tolerance.FLOAT64_FLOOR}")
    for name in args.dtypes.split(","):
        start = time.perf_counter()
        samples = collect(args.target, DTYPES[name], args.examples, args.seed)
        print(f"{name}: {len(samples)} comparisons in {time.perf_counter() - start:.0f}s")
        print("\n".join(report(name, samples)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
