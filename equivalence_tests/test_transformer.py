"""The whole model: the target (``--impl``, default handmade) equals nn.Transformer, outputs and gradients.

These properties run against any plug-in target. Each example builds nn.Transformer with random weights
(seeded), copies them into the target, and judges the output and the gradients of both inputs and of every
parameter against the float64 oracle (reference.compare.whole_model; policy in reference/tolerance.py).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, example, given

from reference.assertions import (
    check_whole_model,
    examples,
    low_precision_grads_comparable,
    skip_unless_dtype_runs,
    skip_when_nothing_supported,
)
from reference.strategies import LOW_PRECISION, cases, is_smooth, tanh_gelu
from reference.build import Config
from reference.cases import Case

DECLINED = (HealthCheck.filter_too_much,)  # a target may decline many configurations; each is recorded

# Edge cases that always run, whatever hypothesis draws.
PINNED = (
    # the smallest model: unbatched, one token each side, one head, one feed-forward unit
    Case(Config(d_model=2, nhead=1, dim_feedforward=1), batch=None, src_len=1, tgt_len=1, seed=1),
    # odd head count, S != T, batch-first, every padding mask, causal target with its hint
    Case(Config(d_model=15, nhead=3, batch_first=True), batch=3, src_len=7, tgt_len=4, tgt_mask="causal_bool",
         tgt_is_causal=True, src_key_padding_mask="bool", tgt_key_padding_mask="bool",
         memory_key_padding_mask="bool", seed=2),
    # causal hints on every attention, no padding (the hint replaces the mask inside torch)
    Case(Config(d_model=8, nhead=2, num_encoder_layers=2, num_decoder_layers=2), batch=2, src_len=5, tgt_len=6,
         src_mask="causal_float", src_is_causal=True, tgt_mask="causal_float", tgt_is_causal=True,
         memory_mask="causal_bool", memory_is_causal=True, seed=3),
    # finite additive masks, per-head masks, soft padding penalties, pre-norm, no bias, gelu, large weights
    Case(Config(d_model=12, nhead=4, norm_first=True, bias=False, activation="gelu", num_encoder_layers=3),
         batch=2, src_len=6, tgt_len=5, src_mask="additive", tgt_mask="per_head_additive",
         memory_mask="per_head_bool", src_key_padding_mask="float_finite", memory_key_padding_mask="float_inf",
         weight_scale=3.0, seed=4),
    # dropout in the configuration must do nothing in eval mode; a custom activation; unbatched masks
    Case(Config(d_model=16, nhead=8, dropout=0.5, activation=tanh_gelu, layer_norm_eps=0.5), batch=None,
         src_len=8, tgt_len=3, src_mask="random_bool", tgt_mask="random_inf", memory_mask="additive",
         src_key_padding_mask="bool", tgt_key_padding_mask="float_inf", seed=5),
)


def pinned(test):
    """Apply every PINNED case as an @example."""
    for case in PINNED:
        test = example(case=case)(test)
    return test


@skip_when_nothing_supported
@examples(1.5, suppress=DECLINED)
@given(case=cases())
@pinned
def test_transformer_matches_torch_in_float64(target, device, case):
    check_whole_model(target, case, device, torch.float64, grads=True)


# Policy regressions from the no-false-alarm runs (correct handmade, float32): ill-conditioned tiny models whose
# error passed PyTorch's lucky single-rounding error (fixed by the jittered yardstick), and one whose error
# beat a 16-ulp floor (fixed by the 256-ulp floor; see reference/tolerance.py). Rounding depends on the thread
# count: the second fails a 16-ulp floor with torch.set_num_threads(1) (as measured), not with 2 threads.
FALSE_ALARMS_FLOAT32 = (
    Case(Config(d_model=2, nhead=2, num_encoder_layers=3, num_decoder_layers=1, dim_feedforward=3, dropout=0.5,
                norm_first=True, bias=False, batch_first=True), batch=None, src_len=5, tgt_len=6,
         src_mask="additive", tgt_mask="random_inf", memory_mask="per_head_bool", src_key_padding_mask="bool",
         tgt_key_padding_mask="float_inf", seed=1690010107),
    Case(Config(d_model=2, nhead=2, num_encoder_layers=3, num_decoder_layers=1, dim_feedforward=48, dropout=0.5,
                activation=tanh_gelu, norm_first=True, bias=False, batch_first=True), batch=None, src_len=7,
         tgt_len=7, src_mask="additive", tgt_mask="per_head_additive", memory_mask="random_inf",
         tgt_key_padding_mask="float_finite", tgt_is_causal=False, seed=16169),
)


@skip_when_nothing_supported
@examples(1.0, suppress=DECLINED)
@given(case=cases())
@pinned
@example(case=FALSE_ALARMS_FLOAT32[0])
@example(case=FALSE_ALARMS_FLOAT32[1])
def test_transformer_matches_torch_in_float32(target, device, case):
    check_whole_model(target, case, device, torch.float32, grads=True)


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=lambda d: str(d).replace("torch.", ""))
@skip_when_nothing_supported
@examples(0.75, suppress=DECLINED)
@given(case=cases())
@pinned
def test_transformer_matches_torch_in_low_precision(target, device, dtype, case):
    """bfloat16 and float16: gradients too where the activation is smooth (see helpers)."""
    skip_unless_dtype_runs(dtype, device)
    grads = low_precision_grads_comparable(dtype, is_smooth(case.config))
    check_whole_model(target, case, device, dtype, grads=grads)
