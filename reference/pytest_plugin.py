"""The pytest plugin (a ``pytest11`` entry point): options, profiles, fixtures and the parity report.

Installed with the package, so that ``pytest --impl MODULE:OBJECT`` works from any folder: when no test
paths are given (and no ``testpaths`` configured), it runs the installed suite (``equivalence_tests``);
``pytest --pyargs equivalence_tests --impl MODULE:OBJECT`` says the same explicitly.

Options:
  --impl MODULE:OBJECT      the implementation under test (default reference.targets.contract:handmade); properties of
                            a level the target does not provide (``@pytest.mark.level``) are deselected
  --as LEVEL                the level the target implements (a registry level; default: the whole model)
  --parity-report PATH      write a JSON report at the end: one record per test (nodeid, outcome, property,
                            falsifying example), one per judged comparison, and every not-supported config
  --parity-device WHICH     cpu, cuda or all (default): which ``device`` parametrizations run

Profiles (``--hypothesis-profile``): ``ci`` (deterministic, used by .ci/run), ``dev`` (the default for runs of
the suite), ``thorough`` (10x ci's examples), ``kill`` (ci without shrinking, for bug-planting runs). Tests
weight their example counts with ``examples(weight)`` (reference/verdict/assertions.py), a multiple of the profile's
max_examples, so a profile change scales every test.

A target the harness cannot resolve (construct, call, pair with the built-in) runs no test: the run fails with
what could not be resolved and why, once, instead of every drawn case failing alike.

Markers and warning filters are registered here, in one place, so that they hold in an installed copy too.
Records travel through ``report.user_properties`` (the standard report hooks), so the report is complete
under pytest-xdist and no state is shared between tests.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, Phase, settings

import reference.verdict.assertions as assertions
from reference.inference.prepare import levels_of, unresolved
from reference.levels.registry import LEVELS
from reference.targets.contract import DEFAULT_TARGET, Target, load_target

CI_EXAMPLES = assertions.CI_EXAMPLES
# ci: no explain phase (it re-runs a failing case many times over to list the lines only failures ran, which
# for a check are the harness's own lines: 80% of a failing check's time, measured on a buggy encoder layer)
settings.register_profile(
    "ci", derandomize=True, deadline=None, print_blob=True, max_examples=CI_EXAMPLES,
    suppress_health_check=[HealthCheck.too_slow],
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
)
settings.register_profile("dev", deadline=None, print_blob=True, max_examples=CI_EXAMPLES)
settings.register_profile(
    "thorough", deadline=None, print_blob=True, max_examples=10 * CI_EXAMPLES,
    suppress_health_check=[HealthCheck.too_slow],
)
# ci without shrinking: for runs that only ask whether a planted bug is caught (a kill needs no minimal example)
settings.register_profile("kill", parent=settings.get_profile("ci"), phases=[Phase.explicit, Phase.generate])

PARITY_KEY = pytest.StashKey[list[dict]]()
UNRESOLVED_KEY = pytest.StashKey[list[tuple[str, str]]]()
MARKERS = (
    "level(name): the registry level a property checks; deselected when the target does not provide it",
    "edge: path-dependent behaviour of the built-in (fast path, nested tensors, fully masked rows)",
    "cuda: needs a CUDA device",
    "slow: takes more than ~10 s on 2 shared cores (a Jupyter kernel, a long search); deselect with -m 'not slow'",
)
IGNORED_WARNINGS = (  # torch's noise about paths the harness switches off on purpose
    "enable_nested_tensor is True", "The PyTorch API of nested tensors is in prototype stage", "Support for mismatched",
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("parity", "transformer-parity equivalence suite")
    group.addoption("--impl", default=None, metavar="MODULE:OBJECT",
                    help=f"the Transformer implementation under test (default {DEFAULT_TARGET})")
    group.addoption("--as", dest="parity_level", default=None, choices=LEVELS, metavar="LEVEL",
                    help=f"the level the target implements, one of {', '.join(LEVELS)} (default: the whole model; "
                         "handmade provides every level); only that level's properties run")
    group.addoption("--keep-masks", dest="keep_masks", action="store_true",
                    help="the target's bool masks mean True = may attend (torch's mean True = blocked); never guessed")
    group.addoption("--weight-map", dest="weight_map", default=None, metavar="FILE",
                    help="override the inferred weight map (JSON, TOML or .py): {target param: 'built-in name[k/n]'}")
    group.addoption("--parity-report", default=None, metavar="PATH",
                    help="write a JSON report of tests, verdicts and not-supported configurations to PATH")
    group.addoption("--parity-device", default="all", choices=("cpu", "cuda", "all"),
                    help="run the device parametrizations for cpu, cuda or all (default)")


def impl(config: pytest.Config) -> str:
    """The ``--impl`` target spec, or the default target."""
    return config.getoption("--impl") or DEFAULT_TARGET


SUITE = "equivalence_tests"  # the installed suite, found by name: the library never imports it


def suite_dir() -> str:
    """The folder of the installed suite (the package ``equivalence_tests``), without importing it."""
    spec = importlib.util.find_spec(SUITE)
    if spec is None or not spec.submodule_search_locations:
        raise pytest.UsageError(f"the suite package {SUITE!r} is not installed: pip install transformer-parity")
    return str(next(iter(spec.submodule_search_locations)))


def pytest_configure(config: pytest.Config) -> None:
    for line in MARKERS:
        config.addinivalue_line("markers", line)
    for message in IGNORED_WARNINGS:
        config.addinivalue_line("filterwarnings", f"ignore:{message}:UserWarning")
    try:
        load_target(impl(config))
    except ValueError as exc:
        raise pytest.UsageError(f"--impl: {exc}") from exc
    given_impl = config.getoption("--impl") is not None
    if given_impl and config.args_source == pytest.Config.ArgsSource.INVOCATION_DIR:
        config.args = [suite_dir()]  # `pytest --impl X` from a user's folder runs the installed suite
    runs_suite = given_impl or any(SUITE in str(arg) for arg in config.args)
    if runs_suite and config.getoption("hypothesis_profile", None) is None and "HYPOTHESIS_PROFILE" not in os.environ:
        settings.load_profile("dev")  # only for runs of the suite: other hypothesis tests keep their own defaults
    elif "HYPOTHESIS_PROFILE" in os.environ and config.getoption("hypothesis_profile", None) is None:
        settings.load_profile(os.environ["HYPOTHESIS_PROFILE"])
    if hasattr(config, "workerinput"):
        share_cores(int(config.workerinput["workercount"]))
    else:  # the controller (or a plain run) collects the report
        config.pluginmanager.register(ParityReport(config), "parity-report")


def share_cores(workers: int) -> None:
    """One xdist worker of ``workers``: take its share of the CPU threads, not torch's default of all of them.

    The models are tiny, so workers that each run as many threads as there are cores only contend: measured on
    2 cores with ``-n 2``, 73 tests of the harness took 179 s with torch's default threads and 113 s with one
    thread per worker. The processes a test starts (a subprocess, a Jupyter kernel) take the same share."""
    share = max(1, (os.cpu_count() or 1) // max(1, workers))
    torch.set_num_threads(share)
    os.environ["OMP_NUM_THREADS"] = str(share)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the devices not asked for and the levels the target does not provide."""
    wanted = config.getoption("--parity-device")
    level = config.getoption("parity_level")
    provided = levels_of(load_target(impl(config)), level)
    deselected, kept = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        device = callspec.params.get("device") if callspec is not None else None
        level = item.get_closest_marker("level")
        if (wanted != "all" and device is not None and device != wanted) or (
                level is not None and level.args[0] not in provided):
            deselected.append(item)
        else:
            kept.append(item)
    failed = unresolved(_target(config), config.getoption("parity_level")) if kept else []
    if failed:  # nothing could run: every property would fail the same way, drawn case after drawn case
        config.stash[UNRESOLVED_KEY] = failed
        deselected, kept = [*deselected, *kept], []
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


def _target(config: pytest.Config) -> Target:
    return dataclasses.replace(load_target(impl(config)), keep_masks=config.getoption("keep_masks"),
                               weight_map=config.getoption("weight_map"))


@pytest.fixture(scope="session")
def target(pytestconfig: pytest.Config) -> Target:
    """The implementation under test (``--impl``), behind the adapter interface of reference.targets.contract."""
    return _target(pytestconfig)


@pytest.fixture(
    scope="session",
    params=["cpu", pytest.param("cuda", marks=[
        pytest.mark.cuda,
        pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available (torch.cuda.is_available() "
                           f"is False; torch {torch.__version__})"),
    ])],
)
def device(request: pytest.FixtureRequest) -> str:
    """Each device the suite runs on: "cpu", and "cuda" (skipped with the reason when absent)."""
    return request.param


@pytest.fixture(autouse=True)
def _parity_records(request: pytest.FixtureRequest):
    """Give each test a fresh record list (verdicts, not-supported configs) for the parity report."""
    with assertions.recording() as records:
        request.node.stash[PARITY_KEY] = records
        yield


_FALSIFYING = re.compile(r"^(?:Falsifying|Failing) (?:explicit )?(?:example|test case):.*", re.DOTALL | re.MULTILINE)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Attach this test's parity records (and its falsifying example) to its report, for the controller."""
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" and not (report.when == "setup" and report.outcome != "passed"):
        return
    message = ""
    if report.failed:
        crash = getattr(report.longrepr, "reprcrash", None)
        message = crash.message if crash is not None else str(report.longrepr)
    match = _FALSIFYING.search(message) or _FALSIFYING.search(getattr(item, "hypothesis_report_information", ""))
    none: list[dict] = []
    records = item.stash.get(PARITY_KEY, none)
    report.user_properties.append(("parity", {
        "property": getattr(item, "originalname", item.name),
        "falsifying_example": match.group(0).strip()[:4000] if match else None,
        "message": message[:4000],
        "records": [*records],
    }))


class ParityReport:
    """Controller-side collector: builds the parity report from the test reports (works under xdist)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.tests: dict[str, dict] = {}
        self.records: list[dict] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        test = self.tests.setdefault(report.nodeid, {
            "nodeid": report.nodeid, "outcome": "passed", "property": None, "falsifying_example": None,
            "message": "",
        })
        if report.failed:
            test["outcome"] = "failed" if report.when == "call" else "error"
        elif report.skipped and test["outcome"] == "passed":
            test["outcome"] = "skipped"
            if isinstance(report.longrepr, tuple):
                test["message"] = str(report.longrepr[2])
        for name, value in report.user_properties:
            if name != "parity" or not isinstance(value, dict):
                continue
            test["property"] = value["property"]
            test["falsifying_example"] = value["falsifying_example"] or test["falsifying_example"]
            test["message"] = value["message"] or test["message"]
            self.records += [{"nodeid": report.nodeid, **record} for record in value["records"]]

    def summary(self) -> dict:
        """The parity report: tests, verdict records, not-supported configurations."""
        return {
            "impl": impl(self.config),
            "profile": settings.get_current_profile_name(),
            "torch": torch.__version__,
            "tests": list(self.tests.values()),
            "verdicts": [r for r in self.records if r["kind"] == "verdict"],
            "not_supported": [r for r in self.records if r["kind"] == "not_supported"],
            "notes": sorted({r["text"] for r in self.records if r["kind"] == "note"}),
            "unresolved": [{"level": level, "reason": why} for level, why in self._unresolved()],
        }

    def _unresolved(self) -> list[tuple[str, str]]:
        """Where the target could not be resolved (found at collection; under xdist, again here when nothing ran)."""
        if UNRESOLVED_KEY in self.config.stash:
            return self.config.stash[UNRESOLVED_KEY]
        if self.records or any(t["outcome"] != "skipped" for t in self.tests.values()):
            return []
        self.config.stash[UNRESOLVED_KEY] = unresolved(_target(self.config), self.config.getoption("parity_level"))
        return self.config.stash[UNRESOLVED_KEY]

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        report = self.summary()
        path = self.config.getoption("--parity-report")
        if path:
            Path(path).write_text(json.dumps(report, indent=1, default=str))
        if nothing_supported(report) or report["unresolved"]:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter) -> None:
        report = self.summary()
        for item in report["unresolved"]:
            terminalreporter.section("parity: the target could not be resolved; nothing was checked", red=True)
            terminalreporter.write_line(f"{report['impl']} at {item['level']}:", red=True)
            for line in item["reason"].splitlines():
                terminalreporter.write_line(f"  {line}")
        declined = report["not_supported"]
        if declined:
            terminalreporter.section("parity: configurations the target does not support")
            terminalreporter.write_line(
                f"{len(declined)} drawn configurations were not supported by {report['impl']} (not failures)")
            for reason in sorted({r["reason"] for r in declined})[:10]:
                terminalreporter.write_line(f"  {reason[:200]}")
        if nothing_supported(report):
            terminalreporter.write_line(
                f"FAILED: {report['impl']} supported none of the drawn configurations; nothing was checked",
                red=True)


def nothing_supported(report: dict) -> bool:
    """A run where the target declined configurations and was never judged on one: a failure."""
    return bool(report["not_supported"]) and not report["verdicts"]
