"""Traits of real code the harness once could not take (issue 18), on targets of our own
(tests/targets/lead_targets.py): a module that keeps a non-leaf tensor from its last call, and a fixed-size
attention whose heads are separate modules, whose number of heads only pairing can tell, a feed-forward written
as convolutions of kernel size 1, and code whose error is its own."""

from __future__ import annotations

import pytest
import torch

import tests.targets.lead_targets as T
from reference.check import main as check_main
from reference.inference.copying import copy_model

M = "tests.targets.lead_targets"


def test_a_module_keeping_a_tensor_of_its_last_call_is_copied() -> None:
    model = T.KeepsProbabilities(8, 2)
    x = torch.randn(2, 3, 8)
    model(x, x, x)
    assert model.probabilities is not None and model.probabilities.grad_fn is not None  # not a graph leaf
    copy = copy_model(model)
    assert copy.probabilities is not None and copy.probabilities.grad_fn is None
    torch.testing.assert_close(copy.probabilities, model.probabilities.detach())
    assert copy.w_out is not model.w_out


@pytest.mark.slow
@pytest.mark.parametrize(("obj", "lvl", "buggy"), [
    ("KeepsProbabilities", "attention", False), ("KeepsProbabilitiesBug", "attention", True),
    ("head_units", "attention", False), ("head_units_bug", "attention", True),
    ("PointwiseConvFF", "feed_forward", False), ("PointwiseConvFFBug", "feed_forward", True),
])
def test_parity_check_runs_them(obj: str, lvl: str, buggy: bool, capsys: pytest.CaptureFixture[str]) -> None:
    profile = "kill" if buggy else "ci"  # kill: ci without shrinking (a bug only has to be shown)
    code = check_main([f"{M}:{obj}", "--as", lvl, "--profile", profile, "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == (1 if buggy else 0), out[-3000:]
    if buggy:
        assert "max abs err" in out, out[-3000:]
    else:
        assert "what the harness inferred" in out and "FAILED" not in out, out[-3000:]
        if obj == "head_units":
            assert "nhead=5 found by measurement" in out, out[-3000:]


def test_an_error_in_the_targets_own_code_is_the_targets_not_a_harness_bug(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert check_main([f"{M}:ReadsScriptGlobals", "--as", "feed_forward", "--profile", "ci", "--device", "cpu"]) == 1
    captured = capsys.readouterr()
    said = captured.out + captured.err
    assert "own code raised NameError: name 'HIDDEN' is not defined" in said, said[-3000:]
    assert "lead_targets.py:" in said and "globals" in said, said[-3000:]
    assert "harness bug" not in said and "Traceback" not in said, said[-3000:]


@pytest.mark.slow
def test_code_that_cannot_run_at_a_precision_declines_it(capsys: pytest.CaptureFixture[str]) -> None:
    """A fill value float16 cannot hold raises there; it runs in float64, so float16's masked cases are "not
    supported", with the error, and the check passes."""
    code = check_main([f"{M}:HugeFillAttention", "--as", "attention", "--profile", "ci", "--device", "cpu", "--",
                       "-k", "float16"])
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    assert "the target raises in float16 (RuntimeError" in out and "where it runs in float64" in out, out[-3000:]


def test_examples_where_the_target_raises_count_as_failed_in_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    code = check_main([f"{M}:RaisesOnOnePosition", "--as", "feed_forward", "--profile", "kill", "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 1, out[-3000:]
    rows = [line.split() for line in out.splitlines() if line.startswith("feed_forward ")]
    assert rows and all(int(r[-2]) > 0 for r in rows), out[-3000:]  # the "failed" column
    assert "raised IndexError: no previous position" in out, out[-3000:]


def test_heads_kept_in_a_list_are_counted_at_its_length_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """24 wide has eight divisors; its six heads pair only at six, and differ there until the causal mask is
    measured: the length of the collection it keeps them in is tried first and taken, not every divisor."""
    from reference.inference.resolver import Resolver
    from reference.inference.target import InferredTarget
    from reference.targets.contract import load_target

    tried: list[int] = []
    real = Resolver._infer

    def counted(self: Resolver, case: object, model: torch.nn.Module) -> object:
        tried.append(case.heads)  # type: ignore[attr-defined]
        return real(self, case, model)

    monkeypatch.setattr(Resolver, "_infer", counted)
    found = InferredTarget(target=load_target(f"{M}:CausalHeadDict"), level="attention")
    found.discover()
    assert found._heads == {24: 6}, found._heads
    assert len(set(tried)) <= 3, tried  # the drawn count, six, and the causal search's, not eight divisors
