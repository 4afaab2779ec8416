"""Construction from the signature and weight maps for real layouts (issue 18), on targets written the ways real
code is (tests/targets/construct_targets.py, tests/targets/construct_stack_targets.py): each mechanism on its own
(fast), then every target checked as a user would (``slow``): the correct one passes, its one-bug twin fails with
the divergence shown.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import Tensor, nn

import reference.inference.sizes as fixed_sizes
import tests.targets.construct_stack_targets as S
import tests.targets.construct_targets as T
from reference import api
from reference.builtin.config import Config
from reference.inference.construct import ConstructionError, build, sizes_from_model
from reference.inference.maps import Source
from reference.inference.prepare import inferred
from reference.inference.weightmap import MapMismatchError, UnpairedError, infer_weight_map
from reference.levels.registry import LEVELS
from reference.targets.contract import load_target

F64 = torch.float64


def options(level: str, **changes: object) -> dict:
    """A level's default configuration as constructor options, with ``changes``."""
    return {**(LEVELS[level].from_config(Config())).options(), **changes}


# -- construction ----------------------------------------------------------------------------------------------

def test_a_config_dict_read_by_key_is_answered_by_key() -> None:
    built = build(T.KeyedBlock, options("decoder_only", d_model=12, nhead=3, dropout=0.25), "decoder_only")
    assert built.plan.kind == "config"
    assert built.plan.taken == {"d_model": "emb_dim", "nhead": "n_heads", "dropout": "drop_rate"}
    assert built.plan.trials == {"qkv_bias": False, "context_length": 64}  # by role: a flag, a length
    model = built.model
    assert model.W_query.weight.shape == (12, 12) and model.W_query.bias is None and model.n_heads == 3
    assert model.drop.p == 0.25 and model.blocked.shape == (64, 64)


def test_a_config_class_with_twenty_defaults_gets_an_instance_of_itself() -> None:
    built = build(T.SettingsLayer, options("encoder_layer", d_model=8, nhead=2, dim_feedforward=20, dropout=0.0,
                                           layer_norm_eps=1e-6), "encoder_layer")
    settings = built.plan.config
    assert isinstance(settings, T.CodecSettings)  # the user's own class, not the harness's namespace
    assert (settings.hidden_size, settings.num_attention_heads, settings.intermediate_size) == (8, 2, 20)
    assert settings.hidden_dropout_prob == settings.attention_probs_dropout_prob == 0.0  # every dropout it has
    assert settings.feed_chunking == 0 and settings.hidden_act == "gelu" and settings.vocab_size == 30522  # defaults
    assert settings.layer_norm_eps == 1e-6 and built.model.out_norm.eps == 1e-6
    assert "activation" in built.not_taken  # hidden_act is no spelling of it: the configuration measures it


def test_kwargs_reach_what_they_are_passed_to() -> None:
    built = build(T.RelayLayer, options("encoder_layer", d_model=8, nhead=4, bias=False), "encoder_layer")
    assert built.model.mixer.n_heads == 4 and built.plan.taken["nhead"] == "n_heads"
    assert "dim" not in built.plan.kwargs  # the call gives it by position
    # the attention's bias is not the whole layer's (torch's bias=False drops every bias): left at its default,
    # for discovery to measure
    assert "bias" in built.not_taken and "bias" not in built.plan.kwargs and built.model.mixer.q_lin.bias is not None


def test_names_no_table_lists_get_trial_values_by_role_and_sizes_are_read_from_the_model() -> None:
    built = build(T.PlainBlock, options("encoder_layer", d_model=24, nhead=4, dim_feedforward=40, dropout=0.0),
                  "encoder_layer")
    # the drawn sizes by role (a width, a count: n_attn counts something), so the built-in can be built at what
    # is read back; the module's sizes are still read from it and checked as an instance's
    assert built.plan.trials == {"breadth": 24, "n_attn": 4}
    assert built.plan.taken == {"dropout": "leak", "nhead": "n_attn"}  # built with the drawn heads: not measured
    assert {"d_model", "dim_feedforward"} <= set(built.not_taken)  # read from the model, not assumed
    assert "trial values by role" in built.plan.describe()
    wanted = fixed_sizes.not_given("encoder_layer", built.not_taken)
    assert fixed_sizes.read_sizes(built.model, "encoder_layer", wanted) == {"d_model": 24, "dim_feedforward": 48}


def test_a_dataclass_field_no_level_sets_gets_a_value_by_its_role() -> None:
    built = build(S.SpecDecoder, options("decoder", d_model=8, nhead=2, num_decoder_layers=3, dropout=0.0),
                  "decoder")
    spec = built.plan.config
    assert isinstance(spec, S.DecoderSpec) and (spec.model_dim, spec.n_heads, spec.depth) == (8, 2, 3)
    assert spec.embedding_dropout == 0.0 and spec.ff_mult == 4 and len(built.model.blocks) == 3


def test_when_nothing_constructs_the_error_is_one_paragraph_naming_the_parameters() -> None:
    class Loads(nn.Module):
        def __init__(self, d_model: int, checkpoint: str, vocab: dict[str, int]) -> None:
            super().__init__()

    with pytest.raises(ConstructionError) as caught:
        build(Loads, options("encoder_layer"), "encoder_layer")
    text = str(caught.value)
    assert "\n" not in text and "checkpoint: str" in text and "vocab" in text and "functools.partial(" in text

    class Fragile(nn.Module):  # it constructs only from values the harness does not have
        def __init__(self, breadth: int, span: int) -> None:
            super().__init__()
            assert breadth == 3 * span

    with pytest.raises(ConstructionError, match=r"trial values by role .*breadth=16.*AssertionError"):
        build(Fragile, options("encoder_layer"), "encoder_layer")


# -- sizes -----------------------------------------------------------------------------------------------------

def test_none_entries_in_a_module_list_are_holes_not_layers() -> None:
    model = S.SeqFirstSeq2Seq(8, 2, 1, 1, 16)
    stack = T.GappedStack(8, 2, 16, num_layers=3)
    assert sizes_from_model(stack) == {"d_model": 8, "dim_feedforward": 16, "num_layers": 3}
    wanted = fixed_sizes.LEVEL_SIZES["encoder"]
    assert fixed_sizes.read_sizes(stack, "encoder", wanted)["num_encoder_layers"] == 3
    holes = nn.ModuleList([None, nn.Linear(4, 4), None])
    assert fixed_sizes.layers_of(holes) == [holes[1]] and fixed_sizes.layers_of(nn.ModuleList([None])) is None
    assert fixed_sizes.read_sizes(model, "transformer", ("num_encoder_layers",)) == {"num_encoder_layers": 1}


def test_a_feed_forward_instance_is_fed_its_input_width_not_its_hidden_one() -> None:
    sizes = fixed_sizes.read_sizes(T.FF_INSTANCE, "feed_forward", ("d_model", "dim_feedforward"))
    assert sizes["d_model"] == 24 and sizes["dim_feedforward"] == 56  # 24 and 56 each appear 3 times in its shapes
    assert 24 % sizes["nhead"] == 0  # the level's built-in (a whole layer) must be buildable at that width
    wide_first = T.Expand(56, 24)  # the tie broken by what it takes, not by which width comes first
    assert fixed_sizes.read_sizes(wide_first, "feed_forward", ("d_model",))["d_model"] == 56


# -- weight maps -----------------------------------------------------------------------------------------------

def _attention_map(target: nn.Module, builtin: nn.MultiheadAttention) -> tuple:
    g = torch.Generator().manual_seed(3)
    q, kv = torch.randn(2, 4, 8, generator=g, dtype=F64), torch.randn(2, 6, 8, generator=g, dtype=F64)
    target.to(F64)
    wm = infer_weight_map(builtin.to(F64), target, lambda m: m(q, kv, kv, need_weights=False)[0],
                          lambda m: m(q, kv, kv))
    return wm, (q, kv)


def test_a_bias_with_no_counterpart_is_held_at_zero_and_said() -> None:
    target, builtin = T.BiasOnlyOut(8, 2), nn.MultiheadAttention(8, 2, batch_first=True)
    wm, (q, kv) = _attention_map(target, builtin)
    assert wm.verified and wm.held == (Source("in_proj_bias"),)
    assert "in_proj_bias has no counterpart: checked with it fixed at 0" in wm.notes
    assert {link.target: link.text() for link in wm.links}["proj.bias"] == "out_proj.bias"
    reference = copy.deepcopy(builtin)
    wm.load(target, reference)  # the built-in is held too: exactly the target's module, gradients and all
    assert not reference.in_proj_bias.any() and not reference.in_proj_bias.requires_grad
    cot = torch.randn(2, 4, 8, dtype=F64, generator=torch.Generator().manual_seed(4))
    (reference(q, kv, kv, need_weights=False)[0] * cot).sum().backward()
    (target(q, kv, kv) * cot).sum().backward()
    grads = wm.grads(target)
    assert "in_proj_bias" not in grads and set(grads) == {n for n, p in reference.named_parameters() if p.grad
                                                          is not None}
    for name, g in grads.items():
        torch.testing.assert_close(g, dict(reference.named_parameters())[name].grad, rtol=1e-10, atol=1e-12)


def test_the_bug_twin_of_a_held_bias_does_not_verify() -> None:
    with pytest.raises(MapMismatchError, match="outputs differ"):
        _attention_map(T.BiasOnlyOutBug(8, 2), nn.MultiheadAttention(8, 2, batch_first=True))


def test_an_unpaired_message_names_only_what_the_target_lacks() -> None:
    class NoOutputProjection(nn.Module):  # biases, but no output projection at all
        def __init__(self) -> None:
            super().__init__()
            self.qkv = nn.Linear(8, 24)

        def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            return self.qkv(q)[..., :8]

    with pytest.raises(UnpairedError) as caught:
        _attention_map(NoOutputProjection(), nn.MultiheadAttention(8, 2, batch_first=True))
    text = str(caught.value)
    assert "out_proj.weight" in text and "no biases" not in text and "qkv" not in text.split("counterpart:")[1]


def test_q_k_v_packed_per_head_is_found_by_measurement() -> None:
    target = T.HeadPacked(12, 3, 20, dropout=0.0).to(F64)
    builtin = nn.TransformerEncoderLayer(12, 3, 20, 0.0, batch_first=True).to(F64)
    x = torch.randn(2, 5, 12, dtype=F64, generator=torch.Generator().manual_seed(0))
    wm = infer_weight_map(builtin, target, lambda m: m(x), lambda m: m(x))
    links = {link.target: link for link in wm.links}
    assert wm.verified and "per head, head after head" in links["Wqkv.weight"].how
    assert [s.rows for s in links["Wqkv.weight"].sources[:3]] == [(0, 4), (12, 16), (24, 28)]  # q_0, k_0, v_0
    assert [s.rows for s in links["Wqkv.bias"].sources] == [s.rows for s in links["Wqkv.weight"].sources]
    bug = T.HeadPackedBug(12, 3, 20, dropout=0.0).to(F64)
    with pytest.raises(MapMismatchError, match="outputs differ"):
        infer_weight_map(builtin, bug, lambda m: m(x), lambda m: m(x))


def test_packed_blocks_in_another_order_are_found_and_transposed_ones_still_pair() -> None:
    class KeysFirst(nn.Module):  # Conv1D-style (in, out) packed weight, split k, q, v
        def __init__(self) -> None:
            super().__init__()
            self.w, self.b = nn.Parameter(torch.randn(8, 24)), nn.Parameter(torch.randn(24))
            self.out = nn.Linear(8, 8)

        def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            keys, queries, values = torch.addmm(self.b, q.reshape(-1, 8), self.w).view(*q.shape[:2], 24).split(8, -1)
            heads = lambda t: t.unflatten(-1, (2, 4)).transpose(1, 2)  # noqa: E731
            att = (heads(queries) @ heads(keys).transpose(-1, -2) / math.sqrt(4)).softmax(-1)
            return self.out((att @ heads(values)).transpose(1, 2).flatten(2))

    target, builtin = KeysFirst(), nn.MultiheadAttention(8, 2, batch_first=True)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 5, 8, generator=g, dtype=F64)
    wm = infer_weight_map(builtin.to(F64), target.to(F64), lambda m: m(x, x, x, need_weights=False)[0],
                          lambda m: m(x, x, x))
    link = {link.target: link for link in wm.links}["w"]
    assert wm.verified and link.transpose and "packed kqv in blocks" in link.how


@pytest.mark.slow
def test_the_number_of_heads_of_an_instance_packed_per_head_is_measured() -> None:
    found = inferred(load_target("tests.targets.construct_targets:PACKED_INSTANCE"), "encoder_layer").discover()
    assert found.sizes == {"d_model": 24, "nhead": 4, "dim_feedforward": 40}, found
    assert found.sentence == "equals nn.TransformerEncoderLayer()", found.sentence


# -- every target, checked as a user would ---------------------------------------------------------------------

TARGETS = [
    ("tests.targets.construct_targets:KeyedBlock", "decoder_only"),
    ("tests.targets.construct_targets:SettingsLayer", "encoder_layer"),
    ("tests.targets.construct_targets:RelayLayer", "encoder_layer"),
    ("tests.targets.construct_targets:PlainBlock", "encoder_layer"),
    ("tests.targets.construct_targets:BiasOnlyOut", "attention"),
    ("tests.targets.construct_targets:HeadPacked", "encoder_layer"),
    ("tests.targets.construct_targets:GappedStack", "encoder"),
    ("tests.targets.construct_targets:FF_INSTANCE", "feed_forward"),
    ("tests.targets.construct_stack_targets:SeqFirstSeq2Seq", "transformer"),
    ("tests.targets.construct_stack_targets:SpecDecoder", "decoder"),
]
IDS = [spec.split(":")[1] for spec, _ in TARGETS]


@pytest.mark.slow
@pytest.mark.parametrize(("spec", "level"), TARGETS, ids=IDS)
def test_the_correct_target_passes(spec: str, level: str) -> None:
    report = api.check(spec, level=level, profile="ci", device="cpu", pytest_args=("-k", "float64 or metamorphic"))
    assert report.passed, report


@pytest.mark.slow
@pytest.mark.parametrize(("spec", "level"), TARGETS, ids=IDS)
def test_its_one_bug_twin_fails_with_the_divergence_shown(spec: str, level: str) -> None:
    bug = f"{spec}_BUG" if spec.endswith("_INSTANCE") else f"{spec}Bug"
    report = api.check(bug, level=level, profile="kill", device="cpu", pytest_args=("-k", "float64"))
    assert not report.passed and report.failures, report
    message = report.failures[0]["message"]
    assert "max abs err" in message or "differ" in message, message
    assert not any("cannot be paired" in (f["message"] or "") for f in report.failures), report  # it ran


@pytest.mark.slow
def test_a_bias_flag_that_drops_some_biases_only_is_not_supported_there_not_failed() -> None:
    """With its flag off the target keeps its output bias: that configuration does not pair with the built-in's
    bias=False one to one, so it is declined with the reason (never a failure of correct code); the rest is
    judged, and the bug twin fails there."""
    spec = "tests.targets.construct_targets:SwitchedInputBias"
    report = api.check(spec, level="attention", profile="ci", device="cpu", pytest_args=("-k", "float64"))
    assert report.passed, report
    reasons = {r["reason"] for r in report.report["not_supported"]}
    assert any("bias=False" in r and "do not pair" in r and "proj.bias" in r for r in reasons), reasons
    bug = api.check(f"{spec}Bug", level="attention", profile="kill", device="cpu", pytest_args=("-k", "float64"))
    assert not bug.passed and bug.failures, bug
