"""A copy of a user's model that really is a copy: closures over its own modules follow the copy.

``copy.deepcopy`` copies modules but not functions: a forward that calls a lambda built in ``__init__`` over
the model's own submodules (minGPT: ``self.mlpf = lambda x: m.dropout(m.c_proj(m.act(m.c_fc(x))))``) would run
the original's weights, in the original's dtype, from the copy. Here such functions are rebuilt with their
closure cells pointing at the copies. And ``copy.deepcopy`` refuses a tensor that is not a graph leaf: a forward
that keeps its attention weights on the module (``self.attn = p_attn``) leaves one there after any call, so such
tensors are copied detached. A copy's float64 forwards keep float64 where its code casts down
(reference/inference/keep64.py).
"""

from __future__ import annotations

import copy
import types
from typing import TypeVar

from torch import Tensor, nn

from reference.inference.keep64 import install

M = TypeVar("M", bound=nn.Module)


def copy_model(model: M) -> M:
    """``copy.deepcopy(model)``, with every function stored on its modules re-bound to the copied modules."""
    memo: dict[int, object] = {id(value): value.detach().clone() for module in model.modules()
                               for value in vars(module).values()
                               if isinstance(value, Tensor) and value.grad_fn is not None}
    new = copy.deepcopy(model, memo)
    for module in new.modules():
        for name, value in list(vars(module).items()):
            if isinstance(value, types.FunctionType) and value.__closure__:
                cells = tuple(_follow(cell, memo) for cell in value.__closure__)
                module.__dict__[name] = types.FunctionType(value.__code__, value.__globals__, value.__name__,
                                                           value.__defaults__, cells)
    install(new)  # its float64 runs keep float64 where it casts down (reference/inference/keep64.py)
    return new


def _follow(cell: types.CellType, memo: dict[int, object]) -> types.CellType:
    try:
        value = cell.cell_contents
    except ValueError:  # an empty cell (a name not yet bound)
        return cell
    return types.CellType(memo.get(id(value), value))
