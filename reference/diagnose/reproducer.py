"""The minimal failing example, found and shrunk by hypothesis, written as a standalone reproducer.

The search uses the suite's own strategy (``reference.cases.strategies.cases``, string activations only so
that the configuration can be saved) and the suite's comparison (compare.whole_model). The reproducer is a
folder ``repro_<target>/`` holding ``tensors.pt`` (configuration, nn.Transformer's state_dict, inputs,
masks) and ``repro.py``, which needs only torch and the target: it rebuilds nn.Transformer, loads the target
through its adapter (or as a drop-in), runs both and prints the error.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from hypothesis import HealthCheck, Phase, find, settings
from hypothesis import strategies as st
from hypothesis.errors import NoSuchExample

from reference.builtin.config import Config
from reference.cases.case import ATTN_MASKS, CAUSAL_KINDS, PADDING_MASKS, Case
from reference.inference.prepare import forward_kwargs, whole_model
from reference.levels.registry import LEVELS
from reference.targets.contract import NotSupportedError, Target, TargetError
from reference.verdict.tolerance import floor


@dataclass
class Reproducer:
    """The shrunk failing case and where its reproducer lives."""

    case: str
    failure: str
    folder: str
    command: str


def _fallback_cases() -> st.SearchStrategy[Case]:
    """Used only when the suite's strategies cannot be imported: the same fields, drawn simply."""

    @st.composite
    def cases(draw: st.DrawFn) -> Case:
        nhead = draw(st.sampled_from([1, 2, 4]))
        config = Config(
            d_model=nhead * draw(st.sampled_from([2, 4, 8])), nhead=nhead,
            num_encoder_layers=draw(st.integers(1, 2)), num_decoder_layers=draw(st.integers(1, 2)),
            dim_feedforward=draw(st.sampled_from([8, 16, 32])), dropout=draw(st.sampled_from([0.0, 0.1])),
            activation=draw(st.sampled_from(["relu", "gelu"])), batch_first=draw(st.booleans()),
            norm_first=draw(st.booleans()), bias=draw(st.booleans()),
        )
        masks = [draw(st.sampled_from(ATTN_MASKS)) for _ in range(3)]
        hints = [draw(st.sampled_from([None, True])) if m in CAUSAL_KINDS else None for m in masks[:2]]
        return Case(config, batch=draw(st.one_of(st.none(), st.integers(1, 3))), src_len=draw(st.integers(1, 6)),
                    tgt_len=draw(st.integers(1, 6)), src_mask=masks[0], tgt_mask=masks[1], memory_mask=masks[2],
                    src_key_padding_mask=draw(st.sampled_from(PADDING_MASKS)),
                    tgt_key_padding_mask=draw(st.sampled_from(PADDING_MASKS)),
                    memory_key_padding_mask=draw(st.sampled_from(PADDING_MASKS)),
                    src_is_causal=hints[0], tgt_is_causal=hints[1], seed=draw(st.integers(0, 2**16)))

    return cases()


def case_strategy() -> st.SearchStrategy[Case]:
    """The suite's whole-model strategy, restricted to string activations (callables cannot be saved)."""
    try:
        import reference.cases.strategies as strategies
        return strategies.cases(config=strategies.configs(activations=("relu", "gelu")))
    except (ImportError, AttributeError, TypeError):
        return _fallback_cases()


def fails(target: Target, case: Case, device: torch.device | str = "cpu", crashes: bool = True) -> bool:
    """Whether the target diverges from nn.Transformer on ``case`` (or crashes / gives NaN, with ``crashes``)."""
    try:
        verdict = whole_model(target, case, device, torch.float64)[0]
    except NotSupportedError:
        return False
    except TargetError:
        return crashes
    return not verdict.passed and (crashes or math.isfinite(verdict.max_abs))


def minimal_failing_case(target: Target, device: torch.device | str = "cpu", examples: int = 60) -> Case | None:
    """Hypothesis' shrunk failing case, or None when it finds none in ``examples`` tries.

    A finite divergence is looked for first (it shows what the target computes differently); a crash or NaN
    only when there is none (crashes are reported per family anyway).
    """
    config = settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                      phases=(Phase.generate, Phase.shrink), suppress_health_check=list(HealthCheck))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the target's own warnings, once per example, would drown the report
        for crashes in (False, True):

            def failing(case: Case, crashes: bool = crashes) -> bool:
                return fails(target, case, device, crashes)

            try:
                return find(case_strategy(), failing, settings=config)
            except NoSuchExample:
                continue
    return None


def slug(spec: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", spec).strip("_")


def write(target: Target, case: Case, out_dir: Path) -> Reproducer:
    """Write ``repro_<target>/repro.py`` and ``tensors.pt`` for ``case`` under ``out_dir``."""
    folder = Path(out_dir) / f"repro_{slug(target.spec)}"
    folder.mkdir(parents=True, exist_ok=True)
    reference = LEVELS["transformer"].seeded_builtin(case)
    src, tgt, kwargs = case.tensors(torch.float64)
    with torch.no_grad():
        expected = reference(src, tgt, **forward_kwargs(kwargs, "cpu"))
    torch.save({
        "spec": target.spec, "root": os.getcwd(), "case": case.describe(), "config": case.config.kwargs(),
        "state_dict": reference.state_dict(), "src": src, "tgt": tgt, "kwargs": forward_kwargs(kwargs, "cpu"),
        "tolerance": floor(torch.float64, float(expected.abs().max()) if expected.numel() else 0.0),
    }, folder / "tensors.pt")
    (folder / "repro.py").write_text(SCRIPT.replace("{SPEC}", target.spec).replace("{CASE}", case.describe()))
    failure = "crashes"
    try:
        verdict = whole_model(target, case)[0]
        failure = f"max abs err {verdict.max_abs:.3g} (bound {verdict.bound:.3g})"
    except TargetError as exc:
        failure = f"crashes: {exc}"
    return Reproducer(case.describe(), failure, str(folder), f"python {folder / 'repro.py'}")


SCRIPT = '''"""Reproduce: {SPEC} differs from torch.nn.Transformer on the minimal case hypothesis found.

Case: {CASE}
Needs only torch and the target. Run from anywhere: python repro.py  (exit status 1 while it differs)
"""

import importlib
import inspect
import sys
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore", message="enable_nested_tensor")  # nn.Transformer's construction notice
here = Path(__file__).resolve().parent
saved = torch.load(here / "tensors.pt")
sys.path[:0] = [saved["root"], str(Path.cwd())]  # where the target is importable from
module_name, _, attr = saved["spec"].partition(":")
target = importlib.import_module(module_name)
for part in attr.split("."):
    target = getattr(target, part)

torch.backends.mha.set_fastpath_enabled(False)  # nn.Transformer's reference path
config = saved["config"]
reference = torch.nn.Transformer(**config, dtype=torch.float64).eval()
reference.load_state_dict(saved["state_dict"])
if inspect.isclass(target):  # a drop-in class: nn.Transformer's arguments and state_dict
    model = target(**config).to(torch.float64)
    model.load_state_dict(reference.state_dict())
else:  # an adapter: build, load_reference, run
    model = target.build(**config).to(torch.float64)
    target.load_reference(model, reference)
model.eval()

src, tgt, kwargs = saved["src"], saved["tgt"], saved["kwargs"]
print("case:", saved["case"])
print("inputs: src", tuple(src.shape), "tgt", tuple(tgt.shape),
      " ".join(f"{k}={tuple(v.shape) if torch.is_tensor(v) else v}" for k, v in kwargs.items()))
with torch.no_grad():
    expected = reference(src, tgt, **kwargs)
    got = model(src, tgt, **kwargs) if inspect.isclass(target) else target.run(model, src, tgt, **kwargs)
if got.shape != expected.shape:
    print(f"shape {tuple(got.shape)}, but nn.Transformer gives {tuple(expected.shape)}")
    sys.exit(1)
diff = (got.double() - expected).abs().nan_to_num(nan=float("inf"))
worst = tuple(int(i) for i in torch.unravel_index(diff.argmax(), diff.shape))
layout = "(position, feature)" if diff.dim() == 2 else (
    "(batch, position, feature)" if config["batch_first"] else "(position, batch, feature)")
flat = diff.argmax()
print(f"max abs err {float(diff.max()):.3g} (tolerance {saved['tolerance']:.3g}) at {layout} {worst}: "
      f"target {float(got.reshape(-1)[flat]):.6g}, nn.Transformer {float(expected.reshape(-1)[flat]):.6g}")
sys.exit(1 if float(diff.max()) > saved["tolerance"] else 0)
'''
