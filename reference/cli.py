"""The ``parity`` command: check, diagnose, zoo and bench, each in its own module (imported on use)."""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "check": ("reference.check", "run the equivalence suite on a target and print the summary table"),
    "diagnose": ("reference.diagnose.pipeline", "explain where and why a target differs from nn.Transformer"),
    "zoo": ("reference.studies.zoo_hunt",
            "hunt every bug-zoo entry and say which catalogue key diagnosis names for each"),
    "bench": ("benchmarks.__main__", "time and measure both implementations (same as python -m benchmarks)"),
}


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``parity COMMAND ...`` to ``COMMAND``'s module ``main(argv)``."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="parity", description=__doc__)
    summary = "; ".join(f"{name}: {about}" for name, (_, about) in COMMANDS.items())
    parser.add_argument("command", choices=sorted(COMMANDS), help=summary)
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    args = parser.parse_args(argv[:1])
    module = importlib.import_module(COMMANDS[args.command][0])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
