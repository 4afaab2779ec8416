"""The Python API, for notebooks: ``check`` and ``diagnose`` take a target object or spec and return reports.

    >>> from reference import api
    >>> report = api.check(MyTransformer, profile="ci")   # a class, an adapter object, or "module:Object"
    >>> report                                            # the summary table, as `parity check` prints it
    >>> report.passed

A target object defined in a notebook has no importable name, so it is registered here under one
(``reference.api:registered.<name>``) for the run; everything else is what ``parity check`` does.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from reference.check import run_suite, table

registered = SimpleNamespace()  # targets passed as objects, by the names given to them for a run
_names = itertools.count()


def spec_of(target: Any) -> str:
    """``target``'s MODULE:OBJECT spec: a string as given; an object registered under a fresh name."""
    if isinstance(target, str):
        return target
    name = f"target_{next(_names)}_{getattr(target, '__name__', type(target).__name__)}"
    setattr(registered, name, target)
    return f"{__name__}:registered.{name}"


@dataclass
class CheckReport:
    """What ``check`` found: pytest's exit status and the parity report; its repr is the summary table."""

    status: int
    report: dict = field(repr=False)

    @property
    def passed(self) -> bool:
        """True when every property passed and something was checked."""
        return self.status == 0 and bool(self.report.get("verdicts"))

    @property
    def failures(self) -> list[dict]:
        """The failed tests, each with its message and falsifying example."""
        return [t for t in self.report.get("tests", []) if t["outcome"] in ("failed", "error")]

    def __str__(self) -> str:
        if not self.report:
            return f"parity check: the suite did not run (pytest exit status {self.status})"
        return "\n".join(table(self.report))

    __repr__ = __str__


def check(target: Any, *, level: str | None = None, profile: str = "dev", device: str = "all",
          exitfirst: bool = False, keep_masks: bool = False, weight_map: str | None = None,
          pytest_args: tuple[str, ...] = (),
          report: Path | str | None = None) -> CheckReport:
    """Run the equivalence suite on ``target`` at ``level``, as ``parity check`` does; return the report."""
    status, found = run_suite(spec_of(target), level=level, profile=profile, device=device, exitfirst=exitfirst,
                              keep_masks=keep_masks, weight_map=weight_map, extra=tuple(pytest_args),
                              report_path=Path(report) if report else None)
    return CheckReport(status, found)


@dataclass
class DiagnoseReport:
    """What ``diagnose`` found (``diagnosis``: reference.diagnose.report.Diagnosis); its repr is the text report."""

    diagnosis: Any = field(repr=False)

    @property
    def verdict(self) -> str:
        return str(self.diagnosis.verdict)

    def __str__(self) -> str:
        from reference.diagnose.report import render

        return render(self.diagnosis)

    __repr__ = __str__


def diagnose(target: Any, *, level: str = "transformer", keep_masks: bool = False, weight_map: str | None = None,
             device: str = "cpu", out_dir: Path | str | None = None, reproduce: bool = False,
             families: tuple[str, ...] | None = None) -> DiagnoseReport:
    """Diagnose ``target`` at ``level`` as ``parity diagnose --as LEVEL`` does (no reproducer script unless
    asked); return the report."""
    import dataclasses

    from reference.diagnose.pipeline import diagnose as run
    from reference.levels.registry import level as level_entry
    from reference.targets.contract import load_target

    level_entry(level)  # a clear error naming the levels for a wrong one
    loaded = dataclasses.replace(load_target(spec_of(target)), keep_masks=keep_masks, weight_map=weight_map)
    return DiagnoseReport(run(loaded, device=device, out_dir=out_dir, family_names=families, reproduce=reproduce,
                              level=level))
