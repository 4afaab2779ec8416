"""``parity diagnose`` on issue 18's one-bug twins (issue 19's "done when"): for each, the place printed as first
diverging and the cause printed there; each correct twin is equivalent.

The twins are tests/targets/calling_targets.py (``...Bug``, levels as tests/inference/test_calling_real_styles.py
checks them) and tests/targets/construct_targets.py / construct_stack_targets.py (levels as
tests/inference/test_construct_real_styles.py checks them); each module's docstring says what the bug is. The
place is the built-in submodule the isolated table prints first ("" is the module itself; for a bug that shows
only in the gradients, the gradient table's). The cause is a catalogue key, or for a cause measured at the place
outside the catalogue (key "measured") the words that name it. A twin whose bug is invented, left unexplained or
joined by another cause fails.
"""

from __future__ import annotations

import pytest

from reference.diagnose.pipeline import diagnose
from reference.diagnose.report import Diagnosis
from reference.diagnose.runs import one_thread

C, K, S = "tests.targets.calling_targets", "tests.targets.construct_targets", "tests.targets.construct_stack_targets"

# (correct twin, level, its bug twin, the place, the cause: a catalogue key or, for "measured", the words)
TWINS = [
    (f"{C}:MaskArgAttention", "attention", "", "scale_by_head_dim"),
    (f"{C}:KeywordOnlyEncoderLayer", "encoder_layer", "self_attn", "head_merge_without_transpose"),
    (f"{C}:NamedInputsDecoderLayer", "decoder_layer", "norm3", "residual around ff skips part of the layer"),
    (f"{C}:ExtendedMaskEncoderLayer", "encoder_layer", "norm1", "layer_norm_unbiased_variance"),
    (f"{C}:LSNMaskAttention", "attention", "", "softmax_over_queries"),
    (f"{C}:IntMaskEncoder", "encoder", "layers.1.self_attn", "padding_ignored"),  # the mask misses layer 1 on
    (f"{C}:ArgOrderAttention", "attention", "", "query_as_key"),
    (f"{C}:BatchMaskGPT", "decoder_only", "layers.0", "residual around self_attn carries the normalized input"),
    (f"{K}:KeyedBlock", "decoder_only", "layers.0.self_attn", "causal_off_by_one"),
    (f"{K}:SettingsLayer", "encoder_layer", "self_attn", "softmax_over_queries"),
    (f"{K}:RelayLayer", "encoder_layer", "norm2", "residual around ff carries the normalized input"),
    # raw parameters in one module: the whole block is the one place the map reaches
    (f"{K}:PlainBlock", "encoder_layer", "self_attn+linear1+linear2+norm1+norm2", "layer_norm_unbiased_variance"),
    (f"{K}:BiasOnlyOut", "attention", "", "head_merge_without_transpose"),
    (f"{K}:HeadPacked", "encoder_layer", "self_attn", "scale_by_head_dim"),
    (f"{K}:GappedStack", "encoder", "norm", "bias subtracted instead of added"),
    (f"{K}:FF_INSTANCE", "feed_forward", "linear2", "gelu, sigmoid approximation"),
    (f"{K}:SwitchedInputBias", "attention", "", "scale_by_head_dim"),  # checked with use_bias=True
    (f"{S}:SeqFirstSeq2Seq", "transformer", "decoder.layers.0.multihead_attn", "memory_padding_ignored"),
    (f"{S}:SpecDecoder", "decoder", "layers.0.self_attn", "tgt_mask_ignored"),
]
# causes that say the same as the expected one at the same place (the catalogue's stack-wide key and the fit's)
SAME = {"padding_ignored": {"src_padding_ignored"}}


def bug_of(spec: str) -> str:
    return f"{spec}_BUG" if spec.endswith("_INSTANCE") else f"{spec}Bug"


def place_of(d: Diagnosis) -> str | None:
    """The first diverging place: the isolated table's, else (outputs all agree) the gradient table's."""
    for mode in ("isolated", "gradients"):
        table = next((t for t in d.localization if t.mode == mode), None)
        if table is not None and table.first is not None:
            return table.first.name
    return None


def names(d: Diagnosis, cause: str) -> bool:
    return any(c.key == cause or c.key in SAME.get(cause, ()) or (c.key == "measured" and cause in c.does)
               for c in d.causes)


@pytest.mark.slow
@pytest.mark.parametrize(("spec", "level", "place", "cause"), TWINS, ids=[t[0].split(":")[1] for t in TWINS])
def test_the_bug_twin_is_diagnosed_with_its_place_and_cause(spec: str, level: str, place: str, cause: str) -> None:
    with one_thread():
        d = diagnose(bug_of(spec), level=level, reproduce=False)
    shown = f"{d.verdict}; place {place_of(d)!r}; causes {[(c.key, c.does) for c in d.causes]}; {d.unexplained}"
    assert d.verdict == "divergent", shown
    assert place_of(d) == place, shown
    assert names(d, cause), shown
    assert not d.unexplained and d.explained, shown
    invented = [c for c in d.causes if not (c.key == cause or c.key in SAME.get(cause, ())
                                            or (c.key == "measured" and cause in c.does))]
    assert not invented, shown


@pytest.mark.slow
@pytest.mark.parametrize(("spec", "level"), [t[:2] for t in TWINS], ids=[t[0].split(":")[1] for t in TWINS])
def test_the_correct_twin_is_equivalent(spec: str, level: str) -> None:
    with one_thread():
        d = diagnose(spec, level=level, reproduce=False)
    assert d.verdict == "equivalent", [(f.name, f.verdict, f.detail) for f in d.families]
    assert not d.causes
