"""The inference library (reference/inference): constructors, weight maps and calling conventions, inferred for
implementations in styles unlike handmade's (examples/ and tests/targets/infer_fixtures.py), with no adapter.

Each map is checked by what it is for: loaded with a built-in's weights (other than those it was inferred
on), the target computes the built-in's outputs, and its gradients, gathered under the built-in's names,
equal the built-in's. The buggy variants must be rejected, never mapped silently.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import handmade
from examples.blog_seq2seq import Seq2SeqTransformer, UnbiasedNorm
from examples.learner_attention import MergeWithoutTranspose, MultiHeadAttention
from examples.nanogpt_blocks import Blocks, GPTConfig, ScaledByWidth
from reference.builtin.config import Config, randomize_
from reference.cases.case import Case
from reference.cases.kinds import AttentionCase, LayerNormCase, StackCase
from reference.inference.auto import Inference, infer_target
from reference.inference.construct import ConstructionError, build, sizes_from_model
from reference.inference.weightmap import AmbiguousMapError, MapMismatchError, UnpairedError
from reference.levels.registry import level
from reference.targets.contract import NotSupportedError
from reference.verdict.engine import compare_modules
from tests.targets.infer_fixtures import (
    EinsumEncoderLayer,
    GPT2Attention,
    KVCrossAttention,
    MatmulAttention,
    PerHeadAttention,
    SharedNorm,
    ShiftFirstNorm,
    StackedAttention,
)

F64 = torch.float64
ATTENTION = AttentionCase(embed_dim=8, num_heads=2, batch=2, query_len=3, key_len=4, batch_first=True, seed=3)
GPT = Config(d_model=16, nhead=2, num_encoder_layers=2, dim_feedforward=64, activation="gelu", norm_first=True,
             batch_first=True)
SEQ2SEQ = Config(d_model=8, nhead=2, num_encoder_layers=2, num_decoder_layers=2, dim_feedforward=12,
                 batch_first=True)


def options(case: Any) -> dict[str, Any]:
    """The level's configuration as a constructor would be offered it (torch's keyword names)."""
    if isinstance(case, LayerNormCase):
        return {"normalized_shape": case.normalized_shape, "eps": case.eps, "bias": case.bias}
    if isinstance(case, AttentionCase):
        return {"embed_dim": case.embed_dim, "num_heads": case.num_heads, "bias": case.bias,
                "dropout": case.dropout, "batch_first": case.batch_first}
    config = case.case.config if isinstance(case, StackCase) else case.config
    return config.kwargs()


def batch_first(case: Any) -> bool:
    if isinstance(case, LayerNormCase):
        return True
    return case.batch_first if isinstance(case, AttentionCase) else (
        case.case.config if isinstance(case, StackCase) else case.config).batch_first


def infer(name: str, case: Any, obj: Any, **kw: Any) -> tuple[Inference, nn.Module]:
    lv = level(name)
    model = build(obj, options(case), name).model.to(F64)
    inputs, kwargs = lv.inputs(case, F64)
    return infer_target(lv.seeded_builtin(case), model, name, lv.call, inputs, kwargs, batch_first=batch_first(case),
                        **kw), model


def check_equal(name: str, case: Any, inference: Inference, model: nn.Module, seed: int = 11) -> None:
    """With fresh built-in weights loaded through the map: equal outputs and equal parameter gradients."""
    lv = level(name)
    builtin = randomize_(lv.build("torch", case), torch.Generator().manual_seed(seed))
    inference.weight_map.load(model, builtin)
    inputs, kwargs = lv.inputs(case, F64)
    want = lv.call(builtin, **inputs, **kwargs)
    got = inference.convention(model, inputs, kwargs, batch_first=batch_first(case))
    want_out = want["output"] if isinstance(want, dict) else want
    torch.testing.assert_close(got["output"], want_out, rtol=1e-10, atol=1e-10)
    cotangent = torch.randn(want_out.shape, generator=torch.Generator().manual_seed(5), dtype=F64)
    (want_out * cotangent).sum().backward()
    (got["output"] * cotangent).sum().backward()
    grads = inference.weight_map.grads(model)
    expected = {n: p.grad for n, p in builtin.named_parameters() if p.grad is not None}
    assert set(grads) == set(expected)
    for n, g in expected.items():
        torch.testing.assert_close(grads[n], g, rtol=1e-9, atol=1e-10, msg=lambda m, n=n: f"grad {n}: {m}")


# -- constructors ----------------------------------------------------------------------------------------------

def test_constructor_aliases_and_not_taken() -> None:
    built = build(MultiHeadAttention, options(ATTENTION), "attention")
    assert (built.model.d_model, built.model.num_heads) == (8, 2)
    assert built.plan.taken == {"d_model": "d_model", "nhead": "num_heads"}
    assert set(built.not_taken) == {"bias", "dropout", "batch_first"}
    blog = build(Seq2SeqTransformer, SEQ2SEQ.kwargs(), "transformer")
    assert blog.plan.kwargs == {"dim": 8, "n_heads": 2, "ff_dim": 12, "n_layers": 2, "dropout": 0.0}
    assert {"norm_first", "activation", "layer_norm_eps", "bias"} <= set(blog.not_taken)


def test_constructor_config_dataclass_and_sizes_from_model() -> None:
    wide = dataclasses.replace(GPT, d_model=24, nhead=3, num_encoder_layers=3)  # none of GPTConfig's defaults
    built = build(Blocks, {**wide.kwargs(), "dim_feedforward": 32}, "decoder_only")
    assert built.plan.kind == "config" and isinstance(built.plan.config, GPTConfig)
    assert (built.plan.config.n_embd, built.plan.config.n_head, built.plan.config.n_layer) == (24, 3, 3)
    assert {"norm_first", "activation", "dim_feedforward", "layer_norm_eps"} <= set(built.not_taken)
    assert sizes_from_model(built.model) == {"d_model": 24, "dim_feedforward": 96, "num_layers": 3}


def test_constructor_untyped_config_namespace() -> None:
    class Model(nn.Module):
        def __init__(self, cfg: Any) -> None:
            super().__init__()
            self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_epsilon,
                                     bias=getattr(cfg, "use_bias", True))
            self.vocab = getattr(cfg, "vocab_size", 7)

    built = build(Model, {"d_model": 6, "layer_norm_eps": 1e-3, "bias": False, "nhead": 2}, "layer_norm")
    assert built.model.norm.weight.shape == (6,) and built.model.norm.eps == 1e-3 and built.model.norm.bias is None
    assert built.model.vocab == 7
    assert set(built.plan.taken) == {"d_model", "layer_norm_eps", "bias"} and built.not_taken == {"nhead": 2}


def test_constructor_factory_instance_and_errors() -> None:
    factory = build(lambda: MultiHeadAttention(8, 2), options(ATTENTION), "attention")
    assert factory.plan.kind == "factory" and set(factory.not_taken) >= {"d_model", "nhead"}
    instance = MultiHeadAttention(8, 2)
    assert build(instance, options(ATTENTION), "attention").model is instance

    class NeedsVocab(nn.Module):  # an int no option names: a trial size, the sizes then read from the model
        def __init__(self, d_model: int, vocab_size: int) -> None:
            super().__init__()

    trial = build(NeedsVocab, options(ATTENTION), "attention")
    assert trial.plan.trials == {"vocab_size": 8} and "trial values by role" in trial.plan.describe()  # the width

    class NeedsPath(nn.Module):  # a string that names no activation: no role gives it a value
        def __init__(self, d_model: int, checkpoint: str) -> None:
            super().__init__()

    with pytest.raises(ConstructionError, match=r"checkpoint: str.*d_model: d_model/embed_dim/n_embd.*partial"):
        build(NeedsPath, options(ATTENTION), "attention")
    # one layer count, two different ones asked: a trial count, both counts then read from the model
    counts = build(Seq2SeqTransformer, {**SEQ2SEQ.kwargs(), "num_decoder_layers": 3}, "transformer")
    assert counts.plan.trials == {"n_layers": 2} and {"num_encoder_layers", "num_decoder_layers"} <= set(
        counts.not_taken)
    with pytest.raises(ConstructionError, match=r"called with no arguments, but .* requires d"):
        build(lambda d: MultiHeadAttention(d, 2), options(ATTENTION), "attention")


# -- weight maps, verified; gradients gathered back ------------------------------------------------------------

@pytest.mark.parametrize("layout", [True, False], ids=["batch_first", "seq_first"])
def test_learner_attention_maps_onto_multihead_attention(layout: bool) -> None:
    case = ATTENTION.replace(batch_first=layout)
    inference, model = infer("attention", case, MultiHeadAttention)
    links = {link.target: link.text() for link in inference.weight_map.links}
    assert links["W_q.weight"] == "in_proj_weight[rows 0:8]" and links["W_v.bias"] == "in_proj_bias[rows 16:24]"
    assert links["W_o.weight"] == "out_proj.weight"
    assert "batch-first" in inference.convention.describe() and inference.convention.returns_weights is False
    check_equal("attention", case, inference, model)


def test_learner_attention_keep_masks_are_measured_or_declared() -> None:
    """Its ``masked_fill(mask == 0, -inf)`` takes keep-masks: the probes find it, and a declaration skips them."""
    case = ATTENTION.replace(attn_mask="random_bool", key_padding_mask="bool")
    inference, model = infer("attention", case, MultiHeadAttention)
    assert "mask measured as (N, 1, L, S) bool keep-mask" in inference.convention.describe()
    assert inference.convention.masks == {"attn_mask": "mask", "key_padding_mask": "mask"}
    check_equal("attention", case, inference, model)
    inference, model = infer("attention", case, MultiHeadAttention, keep_mask=True)
    assert "keep-masks (True = may attend), as declared" in inference.convention.describe()
    assert not inference.convention.forms
    check_equal("attention", case, inference, model)


def test_nanogpt_blocks_map_onto_a_causal_pre_norm_gelu_encoder() -> None:
    case = StackCase(Case(GPT, batch=2, src_len=5))
    inference, model = infer("decoder_only", case, Blocks)
    links = {link.target: link.text() for link in inference.weight_map.links}
    assert links["h.1.attn.c_attn.weight"] == "layers.1.self_attn.in_proj_weight"
    assert links["h.0.mlp.c_fc.weight"] == "layers.0.linear1.weight" and links["ln_f.bias"] == "norm.bias"
    assert "always causal" in inference.convention.describe()
    check_equal("decoder_only", case, inference, model)


def test_blog_seq2seq_maps_onto_nn_transformer() -> None:
    case = Case(SEQ2SEQ, tgt_mask="causal_float")
    inference, model = infer("transformer", case, Seq2SeqTransformer)
    links = {link.target: link for link in inference.weight_map.links}
    q = links["decoder.1.cross_attn.w.q"]  # (in, out) parameters applied by einsum: transposed thirds
    assert q.text() == "decoder.layers.1.multihead_attn.in_proj_weight[rows 0:8].T"
    assert links["final.encoder.gamma"].text() == "encoder.norm.weight"
    check_equal("transformer", case, inference, model)
    seq_first = Case(dataclasses.replace(SEQ2SEQ, batch_first=False), tgt_mask="causal_bool")
    inference, model = infer("transformer", seq_first, Seq2SeqTransformer)
    check_equal("transformer", seq_first, inference, model)


def test_gpt2_conv1d_packed_and_transposed() -> None:
    case = ATTENTION.replace(self_attention=True, key_len=3)
    inference, model = infer("attention", case, GPT2Attention)
    assert {link.target: link.text() for link in inference.weight_map.links} == {
        "c_attn.weight": "in_proj_weight.T", "c_attn.bias": "in_proj_bias",
        "c_proj.weight": "out_proj.weight.T", "c_proj.bias": "out_proj.bias"}
    assert inference.convention.self_attention_only and inference.convention.returns_weights
    check_equal("attention", case, inference, model)
    lv = level("attention")  # the per-head weights it returns, averaged as the built-in's
    inputs, kwargs = lv.inputs(case, F64)
    builtin = lv.seeded_builtin(case)
    inference.weight_map.load(model, builtin)
    torch.testing.assert_close(inference.convention(model, inputs, kwargs, batch_first=True)["weights"],
                               lv.call(builtin, **inputs, **kwargs)["weights"])
    with pytest.raises(NotSupportedError, match="self-attention only"):
        inference.convention(model, *level("attention").inputs(ATTENTION, F64), batch_first=True)


def test_functional_einsum_layer_is_sequence_first_by_measurement() -> None:
    case = Case(Config(d_model=8, nhead=2, dim_feedforward=12), batch=3, src_len=3)  # (L, N, E) = (3, 3, 8)
    inference, model = infer("encoder_layer", case, EinsumEncoderLayer)
    assert "layout measured: sequence-first" in inference.convention.describe()
    assert {link.target: link.text() for link in inference.weight_map.links}["out"] == "self_attn.out_proj.weight.T"
    check_equal("encoder_layer", case, inference, model)


def test_per_head_modules_without_biases() -> None:
    case = ATTENTION.replace(bias=False)
    inference, model = infer("attention", case, PerHeadAttention)
    links = {link.target: link.text() for link in inference.weight_map.links}
    assert links["heads.1.key.weight"] == "in_proj_weight[rows 12:16]"
    check_equal("attention", case, inference, model)
    with pytest.raises(UnpairedError, match="no biases there: compare it with a built-in built with bias=False"):
        infer("attention", ATTENTION, PerHeadAttention)


def test_square_in_out_weights_by_their_product() -> None:
    inference, model = infer("attention", ATTENTION, MatmulAttention)
    links = {link.target: link.text() for link in inference.weight_map.links}
    assert links["P.1"] == "in_proj_weight[rows 8:16].T" and links["P.3"] == "out_proj.weight.T"
    check_equal("attention", ATTENTION, inference, model)


def test_a_norm_told_apart_by_use_not_order() -> None:
    case = LayerNormCase(normalized_shape=(6,), eps=1e-5, lead_shape=(2, 3))
    inference, model = infer("layer_norm", case, ShiftFirstNorm)
    assert {link.target: link.text() for link in inference.weight_map.links} == {"p": "bias", "r": "weight"}
    check_equal("layer_norm", case, inference, model)


def test_packed_keys_and_values_from_one_context() -> None:
    lv = level("attention")
    inputs, kwargs = lv.inputs(ATTENTION, F64)
    inputs["value"] = inputs["key"]  # a cross-attention: keys and values from one context
    model = build(KVCrossAttention, options(ATTENTION), "attention").model.to(F64)
    inference = infer_target(lv.seeded_builtin(ATTENTION), model, "attention", lv.call, inputs, kwargs,
                             batch_first=True)
    links = {link.target: link.text() for link in inference.weight_map.links}
    assert links["to_kv.weight"] == "in_proj_weight[rows 8:24]" and links["to_kv.bias"] == "in_proj_bias[rows 8:24]"
    assert links["to_q.weight"] == "in_proj_weight[rows 0:8]" and inference.convention.key_is_value
    builtin = randomize_(lv.build("torch", ATTENTION), torch.Generator().manual_seed(4))
    inference.weight_map.load(model, builtin)
    torch.testing.assert_close(inference.convention(model, inputs, kwargs, batch_first=True)["output"],
                               lv.call(builtin, **inputs, **kwargs)["output"])
    with pytest.raises(NotSupportedError, match="one input for keys and values"):
        inference.convention(model, *lv.inputs(ATTENTION, F64), batch_first=True)


class FeedForward(nn.Module):
    """A position-wise feed-forward block as courses write it: w_1, relu, dropout, w_2."""

    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.w_1, self.w_2, self.drop = nn.Linear(d_model, d_ff), nn.Linear(d_ff, d_model), nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.w_2(self.drop(torch.relu(self.w_1(x))))


def test_feed_forward_pairs_only_what_the_level_uses() -> None:
    inference, model = infer("feed_forward", Case(SEQ2SEQ), FeedForward)
    assert [link.text() for link in inference.weight_map.links] == [
        "linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias"]
    assert "self_attn.in_proj_weight" in inference.weight_map.notes[0]
    check_equal("feed_forward", Case(SEQ2SEQ), inference, model)


@pytest.mark.parametrize("name, case, obj", [
    ("attention", ATTENTION, handmade.MultiheadAttention),
    ("layer_norm", LayerNormCase(normalized_shape=(8,), eps=1e-5, lead_shape=(2, 3)), handmade.LayerNorm),
    ("encoder_layer", Case(SEQ2SEQ, src_mask="causal_float"), handmade.TransformerEncoderLayer),
    ("decoder_layer", Case(SEQ2SEQ, tgt_mask="causal_bool", memory_key_padding_mask="bool"),
     handmade.TransformerDecoderLayer),
    ("transformer", Case(SEQ2SEQ, tgt_mask="causal_bool", src_key_padding_mask="bool"), handmade.Transformer),
])
def test_handmade_is_just_another_target(name: str, case: Any, obj: type[nn.Module]) -> None:
    inference, model = infer(name, case, obj)
    check_equal(name, case, inference, model)


@pytest.mark.parametrize("name", ["encoder", "decoder", "decoder_only"])
def test_handmade_stacks_with_their_final_norm(name: str) -> None:
    """A stack is built from a layer: the factory is handmade's own stack, as the registry builds it."""
    case = StackCase(Case(GPT, batch=2, src_len=5, tgt_len=4, src_key_padding_mask="bool"))
    model = level(name).build("handmade", case).to(F64)
    lv = level(name)
    inputs, kwargs = lv.inputs(case, F64)
    inference = infer_target(lv.seeded_builtin(case), model, name, lv.call, inputs, kwargs, batch_first=True)
    assert "always causal" not in inference.convention.describe()
    check_equal(name, case, inference, model)


def test_map_describe_and_its_override_round_trip() -> None:
    inference, model = infer("decoder_only", StackCase(Case(GPT, batch=2, src_len=5)), Blocks)
    text = inference.weight_map.describe()
    assert all(name in text for name, _ in model.named_parameters()) and "verified" in text
    again, _ = infer("decoder_only", StackCase(Case(GPT, batch=2, src_len=5)), Blocks,
                     override=inference.weight_map.as_override())
    assert [link.text() for link in again.weight_map.links] == [link.text() for link in inference.weight_map.links]


# -- what it cannot decide, and what it rejects ----------------------------------------------------------------

def test_ambiguous_model_names_the_tensors_and_an_override_fixes_it(tmp_path: Any) -> None:
    with pytest.raises(AmbiguousMapError, match=r"cannot order target tensors w1, w2, w3.*override") as info:
        infer("attention", ATTENTION, StackedAttention)
    assert set(info.value.target) == {"w1", "w2", "w3"}
    override = {"w1": "in_proj_weight[rows 8:16]", "w2": "in_proj_weight[rows 0:8]", "w3": "in_proj_weight[16:24]",
                "b": ["in_proj_bias[rows 8:16]", "in_proj_bias[rows 0:8]", "in_proj_bias[rows 16:24]"]}
    inference, model = infer("attention", ATTENTION, StackedAttention, override=override)
    assert inference.weight_map.links[0].how == "override"
    check_equal("attention", ATTENTION, inference, model)
    path = tmp_path / "map.json"
    path.write_text(json.dumps(override))
    infer("attention", ATTENTION, StackedAttention, override=str(path))
    toml = tmp_path / "map.toml"
    toml.write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in override.items()))
    infer("attention", ATTENTION, StackedAttention, override=str(toml))


def test_a_tensor_never_used_is_named() -> None:
    class KeysThroughQueries(MultiHeadAttention):
        def forward(self, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None = None) -> Tensor:
            q, k, v = (self.split_heads(self.W_q(x)) if i < 2 else self.split_heads(self.W_v(x))
                       for i, x in enumerate((query, key, value)))
            return self.W_o(self.combine_heads(self.scaled_dot_product_attention(q, k, v, mask)))

    with pytest.raises(AmbiguousMapError, match=r"W_k.weight \(8, 8\), W_k.bias \(8,\): never used"):
        infer("attention", ATTENTION, KeysThroughQueries)


@pytest.mark.parametrize("name, case, bug", [
    ("attention", ATTENTION, MergeWithoutTranspose),
    ("decoder_only", StackCase(Case(GPT, batch=2, src_len=5)), ScaledByWidth),
    ("transformer", Case(SEQ2SEQ), UnbiasedNorm),
], ids=["heads_merged_without_transpose", "scaled_by_sqrt_d_model", "unbiased_variance"])
def test_buggy_variants_are_rejected_not_mapped(name: str, case: Any, bug: type[nn.Module]) -> None:
    with pytest.raises(MapMismatchError, match="paired by order and shape, but the outputs differ by") as info:
        infer(name, case, bug)
    assert info.value.difference > 1e-3 and "see parity diagnose" in str(info.value)


def test_a_shared_module_is_reported() -> None:
    config = dataclasses.replace(GPT, d_model=8, dim_feedforward=12, num_encoder_layers=1)
    with pytest.raises(UnpairedError, match=r"(?s)norm2.weight.*used more than once in the target: norm.weight"):
        infer("encoder_layer", Case(config), SharedNorm)


# -- calling conventions ---------------------------------------------------------------------------------------

def test_calling_declines_what_the_target_cannot_take() -> None:
    inference, model = infer("attention", ATTENTION, MultiHeadAttention)
    conv = inference.convention
    assert conv.unbatched is False
    inputs, kwargs = level("attention").inputs(ATTENTION.replace(batch=None), F64)
    with pytest.raises(NotSupportedError, match="unbatched"):
        conv(model, inputs, kwargs, batch_first=True)
    per_head, model = infer("attention", ATTENTION.replace(bias=False), PerHeadAttention)
    inputs, kwargs = level("attention").inputs(ATTENTION.replace(attn_mask="random_bool"), F64)
    with pytest.raises(NotSupportedError, match="takes no attn_mask"):
        per_head.convention(model, inputs, kwargs, batch_first=True)
    gpt, model = infer("decoder_only", StackCase(Case(GPT, batch=2, src_len=5)), Blocks)
    inputs, kwargs = level("decoder_only").inputs(StackCase(Case(GPT, batch=2, src_len=5)), F64)
    random = {**kwargs, "mask": torch.zeros(5, 5, dtype=F64).masked_fill(torch.eye(5, dtype=torch.bool), -1e9)}
    with pytest.raises(NotSupportedError, match="takes no mask"):
        gpt.convention(model, inputs, random, batch_first=True)


def test_an_inferred_target_runs_through_the_engine_with_gradients() -> None:
    """The API fits the engine's Candidate protocol: every output and every gradient judged, all pass."""
    inference, model = infer("attention", ATTENTION.replace(need_weights=False), MultiHeadAttention)

    candidate = SimpleNamespace(
        name="learner",
        build=lambda device, dtype: copy.deepcopy(model).to(device, dtype),
        load=lambda m, builtin: inference.weight_map.load(m, builtin),
        call=lambda m, call, inputs, kwargs: inference.convention(m, inputs, kwargs, batch_first=True),
        param_grads=lambda m, builtin: inference.weight_map.grads(m),
    )
    lv = level("attention")
    case = ATTENTION.replace(need_weights=False, seed=8)
    inputs, kwargs = lv.inputs(case, torch.float32)
    verdicts = compare_modules(lv.seeded_builtin(case), candidate, lv.call, inputs, kwargs, dtype=torch.float32,
                               device="cpu", grads=True, seed=8)
    assert len(verdicts) == 1 + 3 + 4 and all(v.passed for v in verdicts), "\n".join(map(str, verdicts))
