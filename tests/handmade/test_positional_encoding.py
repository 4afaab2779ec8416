"""handmade.PositionalEncoding equals the paper's formula (section 3.5), computed independently with numpy."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import example, given
from hypothesis import strategies as st

import handmade
from reference.cases.strategies import dtypes, positional_encoding_cases, seeds
from reference.verdict.assertions import Context, assert_parity, examples, skip_unless_dtype_runs
from reference.verdict.tolerance import judge


def paper_table(length: int, d_model: int) -> np.ndarray:
    """PE(pos, 2i) = sin(pos / 10000^(2i / d_model)), PE(pos, 2i + 1) = cos(pos / 10000^(2i / d_model))."""
    pos = np.arange(length, dtype=np.float64)[:, None]
    i = np.arange(d_model)[None, :]
    angle = pos / np.power(10000.0, (2 * (i // 2)) / d_model)
    return np.where(i % 2 == 0, np.sin(angle), np.cos(angle))


def test_paper_table_has_the_known_first_rows():
    """The numpy oracle itself: position 0 is (0, 1, 0, 1, ...); position 1 starts sin(1), cos(1)."""
    table = paper_table(2, 4)
    np.testing.assert_allclose(table[0], [0.0, 1.0, 0.0, 1.0], atol=0)
    np.testing.assert_allclose(table[1], [np.sin(1.0), np.cos(1.0), np.sin(0.01), np.cos(0.01)], rtol=1e-15)


@examples(1.0)
@given(shape=positional_encoding_cases(), layout=st.sampled_from(["seq_first", "batch_first", "unbatched"]),
       dtype=dtypes(), dropout=st.sampled_from([0.0, 0.5]), seed=seeds())
@example(shape=(512, 5000, 64), layout="seq_first", dtype=torch.float64, dropout=0.1, seed=0)
@example(shape=(7, 7, 7), layout="batch_first", dtype=torch.float64, dropout=0.0, seed=1)
@example(shape=(1, 1, 1), layout="unbatched", dtype=torch.float32, dropout=0.5, seed=2)
def test_positional_encoding_adds_the_papers_formula(device, shape, layout, dtype, dropout, seed):
    """x + PE[:S] in every layout and dtype; dropout > 0 does nothing in eval mode."""
    skip_unless_dtype_runs(dtype, device)
    d_model, max_len, length = shape
    module = handmade.PositionalEncoding(d_model, dropout, max_len, batch_first=layout == "batch_first",
                                         device=device, dtype=dtype).eval()
    g = torch.Generator().manual_seed(seed)
    x64 = torch.randn(length, 2, d_model, generator=g, dtype=torch.float64)
    pe = torch.from_numpy(paper_table(length, d_model)).unsqueeze(1)  # (S, 1, E)
    x = x64.to(dtype)  # the rounded input; the oracle adds the exact table to it in float64
    expected = x.double() + pe
    # the best any implementation can do at this dtype: the exact sum, rounded once
    best = expected.to(dtype)
    if layout == "batch_first":
        x, expected, best = x.transpose(0, 1), expected.transpose(0, 1), best.transpose(0, 1)
    elif layout == "unbatched":
        x, expected, best = x[:, 0], expected[:, 0], best[:, 0]
    out = module(x.to(device))
    own = None if dtype == torch.float64 else best
    description = f"d_model={d_model} max_len={max_len} S={length} {layout} dropout={dropout}"
    assert_parity([judge("output", out, expected, own)], Context("positional_encoding", dtype, device, description))
