"""`pytest --impl MODULE:OBJECT` from a user's own folder runs the installed suite (the pytest11 entry point)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

CORRECT = '''
from torch import nn


class Model(nn.Transformer):
    """A drop-in that is the built-in itself: it must pass."""
'''
WRONG = '''
import torch
from torch import nn


class Model(nn.Transformer):
    """The built-in with a final scale of 1.01 on its output: it must fail."""

    def forward(self, *args, **kwargs):
        return 1.01 * super().forward(*args, **kwargs)
'''


def run_from(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)  # only what is installed: nothing of this checkout's folder
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize(("source", "passes"), [(CORRECT, True), (WRONG, False)], ids=["correct", "wrong"])
def test_pytest_impl_runs_the_installed_suite_from_any_folder(tmp_path: Path, source: str, passes: bool) -> None:
    (tmp_path / "my_model.py").write_text(source)
    done = run_from(tmp_path, "--impl", "my_model:Model", "--hypothesis-profile=ci", "--parity-device=cpu",
                    "-k", "transformer_matches_torch and float64", "-q")
    assert "test_components.py" in done.stdout or "1 passed" in done.stdout, done.stdout[-2000:] + done.stderr[-2000:]
    assert (done.returncode == 0) is passes, done.stdout[-3000:] + done.stderr[-2000:]
    if not passes:
        assert "transformer [float64, cpu]" in done.stdout and "tensors differ from the float64 oracle" in done.stdout


@pytest.mark.slow
def test_pytest_impl_rejects_a_target_it_cannot_import(tmp_path: Path) -> None:
    done = run_from(tmp_path, "--impl", "nowhere:Model")
    assert done.returncode == pytest.ExitCode.USAGE_ERROR
    assert "--impl: cannot import target 'nowhere:Model'" in done.stderr
