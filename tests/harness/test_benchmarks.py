"""The benchmark harness's own logic: FLOP counts, sizes, statistics, fast-path detection, the results schema.

No timing assertions: CI machines are too noisy for them. The smoke run uses one short round.
"""

from __future__ import annotations

import importlib.util
import json
import warnings

import pytest
import torch
from torch.utils.benchmark import Measurement
from torch.utils.benchmark.utils.common import TaskSpec

from benchmarks.__main__ import main
from benchmarks.flops import count_flops, transformer_flops
from benchmarks.memory import CPU_FALLBACK, CPU_METHOD, cpu_peak_bytes
from benchmarks.ops import record_paths
from benchmarks.presets import PRESETS, Case, parse_size, select_sizes
from benchmarks.report import SCHEMA, ratio_line
from benchmarks.timing import round_ratios, summarize
from benchmarks.workload import BUILTIN, build_models, implementations, make_inputs, make_step
from reference.targets.contract import DEFAULT_TARGET

TINY = PRESETS["tiny"]


def _models_and_inputs(padding: str = "none") -> tuple[list, dict, object]:
    impls = implementations([DEFAULT_TARGET], compile=False)
    case = Case(TINY, "cpu", "float32", padding)
    models, failed = build_models(impls, case, TINY.config(0.0, True))
    assert not failed
    return impls, models, make_inputs(case, batch_first=True)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_flop_count_of_tiny_equals_the_formula(mode: str) -> None:
    impls, models, inputs = _models_and_inputs()
    handmade = next(i for i in impls if i.name == "handmade")
    count = count_flops(make_step(handmade, models["handmade"], inputs, mode, for_counting=True))
    assert count.added == 0, "handmade uses plain matmuls: nothing should need adding"
    formula = transformer_flops(TINY, mode)
    assert count.total == formula, f"counted {count.total}, formula {formula}"


def test_flop_count_of_builtin_adds_cpu_fused_attention_to_reach_the_formula() -> None:
    impls, models, inputs = _models_and_inputs()
    slow = next(i for i in impls if not i.fastpath)
    count = count_flops(make_step(slow, models[BUILTIN], inputs, "eval", for_counting=True))
    torch.backends.mha.set_fastpath_enabled(True)
    n, length, e = TINY.batch, TINY.seq_len, TINY.d_model
    attentions = TINY.num_encoder_layers + 2 * TINY.num_decoder_layers
    assert count.added == attentions * 4 * n * length * length * e
    assert count.total == transformer_flops(TINY, "eval")


def test_tiny_formula_value_is_pinned() -> None:
    assert transformer_flops(TINY, "eval") == 65_011_712
    assert transformer_flops(TINY, "train") == 3 * 65_011_712 - 6_291_456


def test_fast_path_and_nested_tensors_are_detected_on_the_builtin_only() -> None:
    impls, models, inputs = _models_and_inputs("right")
    by_name = {i.name: i for i in impls}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast = record_paths(make_step(by_name[BUILTIN], models[BUILTIN], inputs, "eval"))
        slow = record_paths(make_step(by_name[f"{BUILTIN} (no fastpath)"], models[BUILTIN], inputs, "eval"))
        hand = record_paths(make_step(by_name["handmade"], models["handmade"], inputs, "eval"))
        train = record_paths(make_step(by_name[BUILTIN], models[BUILTIN], inputs, "train"))
    torch.backends.mha.set_fastpath_enabled(True)
    assert fast["encoder_layer_fastpath"] == TINY.num_encoder_layers and fast["nested_tensor"] > 0
    assert not any(slow.values()) and not any(hand.values()) and not any(train.values())


def test_custom_size_takes_unnamed_keys_from_small_and_rejects_bad_pairs() -> None:
    size = parse_size("d=96,heads=3,len=16")
    assert (size.d_model, size.nhead, size.seq_len) == (96, 3, 16)
    assert size.dim_feedforward == PRESETS["small"].dim_feedforward
    for bad in ("d=96,heads=5", "x=1", "d=-4", "d"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_select_sizes_crosses_presets_with_lengths_and_overrides_batch() -> None:
    sizes = select_sizes(["tiny", "small"], [], [16, 32], batch=2)
    assert [(s.name, s.seq_len, s.batch) for s in sizes] == [
        ("tiny", 16, 2), ("tiny", 32, 2), ("small", 16, 2), ("small", 32, 2)
    ]


def _measurement(times: list[float], name: str = "x") -> Measurement:
    spec = TaskSpec(stmt="step()", setup="pass", description=name)
    return Measurement(number_per_run=1, raw_times=times, task_spec=spec)


def test_ratios_are_taken_round_by_round() -> None:
    hand = [_measurement([2.0, 2.0, 2.0]), _measurement([6.0, 6.0])]
    ref = [_measurement([1.0, 1.0]), _measurement([4.0, 4.0, 4.0])]
    ratio = round_ratios(hand, ref)
    assert ratio.rounds == (2.0, 1.5) and ratio.low == 1.5 and ratio.high == 2.0 and ratio.median == 1.75
    stats = summarize(hand)
    assert stats.round_medians == (2.0, 6.0) and stats.median == 2.0


def test_ratio_line_reports_each_target_per_mode() -> None:
    records = [
        {"status": "ok", "implementation": BUILTIN, "mode": "eval", "ratio_to_builtin": {"median": 1.0}},
        {"status": "ok", "implementation": "handmade", "mode": "eval", "ratio_to_builtin": {"median": 1.21}},
        {"status": "ok", "implementation": "handmade", "mode": "train", "ratio_to_builtin": {"median": 0.9}},
        {"status": "skipped", "implementation": "handmade", "mode": "train", "reason": "too big"},
    ]
    line = ratio_line(records)
    assert line.startswith(f"handmade / {BUILTIN}") and "eval 1.21" in line and "train 0.90" in line


@pytest.mark.slow
def test_cpu_peak_memory_of_a_training_step_is_measured_in_a_subprocess() -> None:
    impl = next(i for i in implementations([DEFAULT_TARGET], compile=False) if i.name == "handmade")
    case = Case(TINY, "cpu", "float32", "none")
    peak, method = cpu_peak_bytes(impl, case, "train", TINY.config(0.1, True), batch_first=True, threads=1)
    assert method in (CPU_METHOD, CPU_FALLBACK)
    assert 0 < peak < 1 << 30, f"peak {peak} bytes"


@pytest.mark.slow
def test_tiny_smoke_run_writes_the_schema(tmp_path, capsys) -> None:
    argv = ["--preset", "tiny", "--rounds", "1", "--min-run-time", "0.01", "--no-memory", "--device", "cpu",
            "--out", str(tmp_path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "torch " + torch.__version__ in out and "threads 1" in out
    assert out.strip().splitlines()[-2].startswith(f"handmade / {BUILTIN}")  # last line names the files
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["schema"] == SCHEMA and doc["environment"]["threads"] == 1
    records = doc["records"]
    assert len(records) == 3 * 2 * 2  # implementations x modes x paddings
    for r in records:
        assert r["status"] == "ok", r
        for key in ("median_s", "spread", "gflops_per_s", "fraction_of_matmul_limit", "ratio_to_builtin", "flops"):
            assert r[key] is not None, key
        assert r["flops"] == transformer_flops(TINY, r["mode"])
        if r["implementation"] == BUILTIN:
            assert r["ratio_to_builtin"]["median"] == 1.0
    if importlib.util.find_spec("matplotlib") is not None:  # an optional extra
        assert (tmp_path / "time_memory_cpu_float32.png").stat().st_size > 10_000


class DecliningAdapter:
    """A plug-in target that supports nothing."""

    def build(self, **config: object) -> torch.nn.Module:
        raise NotImplementedError("no configuration is supported")

    def load_reference(self, model: torch.nn.Module, reference: torch.nn.Module) -> None:
        raise AssertionError("never built")

    def run(self, model: torch.nn.Module, src: torch.Tensor, tgt: torch.Tensor, **kwargs: object) -> torch.Tensor:
        raise AssertionError("never built")


declining = DecliningAdapter()


def test_plug_in_targets_run_and_a_declining_one_is_recorded_not_fatal(tmp_path) -> None:
    argv = ["--preset", "tiny", "--rounds", "1", "--min-run-time", "0.01", "--no-memory", "--device", "cpu",
            "--modes", "eval", "--padding", "none", "--no-handmade", "--impl", "torch.nn:Transformer",
            "--impl", f"{__name__}:declining", "--out", str(tmp_path)]
    assert main(argv) == 0
    records = {r["implementation"]: r for r in json.loads((tmp_path / "results.json").read_text())["records"]}
    assert records["torch.nn:Transformer"]["status"] == "ok"  # the built-in as a drop-in class
    assert records[f"{__name__}:declining"]["status"] == "error"
    assert "NotSupportedError" in records[f"{__name__}:declining"]["reason"]


def test_bad_arguments_exit_with_usage_error() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--size", "d=7,heads=2"])
    assert exc.value.code == 2


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_tiny_smoke_run_on_cuda(tmp_path) -> None:
    argv = ["--preset", "tiny", "--rounds", "1", "--min-run-time", "0.01", "--device", "cuda",
            "--dtype", "float32", "bfloat16", "--out", str(tmp_path)]
    assert main(argv) == 0
    records = json.loads((tmp_path / "results.json").read_text())["records"]
    assert all(r["status"] == "ok" and r["peak_memory_bytes"] > 0 for r in records if r["dtype"] == "float32")
