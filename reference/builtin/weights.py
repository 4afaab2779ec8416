"""The weight bridge between nn.Transformer's parameter names and handmade's.

handmade names its submodules and parameters as torch does, so every tensor has the same dotted name on
both sides except inside attention: torch packs q, k and v into ``in_proj_weight`` (3E, E) and
``in_proj_bias`` (3E) (or ``q_proj_weight``, ``k_proj_weight``, ``v_proj_weight`` when kdim/vdim differ
from embed_dim), where handmade keeps the paper's separate projections ``q_proj``, ``k_proj``, ``v_proj``.
The map works on any component (attention, layer norm, layers, stacks, the whole model) because it
rewrites leaf names, not prefixes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

# A packed torch tensor -> the three handmade tensors it holds, in row order.
PACKED: dict[str, tuple[str, str, str]] = {
    "in_proj_weight": ("q_proj.weight", "k_proj.weight", "v_proj.weight"),
    "in_proj_bias": ("q_proj.bias", "k_proj.bias", "v_proj.bias"),
}
# torch's separate projections (kdim/vdim differ from embed_dim) -> handmade's.
SEPARATE: dict[str, str] = {f"{x}_proj_weight": f"{x}_proj.weight" for x in "qkv"}


class WeightMapError(ValueError):
    """The two models' parameters do not correspond one to one with equal shapes."""


@dataclass(frozen=True)
class TensorCopy:
    """handmade tensor ``handmade_key`` is chunk ``chunk`` (of 3, by rows) of torch's ``torch_key``; None = whole."""

    torch_key: str
    handmade_key: str
    chunk: int | None


def handmade_keys(torch_key: str) -> list[tuple[str, int | None]]:
    """The handmade name(s) of one torch parameter name, with the chunk each holds."""
    prefix, _, leaf = torch_key.rpartition(".")
    base = f"{prefix}." if prefix else ""
    if leaf in PACKED:
        return [(base + part, i) for i, part in enumerate(PACKED[leaf])]
    return [(base + SEPARATE.get(leaf, leaf), None)]


def copy_plan(torch_model: nn.Module, handmade_model: nn.Module) -> list[TensorCopy]:
    """Pair every tensor of both models exactly once, checking shapes; raise WeightMapError otherwise."""
    t_state, h_state = torch_model.state_dict(), handmade_model.state_dict()
    links, problems, used = [], [], set()
    for t_key, t_val in t_state.items():
        for h_key, chunk in handmade_keys(t_key):
            if h_key not in h_state:
                problems.append(f"torch {t_key} -> handmade {h_key}: no such handmade tensor")
                continue
            if h_key in used:
                problems.append(f"handmade {h_key} is the target of two torch tensors")
            used.add(h_key)
            expected = t_val.shape if chunk is None else t_val.chunk(3)[chunk].shape
            if h_state[h_key].shape != expected:
                problems.append(
                    f"torch {t_key}{'' if chunk is None else f' chunk {chunk}'} has shape {tuple(expected)}, "
                    f"handmade {h_key} has shape {tuple(h_state[h_key].shape)}"
                )
            links.append(TensorCopy(t_key, h_key, chunk))
    problems += [f"handmade {k} has no torch counterpart" for k in h_state if k not in used]
    if problems:
        raise WeightMapError(
            f"the models' parameters do not correspond one to one ({len(problems)} problems):\n  "
            + "\n  ".join(problems)
        )
    return links


@torch.no_grad()
def copy_torch_to_handmade(torch_model: nn.Module, handmade_model: nn.Module) -> None:
    """Load the built-in model's weights into the hand-written one (q/k/v split from the packed tensors)."""
    t_state, h_state = torch_model.state_dict(), handmade_model.state_dict()
    for link in copy_plan(torch_model, handmade_model):
        value = t_state[link.torch_key]
        h_state[link.handmade_key].copy_(value if link.chunk is None else value.chunk(3)[link.chunk])


@torch.no_grad()
def copy_handmade_to_torch(handmade_model: nn.Module, torch_model: nn.Module) -> None:
    """Load the hand-written model's weights into the built-in one (q/k/v packed back together)."""
    t_state, h_state = torch_model.state_dict(), handmade_model.state_dict()
    for link in copy_plan(torch_model, handmade_model):
        target = t_state[link.torch_key]
        target = target if link.chunk is None else target.chunk(3)[link.chunk]
        target.copy_(h_state[link.handmade_key])
