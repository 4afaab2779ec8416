"""The bug zoo: handmade.Transformer with exactly one classic bug per entry, each a plug-in target.

``ENTRIES`` maps an entry's name to its target spec (``MODULE:OBJECT``, loadable by
``reference.targets.load_target``); the object's ``bug`` attribute says in one line what is wrong.
``parity zoo`` runs the equivalence suite on every entry and prints which property caught it;
``equivalence_tests/test_zoo.py`` asserts that every entry is caught and that the zoo's machinery
without a bug (``_base:control``) is not.
"""

from __future__ import annotations

_FAMILIES = {
    "attention_math": (
        "scale_missing", "scale_by_d_model", "softmax_over_queries", "mask_after_softmax", "softmax_in_float32",
        "attention_dropout_in_eval",
    ),
    "masks": (
        "bool_mask_inverted", "float_mask_as_bool", "padding_on_query_axis", "causal_off_by_one",
        "per_head_mask_head_major", "tgt_mask_ignored", "memory_padding_ignored",
    ),
    "heads": (
        "head_split_without_transpose", "head_merge_without_transpose", "output_projection_missing",
        "qkv_wrong_order", "batch_first_ignored",
    ),
    "norms": ("layer_norm_unbiased_variance", "layer_norm_eps_outside_sqrt", "layer_norm_eps_ignored"),
    "wiring": (
        "norm_first_ignored", "final_norm_missing", "prenorm_residual_from_normed", "cross_attention_reads_decoder",
        "self_cross_shared_weights", "encoder_layers_share_weights", "decoder_reads_src",
    ),
    "feed_forward": ("gelu_tanh_approximation", "dropout_in_eval", "activation_after_second_linear"),
}

ENTRIES: dict[str, str] = {
    name: f"equivalence_tests.zoo.{module}:{name}" for module, names in _FAMILIES.items() for name in names
}
CONTROL = "equivalence_tests.zoo._base:control"
