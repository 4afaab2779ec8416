"""Properties that need no oracle: each compares the target with itself under a transformation that must not
change the answer (extra padded keys, later targets under a causal mask, batch order, head order).

They run against handmade and any ``--impl`` target: nn.Transformer only serves as a container of random
weights, loaded through the target's own ``load_reference``. Float64; the tolerance policy's float64 floor.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, given, reject
from hypothesis import strategies as st
from torch import Tensor, nn

from reference.cases.case import CAUSAL_KINDS, Case
from reference.cases.strategies import cases
from reference.inference.prepare import fastpath, forward_kwargs, prepare, takes_mask
from reference.levels.registry import LEVELS
from reference.targets.contract import NotSupportedError, Target
from reference.verdict.assertions import Context, assert_parity, examples, skip_when_nothing_supported
from reference.verdict.tolerance import judge

pytestmark = pytest.mark.level("transformer")  # whole-model properties

F64 = torch.float64


def as_checked(target: Target, case: Case) -> Case:
    """``case`` as ``target`` is checked on it (options its code fixes, masks it takes); declined: rejected."""
    try:
        return prepare(target, "transformer", case)[0]
    except NotSupportedError:
        reject()


def run(target: Target, case: Case, src: Tensor, tgt: Tensor, kwargs: dict, weights: nn.Module | None = None) -> Tensor:
    """The target's eval-mode output in float64 with ``weights`` (default: the case's) loaded.

    ``case`` must describe ``src`` and ``tgt`` (their lengths): the target's calling convention is the one found
    for the case's own inputs, and a layout decided on one-position sequences may not be the one of longer ones."""
    level = LEVELS["transformer"]
    try:
        case, candidate = prepare(target, "transformer", case)
        with fastpath(False), torch.no_grad():
            model = candidate.build("cpu", F64)
            candidate.load(model, weights if weights is not None else level.seeded_builtin(case))
            model.eval()
            out = candidate.call(model, level.call, {"src": src, "tgt": tgt}, forward_kwargs(kwargs, "cpu"))
    except NotSupportedError:
        reject()
    return out if isinstance(out, Tensor) else out["output"]


def padding_taken(target: Target, keyword: str) -> None:
    """Skip at once when the target takes no such padding mask: no case could ask it (each would be declined)."""
    if not takes_mask(target, "transformer", keyword):
        pytest.skip(f"{target.spec} takes no {keyword}, so padded positions cannot be masked out")


def seq_dim(case: Case) -> int:
    return 1 if case.batch is not None and case.config.batch_first else 0


def check(what: str, case: Case, candidate: Tensor, expected: Tensor) -> None:
    context = Context("transformer (metamorphic)", F64, "cpu", f"{what}: {case.describe()}")
    assert_parity([judge(what, candidate, expected)], context)


def pad_keys(mask: Tensor | None, extra: int, rows: int = 0) -> Tensor | None:
    """An attention mask grown by ``extra`` key columns (and ``rows`` query rows) that block nothing."""
    return None if mask is None else F.pad(mask, (0, extra, 0, rows), value=False if mask.dtype == torch.bool else 0.0)


def pad_padding(mask: Tensor | None, extra: int, length: int, batch: int | None) -> Tensor:
    """A key padding mask grown by ``extra`` padded positions (True, or -inf for a float mask)."""
    if mask is None:
        mask = torch.zeros((batch, length) if batch is not None else (length,), dtype=torch.bool)
    return F.pad(mask, (0, extra), value=True if mask.dtype == torch.bool else float("-inf"))


def grow(x: Tensor, extra: int, dim: int, seed: int) -> Tensor:
    """``x`` with ``extra`` random positions appended along ``dim``."""
    shape = list(x.shape)
    shape[dim] = extra
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=F64)
    return torch.cat([x, 3.0 * noise], dim=dim)


@skip_when_nothing_supported  # a target that takes no padding mask, say, cannot be asked some of these
@examples(1, suppress=(HealthCheck.filter_too_much,))  # a target may decline many cases
@given(case=cases(), extra=st.integers(1, 3))
def test_extra_padded_source_positions_change_no_output(target, case, extra):
    padding_taken(target, "src_key_padding_mask")
    case = as_checked(target, case)
    src, tgt, kw = case.tensors()
    expected = run(target, case, src, tgt, kw)
    S = case.src_len
    grown = dict(kw, src_mask=pad_keys(kw["src_mask"], extra, extra), memory_mask=pad_keys(kw["memory_mask"], extra),
                 src_key_padding_mask=pad_padding(kw["src_key_padding_mask"], extra, S, case.batch),
                 memory_key_padding_mask=pad_padding(kw["memory_key_padding_mask"], extra, S, case.batch))
    if grown["src_is_causal"]:  # the grown mask is no longer causal, so neither is the hint
        grown["src_is_causal"] = None
    out = run(target, case.replace(src_len=S + extra), grow(src, extra, seq_dim(case), case.seed + 7), tgt, grown)
    check("output with padded source positions added", case, out, expected)


@skip_when_nothing_supported  # a target that takes no padding mask, say, cannot be asked some of these
@examples(1, suppress=(HealthCheck.filter_too_much,))  # a target may decline many cases
@given(case=cases(), extra=st.integers(1, 3))
def test_extra_padded_target_positions_change_no_earlier_output(target, case, extra):
    padding_taken(target, "tgt_key_padding_mask")
    case = as_checked(target, case)
    src, tgt, kw = case.tensors()
    expected = run(target, case, src, tgt, kw)
    T = case.tgt_len
    grown = dict(kw, tgt_mask=pad_keys(kw["tgt_mask"], extra, extra), tgt_is_causal=None,
                 tgt_key_padding_mask=pad_padding(kw["tgt_key_padding_mask"], extra, T, case.batch),
                 memory_mask=pad_keys(kw["memory_mask"], 0, extra))
    if kw["memory_is_causal"]:
        assume(False)  # a causal memory hint stands for a (T, S) mask; growing T changes what it means
    out = run(target, case.replace(tgt_len=T + extra), src, grow(tgt, extra, seq_dim(case), case.seed + 7), grown)
    check("output at the original target positions", case, out.narrow(seq_dim(case), 0, T), expected)


@skip_when_nothing_supported  # a target that takes no padding mask, say, cannot be asked some of these
@examples(1, suppress=(HealthCheck.filter_too_much,))  # a target may decline many cases
@given(case=cases(), kind=st.sampled_from(CAUSAL_KINDS), hint=st.sampled_from([None, True]), data=st.data())
def test_output_at_t_ignores_later_targets_under_a_causal_mask(target, case, kind, hint, data):
    assume(case.tgt_len >= 2)
    case = as_checked(target, case.replace(tgt_mask=kind, tgt_is_causal=hint))
    assume(case.tgt_mask == kind)  # a target that takes no tgt_mask cannot be asked this
    t = data.draw(st.integers(0, case.tgt_len - 2), label="t")
    src, tgt, kw = case.tensors()
    expected = run(target, case, src, tgt, kw).narrow(seq_dim(case), 0, t + 1)
    changed = grow(tgt.narrow(seq_dim(case), 0, t + 1), case.tgt_len - t - 1, seq_dim(case), case.seed + 7)
    out = run(target, case, src, changed, kw).narrow(seq_dim(case), 0, t + 1)
    check(f"output at positions 0..{t} after changing later targets", case, out, expected)


@skip_when_nothing_supported  # a target that takes no padding mask, say, cannot be asked some of these
@examples(1, suppress=(HealthCheck.filter_too_much,))  # a target may decline many cases
@given(case=cases(batched=True), data=st.data())
def test_permuting_the_batch_permutes_the_output(target, case, data):
    case = as_checked(target, case)
    assume(case.batch is not None and case.batch >= 2)
    perm = torch.tensor(data.draw(st.permutations(range(case.batch)), label="perm"))
    src, tgt, kw = case.tensors()
    expected = run(target, case, src, tgt, kw)
    dim = 0 if case.config.batch_first else 1
    kw_perm = {k: v[perm] if k.endswith("key_padding_mask") and v is not None else permute_heads_mask(v, case, perm)
               for k, v in kw.items()}
    out = run(target, case, src.index_select(dim, perm), tgt.index_select(dim, perm), kw_perm)
    check("output of the permuted batch", case, out, expected.index_select(dim, perm))


def permute_heads_mask(value: object, case: Case, perm: Tensor, heads: Tensor | None = None) -> object:
    """Reorder a per-head mask (N*H, L, S) by batch ``perm`` and head order ``heads``; other values unchanged."""
    if not isinstance(value, Tensor) or value.dim() != 3:
        return value
    n, h = case.batch or 1, case.config.nhead
    rows = value.view(n, h, *value.shape[1:])[perm]
    return (rows if heads is None else rows[:, heads]).reshape(value.shape)


@torch.no_grad()
def permute_heads_(model: nn.Module, heads: Tensor) -> None:
    """Reorder the heads of every nn.MultiheadAttention: q/k/v rows by head blocks, out_proj columns alike."""
    for m in model.modules():
        if isinstance(m, nn.MultiheadAttention):
            e, h = m.embed_dim, m.num_heads
            m.in_proj_weight.copy_(m.in_proj_weight.view(3, h, e // h, e)[:, heads].reshape(3 * e, e))
            if m.in_proj_bias is not None:
                m.in_proj_bias.copy_(m.in_proj_bias.view(3, h, e // h)[:, heads].reshape(3 * e))
            m.out_proj.weight.copy_(m.out_proj.weight.view(e, h, e // h)[:, heads].reshape(e, e))


@skip_when_nothing_supported  # a target that takes no padding mask, say, cannot be asked some of these
@examples(1, suppress=(HealthCheck.filter_too_much,))  # a target may decline many cases
@given(case=cases(), data=st.data())
def test_permuting_heads_consistently_leaves_the_output_unchanged(target, case, data):
    case = as_checked(target, case)
    assume(case.config.nhead >= 2)
    heads = torch.tensor(data.draw(st.permutations(range(case.config.nhead)), label="heads"))
    src, tgt, kw = case.tensors()
    expected = run(target, case, src, tgt, kw)
    weights = LEVELS["transformer"].seeded_builtin(case)
    permute_heads_(weights, heads)
    identity = torch.arange(case.batch or 1)
    kw_perm = {k: permute_heads_mask(v, case, identity, heads) for k, v in kw.items()}
    out = run(target, case, src, tgt, kw_perm, weights)
    check("output with the heads permuted", case, out, expected)
