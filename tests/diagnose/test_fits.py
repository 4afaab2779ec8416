"""reference/diagnose/fits.py: each fit names the deviation planted, which an independent implementation written
here (functional and einsum code, batch-first inside) computes; a correct output and an unrelated deviation get
no fit."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import reference.diagnose.fits as fits
import reference.diagnose.sums as sums
from reference.catalogue import BY_KEY

D = torch.float64
E, H, N, L, S = 12, 3, 2, 5, 4  # head_dim 4: 1/sqrt(E), 1/E, 1/hd, 1 and sqrt(hd) all differ


def close(fit: fits.Fit, got: Tensor) -> bool:
    finite = got.detach()[torch.isfinite(got.detach())]
    return fit.after <= 1e-10 * max(1.0, float(finite.abs().max()))


def assert_names(found: list[fits.Fit], key: str | None, text: str, got: Tensor) -> None:
    assert found, "no fit"
    best = found[0]
    assert (best.key, text in best.what) == (key, True), found
    assert close(best, got), best
    assert best.before > 1e-4 and best.before > 1e6 * best.after, best


def test_keys_are_in_the_catalogue() -> None:
    assert fits.KEYS - set(BY_KEY) == set()


# --- LayerNorm: written with einsum means and torch.var / torch.std ------------------------------------------

def layer_norm(x: Tensor, w: Tensor | None, b: Tensor | None, *, eps: float = 1e-5, unbiased: bool = False,
               std_eps: bool = False, rms: bool = False, dim: int = -1) -> Tensor:
    n = x.size(dim)
    mean = torch.einsum("...i->...", x.movedim(dim, -1)).unsqueeze(-1).movedim(-1, dim) / n
    c = x if rms else x - mean
    if rms:
        y = c / torch.sqrt(torch.einsum("...i,...i->...", x, x).unsqueeze(-1) / n + eps)
    elif std_eps:
        y = c / (torch.std(x, dim=dim, keepdim=True, unbiased=False) + eps)
    else:
        y = c / torch.sqrt(torch.var(x, dim=dim, keepdim=True, unbiased=unbiased) + eps)
    y = y if w is None else y * w
    return y if b is None else y + b


@pytest.fixture
def norm() -> tuple[nn.LayerNorm, Tensor]:
    torch.manual_seed(0)
    m = nn.LayerNorm(E, dtype=D).eval()
    with torch.no_grad():
        m.weight.normal_()
        m.bias.normal_()
    x = torch.randn(L, N, E, dtype=D) * torch.logspace(-2.5, 0, L, dtype=D).view(L, 1, 1) + 0.3
    return m, x


LN_CASES: dict[str, tuple[dict, str | None, str]] = {
    "eps 1e-6": ({"eps": 1e-6}, "layer_norm_eps_1e-6", "eps = 1e-06 (nn.LayerNorm's is 1e-05)"),
    "eps 1e-12": ({"eps": 1e-12}, "layer_norm_eps_1e-12", "eps = 1e-12"),
    "eps 0.001": ({"eps": 1e-3}, None, "eps = 0.001"),
    "eps fitted": ({"eps": 3.7e-4}, None, "eps = 0.00037 (fitted"),
    "unbiased": ({"unbiased": True}, "layer_norm_unbiased_variance", "unbiased"),
    "eps outside sqrt": ({"std_eps": True}, "layer_norm_eps_outside_sqrt", "std + eps"),
    "rms": ({"rms": True}, None, "RMSNorm: x"),
    "axis 0": ({"dim": 0}, None, "over dim 0"),
    "axis 1": ({"dim": 1}, None, "over dim 1"),
}


@pytest.mark.parametrize("case", list(LN_CASES))
def test_layer_norm_fits(norm: tuple[nn.LayerNorm, Tensor], case: str) -> None:
    m, x = norm
    kw, key, text = LN_CASES[case]
    got = layer_norm(x, m.weight, m.bias, **kw)
    assert_names(fits.fit_component(m, (x,), {}, m(x), got), key, text, got)


@pytest.mark.parametrize(("w", "b", "text"), [(False, False, "weight and bias not applied"),
                                             (False, True, "weight not applied"), (True, False, "bias not applied")])
def test_layer_norm_affine(norm: tuple[nn.LayerNorm, Tensor], w: bool, b: bool, text: str) -> None:
    m, x = norm
    got = F.layer_norm(x, (E,), m.weight if w else None, m.bias if b else None, 1e-5)
    assert_names(fits.fit_component(m, (x,), {}, m(x), got), None, text, got)


# --- attention: einsum over (H, hd, E) weight views, batch-first inside ------------------------------------------

def attend(m: nn.MultiheadAttention, query: Tensor, kv: Tensor, *, add: Tensor | None = None,
           scale: float | None = None, dim: int = -1, order: str = "qkv", proj: bool = True,
           merge: Callable[[Tensor], Tensor] | None = None, split: Callable[[Tensor], Tensor] | None = None,
           keys: Tensor | None = None) -> Tensor:
    """(N, L, E) in, (N, L, E) out; add: an additive (N, H, L, S) mask; keys: what the keys are projected from
    (else kv)."""
    w = dict(zip(order, m.in_proj_weight.view(3, H, E // H, E), strict=True))
    b = dict(zip(order, m.in_proj_bias.view(3, H, E // H), strict=True))
    if split is None:
        q, k, v = (torch.einsum("nle,hde->nhld", x, w[c]) + b[c][:, None]
                   for x, c in ((query, "q"), (kv if keys is None else keys, "k"), (kv, "v")))
    else:
        q, k, v = (split(F.linear(x, w[c].reshape(E, E), b[c].reshape(E))) for x, c in ((query, "q"), (kv, "k"),
                                                                                         (kv, "v")))
    z = torch.einsum("nhld,nhsd->nhls", q, k) * ((E // H) ** -0.5 if scale is None else scale)
    z = z if add is None else z + add
    o = torch.einsum("nhls,nhsd->nhld", torch.softmax(z, dim), v)
    o = torch.einsum("nhld->nlhd", o).reshape(o.size(0), o.size(2), E) if merge is None else merge(o)
    return o @ m.out_proj.weight.T + m.out_proj.bias if proj else o


@pytest.fixture
def mha() -> nn.MultiheadAttention:
    torch.manual_seed(1)
    m = nn.MultiheadAttention(E, H, dtype=D).eval()
    with torch.no_grad():
        m.in_proj_bias.normal_()
        m.out_proj.bias.normal_()
    return m


def blocks(mask: Tensor) -> Tensor:
    return torch.where(mask, -math.inf, 0.0).to(D)


HD = E // H
ATTENTION: dict[str, tuple[dict, str | None, str]] = {
    "1/sqrt(E)": ({"scale": E**-0.5}, "scale_by_d_model",
                  "scores scaled by 0.2887 = 1/sqrt(12) = 1/sqrt(embed_dim), nn.MultiheadAttention uses "
                  "1/sqrt(head_dim) = 0.5"),
    "no scale": ({"scale": 1.0}, "scale_missing", "= 1 (no scale)"),
    "1/hd": ({"scale": 1 / HD}, "scale_by_head_dim", "= 1/4 = 1/head_dim"),
    "1/E": ({"scale": 1 / E}, None, "= 1/12 = 1/embed_dim"),
    "sqrt(hd)": ({"scale": HD**0.5}, None, "= sqrt(4) = sqrt(head_dim)"),
    "scale fitted": ({"scale": 0.137}, None, "scaled by 0.137 (fitted)"),
    "softmax over queries": ({"dim": -2}, "softmax_over_queries", "over the queries"),
    "merge (L, N, E)": ({"merge": lambda o: o.reshape(o.size(2), o.size(0), E).transpose(0, 1)},
                        "head_merge_without_transpose", "reshape(L, N, E)"),
    "merge (N, L, E)": ({"merge": lambda o: o.reshape(o.size(0), o.size(2), E)}, "head_merge_without_transpose",
                        "reshape(N, L, E)"),
    "split (L, N, E)": ({"split": lambda y: y.transpose(0, 1).reshape(y.size(0), H, y.size(1), HD)},
                        "head_split_without_transpose", "of (L, N, E) data"),
    "split (N, L, E)": ({"split": lambda y: y.view(y.size(0), H, y.size(1), HD)}, "head_split_without_transpose",
                        "of (N, L, E) data"),
    "no out_proj": ({"proj": False}, "output_projection_missing", "out_proj not applied"),
    "q and k swapped": ({"order": "kqv"}, "qkv_as_kqv", "q and k swapped"),
    "v and q swapped": ({"order": "vkq"}, "qkv_as_vkq", "as v, k, q"),
}


@pytest.mark.slow
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("case", list(ATTENTION))
def test_attention_fits(mha: nn.MultiheadAttention, case: str, batch_first: bool) -> None:
    kw, key, text = ATTENTION[case]
    mha.batch_first = batch_first
    x, mem = torch.randn(N, L, E, dtype=D), torch.randn(N, S, E, dtype=D)
    kpm = torch.zeros(N, S, dtype=torch.bool)
    kpm[0, -1] = True
    for kv, call in ((x, {}), (mem, {"key_padding_mask": kpm})):  # self-attention; cross-attention, padded
        args = (x, kv, kv) if batch_first else (x.transpose(0, 1), kv.transpose(0, 1), kv.transpose(0, 1))
        pad = None if not call else blocks(kpm)[:, None, None, :]
        got = attend(mha, x, kv, add=pad, **kw)
        got = got if batch_first else got.transpose(0, 1)
        expected = mha(*args, need_weights=False, **call)[0]
        assert_names(fits.fit_component(mha, args, {"need_weights": False, **call}, expected, got), key, text, got)


def test_attention_unbatched(mha: nn.MultiheadAttention) -> None:
    x = torch.randn(L, E, dtype=D)
    got = attend(mha, x[None], x[None], scale=1.0)[0]
    assert_names(fits.fit_component(mha, (x, x, x), {}, mha(x, x, x)[0], got), "scale_missing", "no scale", got)


MASKS = {  # name: (attn_mask, key_padding_mask, additive mask the target applies, key, text)
    "mask ignored": ("causal", None, None, "masks_ignored", "attn_mask ignored"),
    "padding ignored": (None, "pad", None, "padding_ignored", "key_padding_mask ignored"),
    "polarity (NaN rows)": ("random", None, "~random", "bool_mask_inverted", "every key blocked gets NaN"),
    "diagonal blocked too": ("causal", None, "triu0", None, "also blocks the diagonal"),
    "off by one": ("causal", None, "triu2", "causal_off_by_one", "triu(diagonal=2)"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(MASKS))
def test_attention_mask_fits(mha: nn.MultiheadAttention, case: str) -> None:
    torch.manual_seed(2)
    x = torch.randn(N, L, E, dtype=D)
    random = torch.rand(L, L) < 0.4
    random[1] = False  # read inverted: every key of query 1 blocked
    random[:, 0] = False
    ones = torch.ones(L, L, dtype=torch.bool)
    kpm = torch.tensor([[False] * (L - 1) + [True], [False] * L])
    named = {"causal": ones.triu(1), "random": random, "~random": ~random, "triu0": ones.triu(0),
             "triu2": ones.triu(2), "pad": kpm}
    mask_name, pad_name, planted, key, text = MASKS[case]
    mask, pad = named.get(mask_name or ""), named.get(pad_name or "")
    add = None if planted is None else blocks(named[planted])
    got = attend(mha, x, x, add=add).transpose(0, 1)
    call = {"attn_mask": mask, "key_padding_mask": pad, "need_weights": False}
    args = (x.transpose(0, 1),) * 3
    assert_names(fits.fit_component(mha, args, call, mha(*args, **call)[0], got), key, text, got)


# --- nn.Linear and activations ---------------------------------------------------------------------------------

def test_linear_fits() -> None:
    torch.manual_seed(3)
    m = nn.Linear(E, E, dtype=D)
    x = torch.randn(L, N, E, dtype=D)
    got = torch.einsum("lne,ef->lnf", x, m.weight) + m.bias
    assert_names(fits.fit_component(m, (x,), {}, m(x), got), None, "weight used transposed", got)
    got = torch.einsum("lne,fe->lnf", x, m.weight)
    assert_names(fits.fit_component(m, (x,), {}, m(x), got), None, "bias not added", got)


ACTIVATIONS: dict[str, tuple[Callable[[Tensor], Tensor], str | None, str]] = {
    "relu": (lambda x: torch.where(x > 0, x, 0.0), "always_relu", "relu"),
    "gelu": (lambda x: x * 0.5 * (1 + torch.erf(x / math.sqrt(2))), "always_gelu", "gelu (exact"),
    "gelu tanh": (lambda x: 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))),
                  "gelu_tanh_approximation", "tanh approximation"),
    "gelu sigmoid": (lambda x: x / (1 + torch.exp(-1.702 * x)), None, "sigmoid approximation"),
    "silu": (lambda x: x / (1 + torch.exp(-x)), None, "silu"),
    "identity": (lambda x: x.clone(), None, "identity"),
    "leaky 0.2": (lambda x: torch.where(x > 0, x, 0.2 * x), None, "negative slope 0.2"),
    "leaky default": (lambda x: torch.where(x > 0, x, 0.01 * x), None, "0.01 (F.leaky_relu's default)"),
}


@pytest.mark.parametrize("case", list(ACTIVATIONS))
def test_activation_fits(case: str) -> None:
    f, key, text = ACTIVATIONS[case]
    pre = torch.randn(L, N, 4 * E, dtype=D, generator=torch.Generator().manual_seed(4)) * 2
    post = f(pre)
    assert_names(sums.fit_activation(pre, post), key, text, post)


# --- no false fits ---------------------------------------------------------------------------------------------

def test_correct_and_unrelated_get_no_fit(norm: tuple[nn.LayerNorm, Tensor], mha: nn.MultiheadAttention) -> None:
    m, x = norm
    rounding = layer_norm(x, m.weight, m.bias)
    assert 0 < (rounding - m(x)).abs().max() < 1e-12
    for got in (rounding, m(x) * 1.01, m(x) + 1e-3):
        assert fits.fit_component(m, (x,), {}, m(x), got) == []
    q = torch.randn(N, L, E, dtype=D)
    args = (q.transpose(0, 1),) * 3
    expected = mha(*args)[0]
    for got in (attend(mha, q, q).transpose(0, 1), expected * 1.01, expected + 0.01 * torch.randn_like(expected)):
        assert fits.fit_component(mha, args, {}, expected, got) == []
    lin = nn.Linear(E, E, dtype=D)
    for got in (torch.einsum("lne,fe->lnf", x, lin.weight) + lin.bias, lin(x) * 1.01):
        assert fits.fit_component(lin, (x,), {}, lin(x), got) == []
    pre = torch.randn(L, N, 4 * E, dtype=D)
    for post in (F.relu(pre) * 1.01, F.gelu(pre) + 1e-3 * pre, torch.where(pre > 0, pre, 0.5 * pre**2)):
        assert sums.fit_activation(pre, post) == []
    assert fits.fit_component(nn.Dropout(), (x,), {}, x, x * 2) == []


# --- the norm's bias subtracted; what an attention reads from; a norm fitted by its gradient ------------------

def test_layer_norm_bias_subtracted(norm: tuple[nn.LayerNorm, Tensor]) -> None:
    m, x = norm
    got = layer_norm(x, m.weight, None) - m.bias
    assert_names(fits.fit_component(m, (x,), {}, m(x), got), None, "bias subtracted instead of added", got)


@pytest.mark.parametrize(("reads", "key", "text"), [
    ("qqv", "query_as_key", "the keys from the query input"),
    ("qvk", "key_value_swapped", "the keys from the value input, the values from the key input"),
])
def test_attention_input_fits(mha: nn.MultiheadAttention, reads: str, key: str, text: str) -> None:
    torch.manual_seed(3)
    given = {"q": torch.randn(N, L, E, dtype=D), "k": torch.randn(N, L, E, dtype=D), "v": torch.randn(N, L, E, dtype=D)}
    got = attend(mha, given[reads[0]], given[reads[2]], keys=given[reads[1]]).transpose(0, 1)
    args = tuple(given[c].transpose(0, 1) for c in "qkv")
    expected = mha(*args, need_weights=False)[0]
    assert_names(fits.fit_component(mha, args, {"need_weights": False}, expected, got), key, text, got)
    same = (args[0], args[0], args[0])  # one tensor for all three: no input fit can tell anything
    assert not [f for f in fits.fit_component(mha, same, {"need_weights": False}, mha(*same)[0], mha(*same)[0] * 1.5)
                if f.key in ("query_as_key", "key_value_swapped")]


def test_a_norm_differing_only_in_its_gradient_is_fitted_by_it() -> None:
    from reference.diagnose.gradients import norm_fits
    from reference.diagnose.localize import Replay, SubmoduleError

    m = nn.LayerNorm(1, eps=1e-12, dtype=D)
    x = torch.randn(3, 2, 1, dtype=D)  # one feature: zero variance, the output is the bias either way
    x.requires_grad_(True)
    dy = torch.randn(3, 2, 1, dtype=D, generator=torch.Generator().manual_seed(0))
    c = x - x.mean(-1, keepdim=True)
    (got,) = torch.autograd.grad(c / (c.square().mean(-1, keepdim=True).sqrt() + 1e-12), x, dy)
    assert bool(torch.isnan(got).all())
    replay = Replay(calls={"norm1": ((x.detach(),), {})}, expected={"norm1": m(x).detach()}, got={}, fed={},
                    modules={"norm1": m})
    row = SubmoduleError(name="norm1", passed=False, max_abs=math.inf, bound=1e-12, worst={}, candidate=0.0,
                         oracle=0.0)
    found = norm_fits(replay, row, got)
    assert [f.key for f in found] == ["layer_norm_eps_outside_sqrt"], found
    assert norm_fits(replay, row, torch.zeros_like(got)) == []  # the built-in's own gradient: no formula differs
