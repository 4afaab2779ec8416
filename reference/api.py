"""The Python API, for notebooks: ``check`` and ``diagnose`` take a target object or spec and return reports.

    >>> from reference import api
    >>> report = api.check(MyTransformer, profile="ci")   # a class, an adapter object, or "module:Object"
    >>> report          # in Jupyter: HTML, the verdict first; elsewhere the summary table `parity check` prints
    >>> report.passed
    >>> found = api.diagnose(MyAttention, level="attention")
    >>> found           # in Jupyter: HTML with the picture of where it differs (report.plot(): the Figure)

Both run quietly: pytest's output (and anything else printed while they work) is kept as ``report.log``.

A target object defined in a notebook has no importable name, so it is registered here under one
(``reference.api:registered.<name>``) for the run; everything else is what ``parity check`` does.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from reference.check import captured, run_suite, table

if TYPE_CHECKING:
    from matplotlib.figure import Figure

registered = SimpleNamespace()  # targets passed as objects, by the names given to them for a run
_names = itertools.count()


def spec_of(target: Any) -> str:
    """``target``'s MODULE:OBJECT spec: a string as given; an object registered under a fresh name."""
    if isinstance(target, str):
        return target
    name = f"target_{next(_names)}_{getattr(target, '__name__', type(target).__name__)}"
    setattr(registered, name, target)
    return f"{__name__}:registered.{name}"


def _name(target: Any) -> str:
    return target if isinstance(target, str) else getattr(target, "__name__", type(target).__name__)


def _calls(target: Any, level: str | None, profile: str, device: str, keep_masks: bool,
           weight_map: str | None) -> tuple[str, str]:
    """(what reruns one test, ``{k}`` standing for its name; what diagnoses the target): for a spec the
    commands, for a notebook object the calls."""
    if isinstance(target, str):
        options = [*([f"--as {level}"] if level else []), *(["--keep-masks"] if keep_masks else []),
                   *([f"--weight-map {weight_map}"] if weight_map else [])]
        return (" ".join(["parity check", target, *options, f"--profile {profile} --device {device} -- -k '{{k}}'"]),
                " ".join(["parity diagnose", target, *options]))
    options = [*([f"level={level!r}"] if level else []), *(["keep_masks=True"] if keep_masks else []),
               *([f"weight_map={weight_map!r}"] if weight_map else [])]
    return (f"api.check({', '.join([_name(target), *options, f'profile={profile!r}', f'device={device!r}'])}, "
            "pytest_args=('-k', '{k}'))", f"api.diagnose({', '.join([_name(target), *options])})")


def _check_call(target: Any, level: str, keep_masks: bool, weight_map: str | None) -> str:
    """The check that prints hypothesis' shrunk failing case for ``target`` (a command for a spec)."""
    rerun, _ = _calls(target, level, "ci", "cpu", keep_masks, weight_map)
    return rerun.split(" -- -k")[0] if isinstance(target, str) else rerun.split(", pytest_args")[0] + ")"


@dataclass(kw_only=True)
class CheckReport:
    """What ``check`` found: pytest's exit status and the parity report; its repr is the summary table, and in
    Jupyter it shows as HTML (the verdict first). ``log``: pytest's own output, kept, not printed."""

    status: int
    report: dict = field(repr=False)
    log: str = field(default="", repr=False)
    name: str = field(default="", repr=False)  # the target, as the verdict line names it
    rerun: str = field(default="", repr=False)  # reruns one test, ``{k}`` standing for its name
    diagnose_call: str = field(default="", repr=False)  # what diagnoses the target

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
            return f"parity check: the suite did not run (pytest exit status {self.status})" + self.why_not_run
        return "\n".join(table(self.report))

    @property
    def why_not_run(self) -> str:
        """pytest's error lines when the suite did not run (a bad target, a bad option), one per line."""
        errors = [line for line in self.log.splitlines() if line.startswith(("ERROR", "E "))][:5]
        return "".join(f"\n{line}" for line in errors)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        from reference.report_html import check_html

        return check_html(self.report, self.status, self.name or str(self.report.get("impl", "")), self.rerun,
                          self.diagnose_call, self.why_not_run.strip())


def check(target: Any, *, level: str | None = None, profile: str = "dev", device: str = "all",
          exitfirst: bool = False, keep_masks: bool = False, weight_map: str | None = None,
          pytest_args: tuple[str, ...] = (),
          report: Path | str | None = None) -> CheckReport:
    """Run the equivalence suite on ``target`` at ``level``, as ``parity check`` does; return the report.
    Nothing is printed: pytest's output is kept as the report's ``log``."""
    spec = spec_of(target)
    with captured() as log:
        status, found = run_suite(spec, level=level, profile=profile, device=device, exitfirst=exitfirst,
                                  keep_masks=keep_masks, weight_map=weight_map, extra=tuple(pytest_args),
                                  report_path=Path(report) if report else None)
    rerun, diagnose_call = _calls(target, level, profile, device, keep_masks, weight_map)
    return CheckReport(status=status, report=found, log=log.getvalue(), name=_name(target), rerun=rerun,
                       diagnose_call=diagnose_call)


@dataclass(kw_only=True)
class DiagnoseReport:
    """What ``diagnose`` found (``diagnosis``: reference.diagnose.report.Diagnosis); its repr is the text report,
    in Jupyter HTML with the picture (``plot()``, needs matplotlib). ``log``: what ran printed, kept."""

    diagnosis: Any = field(repr=False)
    log: str = field(default="", repr=False)
    name: str = field(default="", repr=False)  # the target, as the HTML names it
    check_call: str = field(default="", repr=False)  # prints hypothesis' shrunk failing case
    _png: bytes | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def verdict(self) -> str:
        return str(self.diagnosis.verdict)

    def __str__(self) -> str:
        from reference.diagnose.text import render

        return render(self.diagnosis)

    __repr__ = __str__

    def plot(self) -> Figure:
        """The picture: the error per submodule in forward order against the tolerance, the first diverging one
        marked; a matplotlib Figure (raises ImportError saying how to install matplotlib without it)."""
        from reference.diagnose.plot import figure

        return figure(self.diagnosis)

    def _repr_png_(self) -> bytes | None:
        """The picture as PNG for Jupyter; None (no picture) without matplotlib or when nothing was localized."""
        from reference.diagnose.plot import available, png

        if self._png is None and self.diagnosis.localization and available():
            self._png = png(self.diagnosis)
        return self._png

    def _repr_html_(self) -> str:
        from reference.diagnose.plot import MISSING
        from reference.report_html import diagnosis_html

        return diagnosis_html(self.diagnosis, self._repr_png_(), MISSING, self.name, self.check_call)


def diagnose(target: Any, *, level: str = "transformer", keep_masks: bool = False, weight_map: str | None = None,
             device: str = "cpu", out_dir: Path | str | None = None, reproduce: bool = False,
             families: tuple[str, ...] | None = None) -> DiagnoseReport:
    """Diagnose ``target`` at ``level`` as ``parity diagnose --as LEVEL`` does (no reproducer script unless
    asked); return the report. Nothing is printed: what ran printed is kept as the report's ``log``."""
    import dataclasses

    from reference.diagnose.pipeline import diagnose as run
    from reference.levels.registry import level as level_entry
    from reference.targets.contract import load_target

    level_entry(level)  # a clear error naming the levels for a wrong one
    loaded = dataclasses.replace(load_target(spec_of(target)), keep_masks=keep_masks, weight_map=weight_map)
    with captured() as log:
        found = run(loaded, device=device, out_dir=out_dir, family_names=families, reproduce=reproduce, level=level)
    return DiagnoseReport(diagnosis=found, log=log.getvalue(), name=_name(target), check_call=_check_call(target,
                                                                                                          level,
                                                                                                          keep_masks,
                                                                                                          weight_map))
