"""``parity diagnose`` on the one-bug twins of tests/targets/lead_targets.py (traits of real code: a module keeping
its last probabilities, heads as separate modules of a fixed-size instance, a feed-forward of kernel-1
convolutions whose output is channels-first inside): the place and the cause, or, where no fit measures the
cause, an Unexplained line at the right place; the correct twins are equivalent."""

from __future__ import annotations

import pytest

from reference.diagnose.pipeline import diagnose
from reference.diagnose.runs import one_thread
from tests.diagnose.test_diagnose_twins import names, place_of

M = "tests.targets.lead_targets"
NAMED = [("KeepsProbabilities", "KeepsProbabilitiesBug", "attention", "", "softmax_over_queries"),
         ("head_units", "head_units_bug", "attention", "", "scale_by_d_model")]


@pytest.mark.slow
@pytest.mark.parametrize(("correct", "buggy", "level", "place", "cause"), NAMED, ids=[n[1] for n in NAMED])
def test_place_and_cause(correct: str, buggy: str, level: str, place: str, cause: str) -> None:
    with one_thread():
        d = diagnose(f"{M}:{buggy}", level=level, reproduce=False)
        right = diagnose(f"{M}:{correct}", level=level, reproduce=False)
    shown = f"{d.verdict}; place {place_of(d)!r}; causes {[(c.key, c.does) for c in d.causes]}; {d.unexplained}"
    assert d.verdict == "divergent" and place_of(d) == place and names(d, cause), shown
    assert not d.unexplained and [c.key for c in d.causes] == [cause], shown
    assert right.verdict == "equivalent" and not right.causes, [(f.name, f.verdict) for f in right.families]


@pytest.mark.slow
def test_code_after_the_last_mapped_submodule_is_the_place_when_every_submodule_agrees() -> None:
    """The activation applied after the second convolution: both convolutions (channels-first, matched to the
    built-in's linears by a permutation) agree; the place is after linear2, unexplained, nothing invented."""
    with one_thread():
        d = diagnose(f"{M}:PointwiseConvFFBug", level="feed_forward", reproduce=False)
        right = diagnose(f"{M}:PointwiseConvFF", level="feed_forward", reproduce=False)
    assert d.verdict == "divergent" and not d.causes, d.causes
    assert d.unexplained.startswith("after linear2 (the target's contract): every mapped submodule agrees"), \
        d.unexplained
    assert right.verdict == "equivalent", [(f.name, f.verdict) for f in right.families]
