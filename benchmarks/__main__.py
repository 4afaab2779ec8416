"""python -m benchmarks (or parity bench): time handmade and plug-in targets against nn.Transformer.

Examples:
  python -m benchmarks --preset tiny --out /tmp/b
  python -m benchmarks --preset small base --rounds 7
  python -m benchmarks --preset small --batch 2 --sweep --modes eval --out /tmp/sweep
  python -m benchmarks --size d=384,heads=6,enc=4,dec=4,ff=1536,batch=8,len=256 --impl mypkg:MyTransformer
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--preset", nargs="+", default=None, help="tiny, small, base (default: tiny unless --size)")
    p.add_argument("--size", action="append", default=[], metavar="KEY=N,...",
                   help="a custom size, keys d, heads, enc, dec, ff, batch, len (others from small); repeatable")
    p.add_argument("--seq-len", nargs="+", type=int, default=None, help="run every size at each of these lengths")
    p.add_argument("--sweep", action="store_true", help="same as --seq-len 128 256 512 1024 2048")
    p.add_argument("--batch", type=int, default=None, help="override every size's batch")
    p.add_argument("--impl", action="append", default=[], metavar="MODULE:OBJECT",
                   help="a plug-in target (see the plug-in contract) timed besides handmade; repeatable")
    p.add_argument("--no-handmade", action="store_true", help="time only the built-in and --impl targets")
    p.add_argument("--compile", action="store_true", help="add torch.compile variants of each implementation")
    p.add_argument("--modes", nargs="+", default=["eval", "train"], choices=["eval", "train"])
    p.add_argument("--padding", nargs="+", default=["none", "right"], choices=["none", "right"],
                   help="without padding masks, and/or with right-padded key padding masks")
    p.add_argument("--dtype", nargs="+", default=["float32"], choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", nargs="+", default=None, help="cpu and/or cuda[:i] (default: cpu, plus cuda if present)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1; fixed for every timer)")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="wall (default) or cpu: this process's CPU time, robust on a shared machine (CPU, 1 thread)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds per case (default 5)")
    p.add_argument("--min-run-time", type=float, default=0.2, help="seconds per blocked_autorange (default 0.2)")
    p.add_argument("--dropout", type=float, default=0.1, help="nn.Transformer's dropout (default 0.1)")
    p.add_argument("--seq-first", action="store_true", help="batch_first=False (no built-in fast path then)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-memory", action="store_true", help="skip peak-memory measurement (saves subprocesses)")
    p.add_argument("--max-memory", type=float, default=8.0, metavar="GIB",
                   help="skip cases whose materialized attention is estimated above this (default 8)")
    p.add_argument("--out", type=Path, default=None, help="write results.json and the plot here")
    return p


def options(args: argparse.Namespace) -> object:
    """The run's Options from parsed arguments (imports torch)."""
    import torch

    from benchmarks.presets import SWEEP_LENGTHS, select_sizes
    from benchmarks.runner import Options
    from benchmarks.workload import implementations
    from reference.targets.contract import DEFAULT_TARGET, load_target

    presets = args.preset if args.preset is not None else ([] if args.size else ["tiny"])
    seq_lens = list(SWEEP_LENGTHS) if args.sweep else args.seq_len
    targets = ([] if args.no_handmade else [DEFAULT_TARGET]) + args.impl
    for spec in targets:
        load_target(spec)  # fail now, with the contract's message, rather than mid-run
    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    return Options(
        sizes=select_sizes(presets, args.size, seq_lens, args.batch),
        impls=implementations(targets, args.compile), devices=devices, dtypes=args.dtype, modes=args.modes,
        paddings=args.padding, threads=args.threads, clock=args.clock, rounds=args.rounds,
        min_run_time=args.min_run_time,
        dropout=args.dropout, batch_first=not args.seq_first, seed=args.seed, measure_memory=not args.no_memory,
        max_memory_bytes=int(args.max_memory * 2**30),
    )


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, run, print the table and the ratio line, write --out; 0 on success, 2 on bad arguments."""
    argv = sys.argv[1:] if argv is None else list(argv)
    p = parser()
    args = p.parse_args(argv)
    if args.threads < 1 or args.rounds < 1 or args.min_run_time <= 0:
        p.error("--threads and --rounds must be at least 1 and --min-run-time positive")
    if args.clock == "cpu" and (args.threads != 1 or any(d.startswith("cuda") for d in args.device or [])):
        p.error("--clock cpu measures one CPU thread: use it with --threads 1 and --device cpu")
    try:
        opts = options(args)
    except ValueError as exc:
        p.error(str(exc))

    from benchmarks.plot import plot
    from benchmarks.report import header, print_report, write_json
    from benchmarks.runner import run

    print(f"benchmarking {len(opts.impls)} implementations ({', '.join(i.name for i in opts.impls)}) on "
          f"{len(opts.sizes)} sizes x {', '.join(opts.paddings)} padding x {', '.join(opts.modes)} x "
          f"{', '.join(opts.dtypes)} x {', '.join(opts.devices)}, {opts.rounds} rounds; progress on stderr", flush=True)
    results = run(opts)
    print_report(opts, results)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        write_json(args.out / "results.json", opts, results, argv)
        written = [args.out / "results.json"]
        for device, dtype in results.measurements:
            group = [r for r in results.records if r["device"] == device and r["dtype"] == dtype]
            png = plot(group, args.out / f"time_memory_{device.replace(':', '')}_{dtype}.png",
                       f"{header(device, dtype, opts.threads)}")
            written += [png] if png is not None else []
        missing = results.measurements and len(written) == 1  # something to plot, but no matplotlib
        print("wrote " + ", ".join(str(w) for w in written) + (" (no plot: pip install matplotlib)" if missing else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
