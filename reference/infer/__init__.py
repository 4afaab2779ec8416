"""Infer what a user's Transformer code needs to be checked with no adapter (issue 12).

- ``construct``: build the user's class from a level's configuration through its own parameter names;
- ``calling``: how to call it at a level (argument names, layout, masks, outputs);
- ``weightmap``: which built-in tensor each of its parameters holds, verified by running;
- ``auto.infer_target``: all of it for one level, the layout decided by the values.
"""

from reference.infer.auto import Inference, infer_target
from reference.infer.calling import Convention, infer_calling, is_causal_mask, read_outputs
from reference.infer.construct import Built, ConstructionError, Plan, build, plan, sizes_from_model
from reference.infer.weightmap import (
    AmbiguousMapError,
    Link,
    MapMismatchError,
    Source,
    UnpairedError,
    WeightMap,
    infer_weight_map,
    load_override,
)

__all__ = [
    "AmbiguousMapError", "Built", "ConstructionError", "Convention", "Inference", "Link", "MapMismatchError",
    "Plan", "Source", "UnpairedError", "WeightMap", "build", "infer_calling", "infer_target", "infer_weight_map",
    "is_causal_mask", "load_override", "plan", "read_outputs", "sizes_from_model",
]
