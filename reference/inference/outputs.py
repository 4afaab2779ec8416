"""A target's result read as the level's outputs: the output tensor and, when it returns them, attention weights."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor


def read_outputs(out: Any) -> dict[str, Tensor]:
    """A target's result as {"output", "weights"}: a tensor, a tuple/list (output first), a dict or an object
    with ``last_hidden_state``."""
    if isinstance(out, Tensor):
        return {"output": out}
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        second = out[1] if len(out) > 1 and isinstance(out[1], Tensor) else None
        return {"output": out[0], **({"weights": second} if second is not None else {})}
    if isinstance(out, Mapping):
        for key in ("output", "out", "last_hidden_state", "hidden_states"):
            if isinstance(out.get(key), Tensor):
                weights = out.get("weights", out.get("attn_weights", out.get("attentions")))
                return {"output": out[key], **({"weights": weights} if isinstance(weights, Tensor) else {})}
    hidden = getattr(out, "last_hidden_state", None)
    if isinstance(hidden, Tensor):
        return {"output": hidden}
    raise TypeError(f"the target returned a {type(out).__name__}, not a Tensor, a tuple or a dict")
