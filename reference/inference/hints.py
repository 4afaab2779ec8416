"""What code checked at a level it does not implement is told: why, and where to check it instead.

Each hint is measured from the target's structure, never from its names: a module that normalizes inside,
checked where the built-in has no norm (a post-norm sublayer checked as attention); projections one head's
width wide (one shared by every head); a model that looks up token embeddings, given embedded sequences; a
whole model assembled from parts it is handed, at a level that builds no parts.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from reference.inference.record import Recording


def unpaired(missing: Mapping[str, list[tuple[int, int]]], shapes: Mapping[str, tuple[int, ...]],
             unpaired: list[str], params: Mapping[str, Tensor], rec: Recording, builtin_rec: Recording) -> list[str]:
    """Lines for a map that does not pair one to one: tensors of the target used by a ``layer_norm`` where the
    built-in has none; square target matrices a whole fraction of the width of the unpaired built-in ones."""
    lines = []
    normed = [n for n in unpaired if n in rec.uses and rec.uses[n].op == "layer_norm"]
    if normed and not any(use.op == "layer_norm" for use in builtin_rec.uses.values()):
        lines.append(f"  the target normalizes ({', '.join(normed)} in a layer_norm) where the built-in has no norm: "
                     "a module that adds its residual and normalizes inside is a whole sublayer; check the layer "
                     "that holds it (--as encoder_layer or decoder_layer)")
    widths = {shapes[n][1] for n in missing if len(shapes[n]) == 2}  # the input widths of unpaired built-in matrices
    narrow = [n for n in unpaired if params[n].dim() == 2 and params[n].shape[0] == params[n].shape[1]
              and any(w > params[n].shape[1] and w % params[n].shape[1] == 0 for w in widths)]
    if narrow:
        d = params[narrow[0]].shape[1]
        width = max(w for w in widths if w % d == 0)
        lines.append(f"  {', '.join(narrow)} are {d} x {d}, 1/{width // d} of the built-in's width {width}: "
                     "projections applied to each head's slice of the input (one shared by every head?), where the "
                     "built-in projects the whole width; parity diagnose measures it")
    return lines


def embeds(model: nn.Module, level: str) -> str:
    """A sentence for a call that failed, when ``model`` looks up token embeddings (no level but decoder_only
    feeds it token ids)."""
    tables = [name for name, m in model.named_modules() if isinstance(m, nn.Embedding)]
    if not tables or level == "decoder_only":
        return ""
    return (f". It looks up token embeddings ({', '.join(tables)}: nn.Embedding), so it takes token ids, where the "
            f"{level} level gives it embedded sequences: check the layers or stacks inside it instead (their "
            "classes with --as encoder_layer, decoder_layer, encoder or decoder), or a GPT with --as decoder_only")


def assembled(name: str, level: str, modules: list[str]) -> str:
    """Why a class whose constructor takes ``modules`` (used as modules by its source) is not built at ``level``."""
    return (f"cannot construct {name} for level {level!r}: its source uses {', '.join(modules)} as modules, and "
            "the harness builds a target's parts only at the layer and stack levels. Check those parts' classes at "
            "their own level (--as encoder_layer, decoder_layer, encoder or decoder), or pass a zero-argument "
            f"factory (functools.partial({name}, ...)) or an instance")
