"""Suite-wide configuration: hypothesis profiles, the target under test, devices and the parity report.

Options:
  --impl MODULE:OBJECT      the implementation under test (default reference.targets:handmade); tests marked
                            ``handmade`` (component level) are skipped under any other target
  --parity-report PATH      write a JSON report at the end: one record per test (nodeid, outcome, property,
                            falsifying example), one per judged comparison, and every not-supported config
  --parity-device WHICH     cpu, cuda or all (default): which ``device`` parametrizations run

Profiles (``--hypothesis-profile``): ``ci`` (deterministic, used by .ci/run), ``dev`` (the default),
``thorough`` (10x ci's examples). Tests weight their example counts with ``helpers.examples(weight)``, a
multiple of the profile's max_examples, so a profile change scales every test alike.

Records travel through ``report.user_properties`` (the standard report hooks), so the report is complete
under pytest-xdist and no state is shared between tests.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

from reference import assertions as helpers
from reference.targets import DEFAULT_TARGET, Target, load_target

CI_EXAMPLES = 20
settings.register_profile(
    "ci", derandomize=True, deadline=None, print_blob=True, max_examples=CI_EXAMPLES,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", deadline=None, print_blob=True, max_examples=CI_EXAMPLES)
settings.register_profile(
    "thorough", deadline=None, print_blob=True, max_examples=10 * CI_EXAMPLES,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

PARITY_KEY = pytest.StashKey[list]()
MARKERS = (
    "edge: path-dependent behaviour of the built-in (fast path, nested tensors, fully masked rows)",
    "handmade: a component-level test of handmade itself; skipped under a non-default --impl",
    "cuda: needs a CUDA device",
    "slow: long-running; excluded from the default run",
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("parity", "transformer-parity equivalence suite")
    group.addoption("--impl", default=DEFAULT_TARGET, metavar="MODULE:OBJECT",
                    help=f"the Transformer implementation under test (default {DEFAULT_TARGET})")
    group.addoption("--parity-report", default=None, metavar="PATH",
                    help="write a JSON report of tests, verdicts and not-supported configurations to PATH")
    group.addoption("--parity-device", default="all", choices=("cpu", "cuda", "all"),
                    help="run the device parametrizations for cpu, cuda or all (default)")


def pytest_configure(config: pytest.Config) -> None:
    for line in MARKERS:  # also when run from an installed copy, away from pyproject.toml
        config.addinivalue_line("markers", line)
    for message in ("enable_nested_tensor is True", "The PyTorch API of nested tensors is in prototype stage",
                    "Support for mismatched"):
        config.addinivalue_line("filterwarnings", f"ignore:{message}:UserWarning")
    try:
        load_target(config.getoption("--impl"))
    except ValueError as exc:
        raise pytest.UsageError(f"--impl: {exc}") from exc
    if not hasattr(config, "workerinput"):  # the controller (or a plain run) collects the report
        config.pluginmanager.register(ParityReport(config), "parity-report")


def is_default_impl(config: pytest.Config) -> bool:
    return config.getoption("--impl") == DEFAULT_TARGET


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    spec = config.getoption("--impl")
    wanted = config.getoption("--parity-device")
    deselected, kept = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        device = callspec.params.get("device") if callspec is not None else None
        if wanted != "all" and device is not None and device != wanted:
            deselected.append(item)
            continue
        if not is_default_impl(config) and item.get_closest_marker("handmade") is not None:
            item.add_marker(pytest.mark.skip(
                reason=f"component-level test of handmade; --impl {spec} is checked by the whole-model tests"))
        kept.append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


@pytest.fixture(scope="session")
def target(pytestconfig: pytest.Config) -> Target:
    """The implementation under test (``--impl``), behind the adapter interface of reference.targets."""
    return load_target(pytestconfig.getoption("--impl"))


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
    with helpers.recording() as records:
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
    report.user_properties.append(("parity", {
        "property": getattr(item, "originalname", item.name),
        "falsifying_example": match.group(0).strip()[:4000] if match else None,
        "message": message[:4000],
        "records": list(item.stash.get(PARITY_KEY, [])),
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
            if name != "parity":
                continue
            test["property"] = value["property"]
            test["falsifying_example"] = value["falsifying_example"] or test["falsifying_example"]
            test["message"] = value["message"] or test["message"]
            self.records += [{"nodeid": report.nodeid, **record} for record in value["records"]]

    def summary(self) -> dict:
        """The parity report: tests, verdict records, not-supported configurations."""
        return {
            "impl": self.config.getoption("--impl"),
            "profile": settings.get_current_profile_name(),
            "torch": torch.__version__,
            "tests": list(self.tests.values()),
            "verdicts": [r for r in self.records if r["kind"] == "verdict"],
            "not_supported": [r for r in self.records if r["kind"] == "not_supported"],
        }

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        report = self.summary()
        path = self.config.getoption("--parity-report")
        if path:
            Path(path).write_text(json.dumps(report, indent=1, default=str))
        if nothing_supported(report):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter) -> None:
        report = self.summary()
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
