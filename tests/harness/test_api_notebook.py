"""The notebook API (reference/api.py) and `--as LEVEL`: a target object or spec in, a report that prints out."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from torch import nn

from reference import api
from reference.diagnose.plot import available as plot_available


class Scaled(nn.Transformer):
    """The built-in with its output scaled by 1.01: a plain class defined where no import can find it."""

    def forward(self, *args, **kwargs):
        return 1.01 * super().forward(*args, **kwargs)


def test_check_takes_handmade_at_one_level_and_its_report_prints_the_table() -> None:
    report = api.check("reference.targets.contract:handmade", level="layer_norm", profile="ci", device="cpu")
    text = repr(report)
    assert report.passed, text
    assert "layer_norm" in text and "float64" in text and "tests: 4 passed" in text
    assert "attention" not in text and "transformer" not in text  # only the level asked for ran


@pytest.mark.slow
def test_check_takes_an_unimportable_class_and_names_what_failed() -> None:
    report = api.check(Scaled, profile="ci", device="cpu", exitfirst=True, pytest_args=("-k", "float64"))
    assert not report.passed
    assert report.failures and "transformer [float64, cpu]" in report.failures[0]["message"]
    assert "Scaled" in report.report["impl"]


def test_diagnose_takes_an_unimportable_class_and_prints_its_verdict() -> None:
    found = api.diagnose(Scaled, families=("default",))
    assert found.verdict == "divergent"
    assert "DIVERGENT" in repr(found)


def test_an_unknown_level_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    from reference.check import main

    with pytest.raises(SystemExit):
        main(["--as", "gpt"])
    assert "invalid choice: 'gpt'" in capsys.readouterr().err


def test_diagnose_takes_a_level_like_the_command() -> None:
    from examples.learner_attention import MergeWithoutTranspose

    found = api.diagnose(MergeWithoutTranspose, level="attention", keep_masks=True, families=("default",))
    assert found.verdict == "divergent"
    assert [c.key for c in found.diagnosis.causes] == ["head_merge_without_transpose"]
    assert "--as attention" in repr(found)
    html = found._repr_html_()
    assert html.index("DIVERGENT:") < html.index("<table")
    assert "transpose(1, 2) to (N, L, H, D) before reshape(N, L, E)" in html  # the fix, in its batch-first layout
    assert html.index("<table") < html.index("Worst example")  # with the check that shrinks it:
    assert "api.check(MergeWithoutTranspose, level=&#x27;attention&#x27;, keep_masks=True, profile=" in html
    if plot_available():
        assert found._repr_png_().startswith(PNG_SIGNATURE) and "data:image/png;base64," in html
        assert "the module itself" in found.plot()._suptitle.get_text()
    with pytest.raises(ValueError, match="level must be one of"):
        api.diagnose(MergeWithoutTranspose, level="gpt")


# Notebooks: quiet calls, HTML reports, the picture of where it differs (issue 20).

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_text(data: bytes) -> dict[str, str]:
    """A PNG's tEXt chunks (keyword -> text), read from its bytes."""
    assert data.startswith(PNG_SIGNATURE), data[:8]
    found, at = {}, len(PNG_SIGNATURE)
    while at < len(data):
        length, kind = int.from_bytes(data[at:at + 4], "big"), data[at + 4:at + 8]
        if kind == b"tEXt":
            key, _, text = data[at + 8:at + 8 + length].partition(b"\0")
            found[key.decode("latin-1")] = text.decode("latin-1")
        at += 12 + length
    return found


def test_check_prints_nothing_keeps_pytests_output_and_shows_the_verdict_first(
        capsys: pytest.CaptureFixture[str]) -> None:
    report = api.check("reference.targets.contract:handmade", level="layer_norm", profile="ci", device="cpu")
    printed = capsys.readouterr()
    assert (printed.out, printed.err) == ("", "")
    assert "4 passed" in report.log  # pytest's own summary line, kept
    html = report._repr_html_()
    assert html.index("PASSED:") < html.index("<table") and "layer_norm" in html


def test_a_check_that_did_not_run_says_why_though_it_printed_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    report = api.check("examples.no_such_module:X", level="attention", profile="ci", device="cpu")
    assert capsys.readouterr().out == "" and not report.passed
    assert "cannot import target 'examples.no_such_module:X'" in str(report)
    assert "DID NOT RUN:" in report._repr_html_() and "examples.no_such_module" in report._repr_html_()


@pytest.mark.slow
def test_a_failed_checks_html_gives_the_worst_failure_and_a_call_that_reruns_it(
        capsys: pytest.CaptureFixture[str]) -> None:
    from examples.learner_attention import MergeWithoutTranspose

    options = dict(level="attention", keep_masks=True, profile="ci", device="cpu", exitfirst=True)
    report = api.check(MergeWithoutTranspose, **options)  # type: ignore[arg-type]
    assert capsys.readouterr().out == ""
    html = report._repr_html_()
    assert html.index("FAILED:") < html.index("<table") < html.index("Worst failure")
    worst = report.failures[0]["nodeid"].rsplit("::", 1)[-1]
    assert report.rerun.replace("{k}", worst) in html.replace("&#x27;", "'")
    assert report.rerun.startswith("api.check(MergeWithoutTranspose, level='attention', keep_masks=True, ")
    assert "api.diagnose(MergeWithoutTranspose, level=&#x27;attention&#x27;, keep_masks=True)" in html
    again = api.check(MergeWithoutTranspose, **options, pytest_args=("-k", worst))  # type: ignore[arg-type]
    assert [t["nodeid"].rsplit("::", 1)[-1] for t in again.report["tests"]] == [worst]  # what the rerun line runs
    assert not again.passed


def _diagnose_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    from reference.diagnose.pipeline import main

    status = main(list(args))
    printed = capsys.readouterr()
    return status, printed.out, printed.err


@pytest.mark.parametrize("spec, options", [
    ("examples.learner_attention:MergeWithoutTranspose", ("--as", "attention", "--keep-masks")),
    ("examples.einsum_transformer:bugs.pre_norm", ("--family", "default")),
])
def test_diagnose_plot_writes_a_png_naming_the_first_diverging_submodule(
        spec: str, options: tuple[str, ...], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib", reason="the plot extra is not installed")
    out = tmp_path / "out.png"
    status, printed, _ = _diagnose_cli(capsys, spec, *options, "--no-reproducer", "--json", "--plot", str(out))
    assert status == 1 and out.read_bytes().startswith(PNG_SIGNATURE)
    first = json.loads(printed)["first_diverging"]["isolated"]
    assert first is not None
    title = png_text(out.read_bytes())["Title"]
    named = first["name"] or "the module itself"
    assert title.startswith("DIVERGENT") and f"first diverging submodule {named}" in title
    if first["target_module"] != first["name"]:
        assert f"the target's {first['target_module']}" in title


def test_without_matplotlib_diagnose_still_works_and_says_how_to_get_the_picture(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from examples.learner_attention import MergeWithoutTranspose

    spec = ["examples.learner_attention:MergeWithoutTranspose", "--as", "attention", "--keep-masks",
            "--family", "default", "--no-reproducer"]
    _, text, _ = _diagnose_cli(capsys, *spec)
    for name in ("matplotlib", "matplotlib.figure"):
        monkeypatch.setitem(sys.modules, name, None)  # import matplotlib now raises ImportError
    out = tmp_path / "out.png"
    status, without, err = _diagnose_cli(capsys, *spec, "--plot", str(out))
    assert status == 1 and without == text and not out.exists()  # the text report is unchanged
    assert 'pip install "transformer-parity[plot]"' in err
    found = api.diagnose(MergeWithoutTranspose, level="attention", keep_masks=True, families=("default",))
    assert found.verdict == "divergent" and found._repr_png_() is None
    assert 'pip install &quot;transformer-parity[plot]&quot;' in found._repr_html_()
    with pytest.raises(ImportError, match=r'pip install "transformer-parity\[plot\]"'):
        found.plot()
