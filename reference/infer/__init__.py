"""Infer what a user's Transformer code needs to be checked with no adapter (issue 12).

- ``construct``: build the user's class from a level's configuration through its own parameter names;
- ``calling``: how to call it at a level (argument names, layout, masks, outputs);
- ``weightmap``: which built-in tensor each of its parameters holds, verified by running;
- ``auto.infer_target``: all of it for one level, the layout decided by the values.
"""

from reference.infer.auto import Inference, infer_target
from reference.infer.calling import Convention, infer_calling
from reference.infer.construct import Built, ConstructionError, Plan, build, plan, sizes_from_model
from reference.infer.maps import Link, Source, WeightMap, load_override
from reference.infer.masks import MaskForm, is_causal_mask
from reference.infer.outputs import read_outputs
from reference.infer.weightmap import AmbiguousMapError, MapMismatchError, UnpairedError, infer_weight_map

__all__ = [
    "AmbiguousMapError", "Built", "ConstructionError", "Convention", "Inference", "Link", "MapMismatchError",
    "MaskForm", "Plan", "Source", "UnpairedError", "WeightMap", "build", "infer_calling", "infer_target",
    "infer_weight_map", "is_causal_mask", "load_override", "plan", "read_outputs", "sizes_from_model",
]
