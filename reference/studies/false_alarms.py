"""The no-false-alarm run: many whole-model examples on handmade, recording how close each comes to the bound.

    python -m reference.studies.false_alarms --examples 10000 --dtype float64 --seed 1

draws cases with the suite's own strategy (``strategies.cases()``, through hypothesis), compares handmade
with nn.Transformer on each (``reference.inference.prepare.whole_model``: output, input and parameter gradients),
and never stops at a failure: a failure here is a false alarm, i.e. a bug in the tolerance policy or in
the strategies, and is listed with its case. It prints the distribution of error / bound over every judged
tensor (max, p99, p50), the worst tensors, and the margin (bound / worst error); ``--json`` keeps it all.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings

import torch
from hypothesis import HealthCheck, Phase, given, seed, settings

import reference.cases.strategies as strategies
from reference.cases.case import Case
from reference.inference.prepare import whole_model
from reference.targets.contract import load_target


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def run(target_spec: str, count: int, dtype: torch.dtype, rng_seed: int, grads: bool, progress: int,
        checkpoint: str | None = None) -> dict:
    """Judge ``count`` drawn cases; per case the worst error / bound; every failure with its case."""
    target = load_target(target_spec)
    per_case: list[float] = []
    per_tensor: list[float] = []
    worst: list[tuple[float, str, str]] = []
    alarms: list[dict] = []
    start = time.perf_counter()

    @seed(rng_seed)
    @settings(max_examples=count, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(strategies.cases())
    def judge_case(case: Case) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            verdicts = whole_model(target, case, "cpu", dtype, grads)
        ratios = [v.max_abs / v.bound if v.bound > 0 else (0.0 if v.max_abs == 0 else float("inf")) for v in verdicts]
        per_tensor.extend(ratios)
        per_case.append(max(ratios))
        top = max(range(len(ratios)), key=ratios.__getitem__)
        worst.append((ratios[top], str(verdicts[top]), case.describe()))
        worst.sort(key=lambda w: -w[0])
        del worst[5:]
        if not all(v.passed for v in verdicts):
            alarms.append({"case": repr(case), "failed": [str(v) for v in verdicts if not v.passed]})
        if progress and len(per_case) % progress == 0:
            print(f"  {len(per_case)} cases, {time.perf_counter() - start:.0f} s, worst error/bound so far "
                  f"{max(per_case):.3g}, alarms {len(alarms)}", flush=True)
            if checkpoint:  # a long run interrupted keeps what it measured
                with open(checkpoint, "w") as f:
                    json.dump(summary(), f, indent=1, default=str)

    def summary() -> dict:
        return {
            "target": target_spec, "dtype": str(dtype).replace("torch.", ""), "seed": rng_seed, "grads": grads,
            "cases": len(per_case), "tensors": len(per_tensor), "seconds": round(time.perf_counter() - start, 1),
            "case_ratio": {"max": max(per_case), "p99": quantile(per_case, 0.99), "p50": quantile(per_case, 0.5)},
            "tensor_ratio": {"max": max(per_tensor), "p99": quantile(per_tensor, 0.99),
                             "p50": quantile(per_tensor, 0.5)},
            "margin": 1.0 / max(per_case) if max(per_case) > 0 else float("inf"),
            "worst": [{"error/bound": w[0], "verdict": w[1], "case": w[2]} for w in worst],
            "false_alarms": alarms,
        }

    judge_case()
    return summary()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reference.studies.false_alarms", description=__doc__)
    parser.add_argument("--examples", type=int, default=10_000, help="cases to judge (default 10000)")
    parser.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    parser.add_argument("--seed", type=int, default=1, help="hypothesis seed: the same run replays (default 1)")
    parser.add_argument("--impl", default="reference.targets.contract:handmade", help="target spec (default handmade)")
    parser.add_argument("--no-grads", action="store_true", help="judge outputs only (default: and gradients)")
    parser.add_argument("--progress", type=int, default=500, help="print a line every N cases (0: never)")
    parser.add_argument("--json", metavar="PATH", help="write the full record (worst tensors, alarms) to PATH")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    record = run(args.impl, args.examples, getattr(torch, args.dtype), args.seed, not args.no_grads, args.progress,
                 args.json)
    c, t = record["case_ratio"], record["tensor_ratio"]
    print(f"{record['target']} {record['dtype']} seed={record['seed']} grads={record['grads']}: {record['cases']} "
          f"cases, {record['tensors']} tensors judged in {record['seconds']:.0f} s")
    print(f"  error / bound per case:   max {c['max']:.3g}  p99 {c['p99']:.3g}  p50 {c['p50']:.3g}")
    print(f"  error / bound per tensor: max {t['max']:.3g}  p99 {t['p99']:.3g}  p50 {t['p50']:.3g}")
    print(f"  margin (bound / worst error): {record['margin']:.3g}x; false alarms: {len(record['false_alarms'])}")
    for w in record["worst"][:3]:
        print(f"  worst: {w['verdict'][:220]}\n         {w['case'][:220]}")
    for alarm in record["false_alarms"][:10]:
        print(f"  FALSE ALARM: {alarm['case'][:300]}\n    {alarm['failed'][0][:300]}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(record, f, indent=1, default=str)
    return 1 if record["false_alarms"] else 0


if __name__ == "__main__":
    sys.exit(main())
