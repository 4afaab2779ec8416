"""Each level the target provides equals its built-in: outputs, returned weights and every gradient.

One property per registry level (reference/levels/registry.py), run in every dtype the level takes on every
device: the built-in gets random weights from the drawn seed, the target's component is loaded with them,
and every output and gradient is judged against the float64 oracle under the tolerance policy
(reference/verdict/tolerance.py). A plug-in target (``--impl``) provides the whole-model level; handmade, the
default target, provides every level. The registry's pinned edge cases run in every dtype, whatever is drawn.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from hypothesis import HealthCheck, example, given

from reference.inference.prepare import prepare
from reference.levels.registry import LEVELS, Level
from reference.targets.contract import Target
from reference.verdict.assertions import (
    check,
    declines_of,
    examples,
    skip_unless_dtype_runs,
    skip_when_nothing_supported,
)

DECLINED = (HealthCheck.filter_too_much,)  # a target may decline many configurations; each one is recorded


def _property(entry: Level) -> Callable[..., None]:
    """The property of one level, ``test_<level>_matches_torch``, parametrized over its dtypes."""

    @pytest.mark.level(entry.name)
    @pytest.mark.parametrize("dtype", entry.dtypes, ids=lambda d: str(d).replace("torch.", ""))
    @skip_when_nothing_supported
    @examples(entry.examples, suppress=DECLINED)
    @given(case=entry.cases())
    def test(target: Target, device: str, dtype: torch.dtype, case: object) -> None:
        skip_unless_dtype_runs(dtype, device)
        check(entry, case, lambda drawn: prepare(target, entry.name, drawn), device, dtype,
              declines=declines_of(target, device, dtype))

    for case in dict.fromkeys(case for case, _ in entry.pinned):  # every pinned case, in every dtype
        test = example(case=case)(test)
    test.__name__ = test.__qualname__ = f"test_{entry.name}_matches_torch"
    test.__doc__ = f"The target's {entry.name.replace('_', ' ')} equals {entry.builtin}, outputs and gradients."
    return test


# One property per registry level, written out so that each can be found by name
# (tests/harness/test_architecture.py checks that every level has its own).
test_attention_matches_torch = _property(LEVELS["attention"])
test_layer_norm_matches_torch = _property(LEVELS["layer_norm"])
test_feed_forward_matches_torch = _property(LEVELS["feed_forward"])
test_encoder_layer_matches_torch = _property(LEVELS["encoder_layer"])
test_decoder_layer_matches_torch = _property(LEVELS["decoder_layer"])
test_encoder_matches_torch = _property(LEVELS["encoder"])
test_decoder_matches_torch = _property(LEVELS["decoder"])
test_decoder_only_matches_torch = _property(LEVELS["decoder_only"])
test_transformer_matches_torch = _property(LEVELS["transformer"])
