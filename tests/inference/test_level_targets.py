"""Any piece of anyone's Transformer, with no adapter: the examples in examples/ checked as a user would.

Each runs the installed suite in-process through the notebook API (the path `parity check TARGET --as LEVEL`
takes), float64 and float32 only to keep the harness's own run short: correct code passes, a classic bug fails
with the numbers, and what the harness inferred (the configuration it measured) is stated.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reference import api
from reference.builtin.config import Config
from reference.inference.prepare import inferred
from reference.targets.contract import load_target

FAST = ("-k", "float64 or float32")


@pytest.mark.slow
@pytest.mark.parametrize(("spec", "level", "keep_masks"), [
    ("examples.learner_attention:MultiHeadAttention", "attention", True),
    ("examples.nanogpt_blocks:Blocks", "decoder_only", False),
    ("examples.blog_seq2seq:Seq2SeqTransformer", "transformer", False),
], ids=["learner attention", "nanoGPT blocks", "blog seq2seq"])
def test_a_correct_implementation_passes_at_its_level_with_no_adapter(spec: str, level: str, keep_masks: bool) -> None:
    report = api.check(spec, level=level, profile="ci", device="cpu", keep_masks=keep_masks,
                       pytest_args=FAST)
    assert report.passed, report
    assert f"{level} " in str(report) and "float64" in str(report)


@pytest.mark.slow
@pytest.mark.parametrize(("spec", "level", "keep_masks"), [
    ("examples.learner_attention:MergeWithoutTranspose", "attention", True),
    ("examples.nanogpt_blocks:ScaledByWidth", "decoder_only", False),
    ("examples.blog_seq2seq:UnbiasedNorm", "transformer", False),
], ids=["heads merged without the transpose", "scores scaled by 1/sqrt(n_embd)", "unbiased LayerNorm"])
def test_a_classic_bug_fails_with_the_numbers(spec: str, level: str, keep_masks: bool) -> None:
    report = api.check(spec, level=level, profile="kill", device="cpu", keep_masks=keep_masks, exitfirst=True,
                       pytest_args=("-k", f"{level}_matches_torch and float64"))  # a failure needs no shrinking
    assert not report.passed
    message = report.failures[0]["message"]
    assert f"{level} [" in message and ("max abs err" in message or "outputs differ by" in message), message


def test_the_configuration_a_gpt_implements_is_found_by_measurement_and_said() -> None:
    found = inferred(load_target("examples.nanogpt_blocks:Blocks"), "decoder_only").discover()
    assert found.fixed["norm_first"] is True and found.fixed["activation"] == "gelu", found
    assert "norm_first=True" in found.sentence and "'gelu'" in found.sentence and "causal" in found.sentence


def test_keep_masks_are_never_guessed_the_failure_says_how_to_declare_them() -> None:
    report = api.check("examples.learner_attention:MultiHeadAttention", level="attention", profile="ci",
                       device="cpu", exitfirst=True, pytest_args=("-k", "float64"))
    assert not report.passed
    assert "--keep-masks" in report.failures[0]["message"], report.failures[0]["message"]


def test_show_map_prints_the_inferred_map_for_each_example(capsys: pytest.CaptureFixture[str]) -> None:
    from reference.check import main

    for spec, level, flags in (("examples.learner_attention:MultiHeadAttention", "attention", ["--keep-masks"]),
                               ("examples.nanogpt_blocks:Blocks", "decoder_only", []),
                               ("examples.blog_seq2seq:Seq2SeqTransformer", "transformer", [])):
        assert main([spec, "--as", level, "--show-map", *flags]) == 0
        out = capsys.readouterr().out
        assert "weight map (" in out and "verified" in out and "<-" in out, out


def test_an_ambiguous_model_stops_naming_the_tensors_and_a_weight_map_file_fixes_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from reference.check import main

    spec = "tests.targets.infer_fixtures:StackedAttention"
    assert main([spec, "--as", "attention", "--show-map"]) == 1
    assert "cannot order target tensors w1, w2, w3" in capsys.readouterr().err
    path = tmp_path / "map.json"  # row blocks as fractions: the override holds at every drawn width
    path.write_text(json.dumps({"w1": "in_proj_weight[1/3]", "w2": "in_proj_weight[0/3]",
                                "w3": "in_proj_weight[2/3]",
                                "b": ["in_proj_bias[1/3]", "in_proj_bias[0/3]", "in_proj_bias[2/3]"]}))
    report = api.check(spec, level="attention", profile="ci", device="cpu", weight_map=str(path),
                       pytest_args=("-k", "float64"))
    assert report.passed, report


@pytest.mark.slow
@pytest.mark.parametrize(("spec", "level"), [
    ("handmade:MultiheadAttention", "attention"), ("handmade:LayerNorm", "layer_norm"),
    ("tests.targets.fixed_size_targets:FeedForward", "feed_forward"),  # handmade has no feed-forward class of its own
    ("handmade:TransformerEncoderLayer", "encoder_layer"), ("handmade:TransformerDecoderLayer", "decoder_layer"),
    ("handmade:TransformerEncoder", "encoder"), ("handmade:TransformerDecoder", "decoder"),
    ("handmade:TransformerEncoder", "decoder_only"),  # a GPT: the encoder stack run with a causal mask
    ("handmade:Transformer", "transformer"),
], ids=lambda v: v.split(":")[-1])
def test_handmade_is_just_another_target_through_the_path_a_users_code_takes(spec: str, level: str) -> None:
    """handmade's classes named as a user names theirs, at every level: constructed, mapped and called by
    inference (the stacks built from a layer the planner constructs first, as torch's are)."""
    report = api.check(spec, level=level, profile="ci", device="cpu", pytest_args=("-k", "float64"))
    assert report.passed, report
    assert {v["component"] for v in report.report["verdicts"]} == {level}, report
    assert report.report["notes"], "what was inferred is reported"


def test_a_stack_taking_a_layer_is_built_from_the_levels_configuration() -> None:
    """Encoder(encoder_layer, num_layers, norm): the layer built through its own class, the final norm from the
    class of the layer's norms, or None when the drawn stack has none."""
    import handmade
    from reference.inference.construct import build

    options = {**Config(d_model=12, nhead=3, num_encoder_layers=3, norm_first=True).kwargs(), "final_norm": True}
    built = build(handmade.TransformerEncoder, options, "encoder")
    assert len(built.model.layers) == 3 and isinstance(built.model.layers[0], handmade.TransformerEncoderLayer)
    assert built.model.layers[0].norm_first and built.model.layers[0].self_attn.num_heads == 3
    assert isinstance(built.model.norm, handmade.LayerNorm) and built.plan.taken["final_norm"] == "norm"
    assert not built.not_taken
    bare = build(handmade.TransformerDecoder, {**options, "final_norm": False}, "decoder")
    assert bare.model.norm is None and isinstance(bare.model.layers[0], handmade.TransformerDecoderLayer)
