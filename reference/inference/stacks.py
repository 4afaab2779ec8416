"""Construct a stack whose constructor takes a layer: ``Encoder(encoder_layer, num_layers, norm=None)``, as
torch's ``nn.TransformerEncoder`` and many users' stacks are written.

The layer argument is built from the level's configuration first (through its own class's parameter names,
``reference.inference.construct.build`` at the layer's level), the class found from the parameter's annotation
or, failing that, a class named ``...EncoderLayer``/``...DecoderLayer`` in the stack's module, or the first
class there measured as a layer (reference/inference/parts.py); the final norm
(a ``norm`` parameter) is built from the class of the layer's own norms when the case has one, else None.
"""

from __future__ import annotations

import inspect
import sys
import typing
from collections.abc import Callable
from typing import Any

from torch import nn

import reference.inference.parts as parts

LAYER_PARAMS = ("encoder_layer", "decoder_layer", "layer", "block")
NORM_PARAMS = ("norm", "final_norm", "norm_layer", "ln_f")
LAYER_LEVEL = {"encoder": "encoder_layer", "decoder_only": "encoder_layer", "decoder": "decoder_layer"}
STACK_ONLY = ("num_layers", "num_encoder_layers", "num_decoder_layers", "final_norm")


def layer_parameter(params: list[inspect.Parameter], level: str) -> inspect.Parameter | None:
    """The constructor's required layer parameter at a stack level, or None."""
    if level not in LAYER_LEVEL:
        return None
    return next((p for p in params if p.name in LAYER_PARAMS and p.default is inspect.Parameter.empty), None)


def _annotated_class(cls: Any, param: inspect.Parameter) -> type | None:
    annotation: Any = param.annotation
    if isinstance(annotation, str):
        try:
            annotation = typing.get_type_hints(cls.__init__).get(param.name, annotation)
        except Exception:
            annotation = getattr(sys.modules.get(cls.__module__), annotation, annotation)
    found = annotation if inspect.isclass(annotation) else None
    return found if found is not None and issubclass(found, nn.Module) and found is not nn.Module else None


def _named_class(cls: Any, layer_level: str) -> type | None:
    suffix = "EncoderLayer" if layer_level == "encoder_layer" else "DecoderLayer"
    module = sys.modules.get(cls.__module__)
    found = [v for name, v in vars(module).items() if name.endswith(suffix) and inspect.isclass(v)
             and issubclass(v, nn.Module)] if module is not None else []
    return found[0] if found else None


def stack_arguments(cls: Any, params: list[inspect.Parameter], options: dict[str, Any], level: str,
                    build: Callable[[Any, dict[str, Any], str], Any],
                    error: type[Exception]) -> tuple[dict[str, Any], dict[str, str]]:
    """(values for the layer and norm parameters, option -> the parameter that took it) for ``cls`` at a stack
    ``level``; ``build`` is ``construct.build``. Raises ``error`` when the layer's class cannot be found."""
    param = layer_parameter(params, level)
    assert param is not None, "called for a stack class only"
    layer_level = LAYER_LEVEL[level]
    layer_cls = _annotated_class(cls, param) or _named_class(cls, layer_level)
    if layer_cls is None:  # the class of the user's module measured as a layer (reference/inference/parts.py)
        found, _, _ = parts.arguments(cls, {param.name: "layer"}, options, level, build)
        layer_cls = type(found[param.name]) if param.name in found else None
    if layer_cls is None:
        raise error(f"cannot construct {cls.__qualname__}'s {param.name} for level {level!r}: annotate it with the "
                    f"layer's class, or pass a zero-argument factory or an instance")
    layer = build(layer_cls, {k: v for k, v in options.items() if k not in STACK_ONLY}, layer_level)
    values: dict[str, Any] = {param.name: layer.model}
    taken = {option: f"{param.name}.{name}" for option, name in layer.plan.taken.items()}
    norm = next((p.name for p in params if p.name in NORM_PARAMS), None)
    if norm is not None and "final_norm" in options:
        values[norm] = None
        if options["final_norm"]:
            norms = [type(m) for m in layer.model.modules() if type(m).__name__.endswith("Norm")]
            norm_cls = norms[0] if norms else nn.LayerNorm
            values[norm] = build(norm_cls, {"normalized_shape": (options["d_model"],),
                                            "eps": options.get("layer_norm_eps", 1e-5),
                                            "bias": options.get("bias", True)}, "layer_norm").model
        taken["final_norm"] = norm
    return values, taken
