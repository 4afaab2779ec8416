"""examples/learner_notebook.ipynb, executed as a learner would run it: a fresh Jupyter kernel (nbclient), the
repository's code imported from the repository root. The calls print nothing, the reports show as HTML with
the verdict first, the diagnosis draws its picture, and the verdicts are the right ones."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

nbformat = pytest.importorskip("nbformat", reason="the notebook extra is not installed: pip install -e '.[notebook]'")
nbclient = pytest.importorskip("nbclient", reason="the notebook extra is not installed: pip install -e '.[notebook]'")
pytest.importorskip("ipykernel", reason="the notebook extra is not installed: pip install -e '.[notebook]'")
pytest.importorskip("matplotlib", reason="the plot extra is not installed: pip install -e '.[plot]'")

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "examples" / "learner_notebook.ipynb"
MOST_STREAM_LINES = 3  # "at most a few lines" of printed output for an api call


@pytest.fixture(scope="module")
def cells() -> dict[str, Any]:
    """The notebook executed in a fresh kernel (cwd and PYTHONPATH: the repository root): its tagged code cells."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(ROOT)}})
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    client.execute(env={**os.environ, "PYTHONPATH": path})
    return {tag: cell for cell in nb.cells if cell.cell_type == "code"
            for tag in cell.get("metadata", {}).get("tags", [])}


def _stream_lines(cell: Any) -> list[str]:
    return [line for o in cell.outputs if o.output_type == "stream" for line in o.text.splitlines()]


def _data(cell: Any, mime: str) -> str:
    found = [o["data"][mime] for o in cell.outputs if mime in o.get("data", {})]
    assert found, f"no {mime} output in {[o.output_type for o in cell.outputs]}"
    return str(found[0])


@pytest.mark.slow
def test_the_api_calls_print_at_most_a_few_lines(cells: dict[str, Any]) -> None:
    for tag in ("check", "check-bug", "diagnose"):
        lines = _stream_lines(cells[tag])
        assert len(lines) <= MOST_STREAM_LINES, f"{tag}: {len(lines)} printed lines:\n" + "\n".join(lines[:20])
        assert not any("\x1b[" in line or "FAILURES" in line for line in lines), lines


@pytest.mark.slow
def test_the_reports_show_as_html_with_the_verdict_first(cells: dict[str, Any]) -> None:
    passed = _data(cells["check"], "text/html")
    failed = _data(cells["check-bug"], "text/html")
    diagnosed = _data(cells["diagnose"], "text/html")
    assert passed.index("PASSED:") < passed.index("<table"), passed[:400]
    assert failed.index("FAILED:") < failed.index("<table") < failed.index("Worst failure"), failed[:400]
    assert "api.check(Unscaled, level=&#x27;attention&#x27;" in failed  # the call that reruns the worst failure
    assert diagnosed.index("DIVERGENT:") < diagnosed.index("<table") < diagnosed.index("Worst example")
    assert "data:image/png;base64," in diagnosed  # the picture, inline


@pytest.mark.slow
def test_the_diagnosis_draws_a_png_and_the_verdicts_are_right(cells: dict[str, Any]) -> None:
    import base64

    png = base64.b64decode(_data(cells["diagnose"], "image/png"))
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    assert _data(cells["verdicts"], "text/plain") == "(True, False, 'divergent', ['scale_missing'])"
