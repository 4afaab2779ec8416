"""The tiled attention core (handmade/tiled_attention.py) equals F.scaled_dot_product_attention, the default
core and nn.MultiheadAttention: outputs and gradients, every mask kind, fully masked rows, long sequences,
lengths that are not multiples of the blocks, float64 to float16 under the tolerance policy, and dropout.

Lower precisions are judged by ``reference.verdict.tolerance.judge`` against the float64 oracle with PyTorch's own
error at that dtype (F.scaled_dot_product_attention's, or nn.MultiheadAttention's through the engine).
The suite runs on the tiled core too: ``pytest equivalence_tests --impl reference.targets.contract:handmade_tiled``.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import handmade
from handmade.attention import ScaledDotProductAttention
from handmade.tiled_attention import TiledAttention, TiledAttentionFunction, blocks, keep_mask, use_tiled_attention
from reference.cases.case import ATTN_MASKS, PADDING_MASKS
from reference.cases.kinds import AttentionCase
from reference.levels.registry import LEVELS
from reference.verdict.assertions import Context, assert_parity, check
from reference.verdict.engine import HandmadeTwin
from reference.verdict.tolerance import judge

F64, F32, BF16, F16 = torch.float64, torch.float32, torch.bfloat16, torch.float16
INF = float("inf")


def qkv(N: int, H: int, L: int, S: int, D: int, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Random q (N, H, L, D), k and v (N, H, S, D) in float64 (scaled so that softmax rows are peaky)."""
    g = torch.Generator().manual_seed(seed)
    return tuple(2.0 * torch.randn(N, H, n, D, generator=g, dtype=F64) for n in (L, S, S))  # type: ignore[return-value]


def core_mask(kind: str, N: int, H: int, L: int, S: int, seed: int = 1) -> Tensor | None:
    """The additive masks a core receives from MultiheadAttention, each broadcast as it arrives there."""
    g = torch.Generator().manual_seed(seed)
    if kind == "none":
        return None
    if kind == "causal":  # (L, S), -inf above the diagonal: whole tiles are skipped
        return torch.zeros(L, S, dtype=F64).masked_fill(torch.ones(L, S, dtype=torch.bool).triu(1), -INF)
    if kind == "padding":  # (N, 1, 1, S), -inf at the last keys of each sequence
        lengths = torch.randint(1, S + 1, (N,), generator=g)
        return torch.zeros(N, 1, 1, S, dtype=F64).masked_fill(torch.arange(S) >= lengths.view(N, 1, 1, 1), -INF)
    if kind == "finite":  # (N, H, L, S), finite biases
        return 2.0 * torch.randn(N, H, L, S, generator=g, dtype=F64)
    if kind == "mixed":  # (N, 1, L, S): finite values, -inf entries and fully masked rows
        mask = torch.randn(N, 1, L, S, generator=g, dtype=F64)
        mask = mask.masked_fill(torch.rand(N, 1, L, S, generator=g) < 0.4, -INF)
        mask[..., ::3, :] = -INF  # every third query sees no key
        return mask
    raise ValueError(kind)


MASK_KINDS = ("none", "causal", "padding", "finite", "mixed")
SHAPES = (  # (N, H, L, S, D, query_block, key_block): ragged last tiles, one tile, single rows and columns
    (2, 3, 13, 11, 4, 4, 3),
    (1, 2, 7, 9, 3, 2, 5),
    (2, 1, 5, 5, 2, 64, 64),
    (1, 1, 1, 6, 3, 1, 4),
    (1, 2, 6, 1, 5, 4, 1),
)


def tiled(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, query_block: int, key_block: int) -> Tensor:
    return TiledAttention(query_block, key_block)(q, k, v, mask, 0.0)[0]


def sdpa(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    return F.scaled_dot_product_attention(q, k, v, attn_mask=None if mask is None else mask.to(q.dtype))


def outputs_and_grads(fn, q: Tensor, k: Tensor, v: Tensor, cotangent: Tensor) -> dict[str, Tensor]:
    """fn(q, k, v) and the gradients of sum(fn * cotangent) with respect to q, k and v."""
    xs = [x.detach().requires_grad_() for x in (q, k, v)]
    out = fn(*xs)
    grads = torch.autograd.grad(out, xs, cotangent.to(out.dtype))
    return {"output": out.detach(), **{f"grad {n}": g for n, g in zip("qkv", grads, strict=True)}}


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "N{}H{}L{}S{}D{}-blocks{}x{}".format(*s))
@pytest.mark.parametrize("kind", MASK_KINDS)
def test_tiled_core_equals_sdpa_and_the_default_core_in_float64(kind: str, shape: tuple[int, ...]) -> None:
    N, H, L, S, D, bq, bk = shape
    q, k, v = qkv(N, H, L, S, D)
    mask = core_mask(kind, N, H, L, S)
    cot = torch.randn(N, H, L, D, generator=torch.Generator().manual_seed(5), dtype=F64)
    ours = outputs_and_grads(lambda q, k, v: tiled(q, k, v, mask, bq, bk), q, k, v, cot)
    theirs = outputs_and_grads(lambda q, k, v: sdpa(q, k, v, mask), q, k, v, cot)
    default = outputs_and_grads(lambda q, k, v: ScaledDotProductAttention()(q, k, v, mask, 0.0)[0], q, k, v, cot)
    verdicts = [judge(f"{name} vs {which}", ours[name], ref[name])
                for which, ref in (("sdpa", theirs), ("default core", default)) for name in ours]
    assert_parity(verdicts, Context("tiled attention", F64, "cpu", f"mask={kind} shape={shape}"))


@pytest.mark.slow
@pytest.mark.parametrize("kind", MASK_KINDS)
def test_gradcheck_in_float64_including_the_masks_gradient(kind: str) -> None:
    N, H, L, S, D, bq, bk = 2, 2, 5, 7, 3, 2, 3
    q, k, v = (x.requires_grad_() for x in qkv(N, H, L, S, D, seed=3))
    mask = core_mask(kind, N, H, L, S)
    inputs: tuple[Tensor, ...] = (q, k, v)
    if mask is not None and kind in ("finite", "mixed"):  # a finite additive mask is differentiable (a bias)
        mask = mask.masked_fill(torch.isneginf(mask), -1e4) if kind == "mixed" else mask
        inputs = (q, k, v, mask.requires_grad_())
        assert torch.autograd.gradcheck(lambda q, k, v, m: tiled(q, k, v, m, bq, bk), inputs)
    else:
        assert torch.autograd.gradcheck(lambda q, k, v: tiled(q, k, v, mask, bq, bk), inputs)


def test_fully_masked_rows_give_zero_output_and_zero_gradient() -> None:
    q, k, v = qkv(1, 2, 6, 7, 3)
    mask = torch.zeros(1, 1, 6, 7, dtype=F64)
    mask[..., 1, :] = -INF  # query 1 sees nothing
    mask[..., 3:, 5:] = -INF  # a tile blocked entirely for the later queries
    mask[..., 4, :5] = -INF  # query 4 sees nothing either, across two tiles
    cot = torch.ones(1, 2, 6, 3, dtype=F64)
    ours = outputs_and_grads(lambda q, k, v: tiled(q, k, v, mask, 2, 3), q, k, v, cot)
    for row in (1, 4):
        assert torch.equal(ours["output"][..., row, :], torch.zeros(1, 2, 3, dtype=F64))
        assert torch.equal(ours["grad q"][..., row, :], torch.zeros(1, 2, 3, dtype=F64))
    assert torch.isfinite(ours["grad k"]).all() and torch.isfinite(ours["grad v"]).all()
    default = outputs_and_grads(lambda q, k, v: ScaledDotProductAttention()(q, k, v, mask, 0.0)[0], q, k, v, cot)
    assert_parity([judge(n, ours[n], default[n]) for n in ours], Context("tiled attention", F64, "cpu", "blocked"))


def test_an_entirely_masked_input_gives_zeros_not_nan() -> None:
    q, k, v = qkv(1, 1, 4, 5, 2)
    out = outputs_and_grads(lambda q, k, v: tiled(q, k, v, torch.full((4, 5), -INF, dtype=F64), 2, 2),
                            q, k, v, torch.ones(1, 1, 4, 2, dtype=F64))
    assert all(torch.equal(t, torch.zeros_like(t)) for t in out.values())


def test_large_scores_do_not_overflow_the_running_sums() -> None:
    """Scores of +-1000 (exp overflows without the running max): the max is subtracted tile by tile."""
    q, k, v = qkv(1, 2, 9, 10, 4)
    q = q * 60.0
    mask = core_mask("finite", 1, 2, 9, 10) * 300.0
    ours = tiled(q, k, v, mask, 2, 3)
    assert torch.isfinite(ours).all()
    assert_parity([judge("output", ours, sdpa(q, k, v, mask))], Context("tiled attention", F64, "cpu", "large"))


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [F32, BF16, F16], ids=str)
@pytest.mark.parametrize("kind", MASK_KINDS)
def test_low_precision_is_no_worse_than_sdpas_own_error(kind: str, dtype: torch.dtype) -> None:
    """float32 accumulation: judged against the float64 oracle with F.scaled_dot_product_attention's own error."""
    N, H, L, S, D = 2, 2, 37, 29, 8
    q, k, v = (x.to(dtype).to(F64) for x in qkv(N, H, L, S, D, seed=11))  # inputs exactly representable
    mask = core_mask(kind, N, H, L, S)
    cot = torch.randn(N, H, L, D, generator=torch.Generator().manual_seed(2), dtype=F64).to(dtype)
    low = [x.to(dtype) for x in (q, k, v)]
    lmask = None if mask is None else mask.to(dtype)
    oracle = outputs_and_grads(lambda q, k, v: sdpa(q, k, v, mask), q, k, v, cot.to(F64))
    own = outputs_and_grads(lambda q, k, v: sdpa(q, k, v, lmask), *low, cot)
    ours = outputs_and_grads(lambda q, k, v: tiled(q, k, v, lmask, 8, 5), *low, cot)
    assert all(t.dtype == dtype for t in ours.values())
    verdicts = [judge(name, ours[name], oracle[name], own[name]) for name in ours]
    assert_parity(verdicts, Context("tiled attention", dtype, "cpu", f"mask={kind}"))


def attention_check(case: AttentionCase, dtype: torch.dtype, query_block: int, key_block: int) -> None:
    """handmade.MultiheadAttention with the tiled core vs nn.MultiheadAttention: the suite's own comparison."""
    level = LEVELS["attention"]
    def prepare(drawn: AttentionCase) -> tuple[AttentionCase, HandmadeTwin]:
        return drawn, HandmadeTwin(use_tiled_attention(level.build("handmade", drawn), query_block, key_block))

    check(level, case, prepare, "cpu", dtype)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [F64, F32, BF16, F16], ids=str)
@pytest.mark.parametrize("attn_mask", ATTN_MASKS)
def test_multihead_attention_with_the_tiled_core_equals_nn_multihead_attention(attn_mask: str,
                                                                              dtype: torch.dtype) -> None:
    padding = PADDING_MASKS[ATTN_MASKS.index(attn_mask) % len(PADDING_MASKS)]  # each kind with some padding kind
    case = AttentionCase(embed_dim=12, num_heads=3, batch=2, query_len=23, key_len=19, attn_mask=attn_mask,
                         key_padding_mask=padding, need_weights=False, batch_first=True, seed=7)
    attention_check(case, dtype, 4, 6)


@pytest.mark.parametrize("padding", PADDING_MASKS)
def test_every_key_padding_mask_kind(padding: str) -> None:
    case = AttentionCase(embed_dim=8, num_heads=2, batch=3, query_len=17, key_len=13, attn_mask="random_inf",
                         key_padding_mask=padding, need_weights=False, seed=3)
    attention_check(case, F64, 5, 4)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [F32, BF16], ids=str)
def test_long_sequences_not_multiples_of_the_default_blocks(dtype: torch.dtype) -> None:
    """L = 2,050 queries over S = 2,047 keys (N = 1, H = 1, D = 8) at the default block sizes, causal + padding."""
    case = AttentionCase(embed_dim=8, num_heads=1, batch=1, query_len=2050, key_len=2047, attn_mask="causal_float",
                         key_padding_mask="float_inf", need_weights=False, seed=4)
    level = LEVELS["attention"]
    check(level, case, lambda drawn: (drawn, HandmadeTwin(use_tiled_attention(level.build("handmade", drawn)))), "cpu",
          dtype)


def test_long_self_attention_in_float64_equals_sdpa() -> None:
    q, k, v = qkv(1, 1, 2048, 2048, 4, seed=9)
    mask = core_mask("causal", 1, 1, 2048, 2048)
    cot = torch.randn(1, 1, 2048, 4, generator=torch.Generator().manual_seed(1), dtype=F64)
    ours = outputs_and_grads(lambda q, k, v: TiledAttention()(q, k, v, mask, 0.0)[0], q, k, v, cot)
    theirs = outputs_and_grads(lambda q, k, v: sdpa(q, k, v, mask), q, k, v, cot)
    assert_parity([judge(n, ours[n], theirs[n]) for n in ours], Context("tiled attention", F64, "cpu", "L=2048"))


def test_need_weights_uses_the_default_core_and_returns_the_builtins_weights() -> None:
    """The tiled core returns no weights; a call that asks for them runs equation 1 (weights and output)."""
    for average in (True, False):
        case = AttentionCase(embed_dim=8, num_heads=2, batch=2, query_len=9, key_len=7, attn_mask="random_inf",
                             key_padding_mask="bool", need_weights=True, average_attn_weights=average, seed=2)
        attention_check(case, F64, 2, 3)
    q, k, v = qkv(1, 1, 3, 4, 2)
    assert TiledAttention()(q, k, v, None, 0.0)[1] is None


def test_use_tiled_attention_swaps_every_core_and_keeps_the_parameters() -> None:
    model = handmade.Transformer(d_model=8, nhead=2, num_encoder_layers=2, num_decoder_layers=3, dim_feedforward=16)
    keys = list(model.state_dict())
    assert use_tiled_attention(model, 32, 64) is model
    cores = [m.attention for m in model.modules() if isinstance(m, handmade.MultiheadAttention)]
    assert len(cores) == 2 + 2 * 3
    assert all(isinstance(c, TiledAttention) and (c.query_block, c.key_block) == (32, 64) for c in cores)
    assert list(model.state_dict()) == keys
    with pytest.raises(ValueError, match="block sizes"):
        TiledAttention(0, 4)


def test_whole_transformer_with_the_tiled_core_equals_nn_transformer_in_float64() -> None:
    torch.manual_seed(0)
    kwargs = {"d_model": 8, "nhead": 2, "num_encoder_layers": 2, "num_decoder_layers": 2, "dim_feedforward": 16,
              "dropout": 0.0, "batch_first": True, "dtype": F64}
    builtin = nn.Transformer(**kwargs).eval()
    ours = use_tiled_attention(handmade.Transformer(**kwargs), 3, 4).eval()
    from reference.builtin.weights import copy_torch_to_handmade

    copy_torch_to_handmade(builtin, ours)
    src, tgt = torch.randn(2, 11, 8, dtype=F64), torch.randn(2, 9, 8, dtype=F64)
    tgt_mask = nn.Transformer.generate_square_subsequent_mask(9, dtype=F64)
    pad = torch.zeros(2, 11, dtype=torch.bool)
    pad[1, 7:] = True
    kw = {"tgt_mask": tgt_mask, "src_key_padding_mask": pad, "memory_key_padding_mask": pad}
    assert_parity([judge("output", ours(src, tgt, **kw), builtin(src, tgt, **kw))],
                  Context("transformer (tiled)", F64, "cpu"))


# -- dropout -----------------------------------------------------------------------------------------------------

def dropped_reference(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, p: float, seed: int,
                      query_block: int, key_block: int) -> Tensor:
    """Equation 1 materialized, with the tiled core's keep masks (seed, tile) assembled into one (N, H, L, S)."""
    N, H, L, S = *q.shape[:3], k.size(2)
    keep = torch.zeros(N, H, L, S, dtype=torch.bool)
    for i, (r0, r1) in enumerate(blocks(L, query_block)):
        for j, (c0, c1) in enumerate(blocks(S, key_block)):
            keep[:, :, r0:r1, c0:c1] = keep_mask(seed, i, j, torch.Size((N, H, r1 - r0, c1 - c0)), p, q.device)
    weights = ScaledDotProductAttention()(q, k, v, mask, 0.0)[1]
    return (weights * keep / (1.0 - p)) @ v


@pytest.mark.parametrize("kind", ["none", "mixed", "causal"])
def test_dropout_uses_one_mask_per_tile_in_forward_and_backward(kind: str) -> None:
    """Output and every gradient equal a materialized attention that applies the tiles' masks (so backward
    redraws exactly the forward's mask)."""
    N, H, L, S, D, bq, bk, p, seed = 2, 2, 11, 9, 3, 4, 3, 0.3, 12345
    q, k, v = qkv(N, H, L, S, D)
    mask = core_mask(kind, N, H, L, S)
    cot = torch.randn(N, H, L, D, generator=torch.Generator().manual_seed(3), dtype=F64)
    ours = outputs_and_grads(lambda q, k, v: TiledAttentionFunction.apply(q, k, v, mask, p, bq, bk, seed),
                             q, k, v, cot)
    ref = outputs_and_grads(lambda q, k, v: dropped_reference(q, k, v, mask, p, seed, bq, bk), q, k, v, cot)
    assert_parity([judge(n, ours[n], ref[n]) for n in ours], Context("tiled attention dropout", F64, "cpu", kind))
    assert not torch.allclose(ours["output"], tiled(q, k, v, mask, bq, bk))  # something was dropped


def test_dropout_masks_are_seeded_by_one_draw_of_the_global_generator() -> None:
    q, k, v = qkv(1, 2, 8, 8, 3)
    core = TiledAttention(3, 3)
    torch.manual_seed(0)
    first = core(q, k, v, None, 0.5)[0]
    after = torch.rand(1)
    torch.manual_seed(0)
    torch.randint(0, 2**62, ())  # the one draw a call makes
    assert torch.equal(torch.rand(1), after)
    torch.manual_seed(0)
    assert torch.equal(core(q, k, v, None, 0.5)[0], first)  # same seed, same masks
    assert not torch.equal(core(q, k, v, None, 0.5)[0], first)  # the next call draws new ones
    assert torch.equal(core(q, k, v, None, 0.0)[0], tiled(q, k, v, None, 3, 3))  # p = 0: no dropout at all


def test_dropout_keeps_each_weight_with_probability_one_minus_p_independently() -> None:
    """The default core's F.dropout: Bernoulli(1 - p) per weight, scaled by 1 / (1 - p). Checked on the masks
    of many tiles: the kept fraction and the correlation of neighbouring tiles and elements."""
    p, shape = 0.3, torch.Size((2, 4, 64, 64))
    masks = torch.stack([keep_mask(seed, i, j, shape, p, torch.device("cpu")).double()
                         for seed in (1, 2) for i in range(4) for j in range(4)])  # 32 tiles, 1M weights
    n = masks.numel()
    assert abs(float(masks.mean()) - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n)
    per_tile = masks.flatten(1).mean(dim=1)
    assert float((per_tile - (1 - p)).abs().max()) < 5 * math.sqrt(p * (1 - p) / shape.numel())
    centred = masks.flatten(1) - (1 - p)
    bound = 5 / math.sqrt(shape.numel())
    for a, b in ((centred[:-1], centred[1:]), (centred[:, :-1], centred[:, 1:])):  # next tile, next element
        corr = float((a * b).mean() / (p * (1 - p)))
        assert abs(corr) < bound, corr


def test_dropout_output_has_the_default_cores_distribution() -> None:
    """Mean and variance of each output element over many calls: the tiled and default cores agree with each
    other (and the mean with the dropout-free output) within the sampling error."""
    N, H, L, S, D, p, draws = 1, 2, 10, 12, 3, 0.4, 600
    q, k, v = qkv(N, H, L, S, D, seed=8)
    mask = core_mask("mixed", N, H, L, S)
    exact = tiled(q, k, v, mask, 3, 5)
    torch.manual_seed(0)
    ours = torch.stack([TiledAttention(3, 5)(q, k, v, mask, p)[0] for _ in range(draws)])
    theirs = torch.stack([ScaledDotProductAttention()(q, k, v, mask, p)[0] for _ in range(draws)])
    spread = theirs.std(dim=0).clamp_min(1e-6)
    se = spread / math.sqrt(draws)
    assert float(((ours.mean(dim=0) - exact) / se).abs().max()) < 5.0
    assert float(((theirs.mean(dim=0) - exact) / se).abs().max()) < 5.0
    ratio = ours.std(dim=0)[spread > 1e-3] / spread[spread > 1e-3]
    assert float(ratio.min()) > 0.8 and float(ratio.max()) < 1.25  # F(600, 600) at 5 sigma is within 0.8-1.25


def test_train_mode_multihead_attention_drops_out_and_need_weights_stays_consistent() -> None:
    torch.manual_seed(0)
    mha = use_tiled_attention(handmade.MultiheadAttention(8, 2, dropout=0.5, dtype=F64), 2, 3).train()
    x = torch.randn(7, 2, 8, dtype=F64)
    torch.manual_seed(1)
    a = mha(x, x, x, need_weights=False)[0]
    torch.manual_seed(1)
    assert torch.equal(mha(x, x, x, need_weights=False)[0], a)
    assert not torch.allclose(mha.eval()(x, x, x, need_weights=False)[0], a)
    mha.train()
    out, weights = mha(x, x, x, need_weights=True, average_attn_weights=False)  # the default core: one mask
    v = mha.v_proj(x).view(7, 2, 2, 4).permute(1, 2, 0, 3)
    expected = mha.out_proj((weights @ v).permute(2, 0, 1, 3).reshape(7, 2, 8))
    assert torch.allclose(out, expected)


def test_backward_keeps_only_the_masked_tiles_of_a_causal_mask() -> None:
    """Saved for backward: q, k, v, out, lse and the diagonal tiles of an (L, S) causal mask, not the mask."""
    L, block = 64, 16
    q, k, v = (x.requires_grad_() for x in qkv(1, 2, L, L, 4))
    mask = core_mask("causal", 1, 2, L, L)
    out = tiled(q, k, v, mask, block, block)
    saved = out.grad_fn.saved_tensors  # type: ignore[union-attr]
    assert all(t.numel() < L * L for t in saved if t is not None)
    assert sum(t.numel() for t in saved if t is not None and t.dim() == 2) == (L // block) * block**2
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    expected = torch.autograd.grad(sdpa(q, k, v, mask).sum(), (q, k, v))
    assert_parity([judge(f"grad {n}", g, e) for n, g, e in zip("qkv", grads, expected, strict=True)],
                  Context("tiled attention", F64, "cpu", "causal tiles"))
