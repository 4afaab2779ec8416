"""Whether the target has a module whose output is a layer's output: a layer's own code is only measured there.

Code that keeps a layer's residual adds in the caller's loop (``for attn, ff in layers: x = attn(x) + x;
x = ff(x) + x``) has no module for the layer: the weight map covers ``layers.0`` by its parts, and the part
returning last gives ``ff(x)``, not ``x + ff(x)``. Reading that as the layer's output invents a cause (the
residual around ff "missing"). So a layer site standing for several target modules is a layer's output only
where it is measured to be one (its output agrees with the built-in layer's); otherwise it is set aside with
what its last part returns, and no layer-output fit runs there. Isolated mode never substitutes the layer's
output for such a part's: the caller would add the residual to it again.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import Tensor

from reference.diagnose.hooks import _layout
from reference.diagnose.mapping import Span
from reference.verdict.tolerance import judge

LAYER = re.compile(r"layers\.\d+$")


def split_layers(mapping: Mapping[str, Span]) -> set[str]:
    """Layer sites whose input and output are two different target modules' (no one module owns the layer)."""
    return {n for n, span in mapping.items() if LAYER.search(n) and span.entry is not span.exit}


def returned_instead(name: str, got: Tensor, expected: Mapping[str, Tensor]) -> str:
    """The built-in tensor inside layer ``name`` that ``got`` (in the built-in's layout) equals, if one does."""
    for inner, tensor in expected.items():
        if inner.startswith(f"{name}.") and tensor.shape == got.shape and judge(inner, got, tensor).passed:
            return inner
    return ""


def set_aside(rows: list, split: set[str], expected: Mapping[str, Tensor], outputs: Mapping[str, Tensor],
              labels: Mapping[str, str]) -> dict[str, str]:
    """Remove from ``rows`` the split layers whose output differs (not measured to be the layer's); name -> why."""
    why: dict[str, str] = {}
    for row in [r for r in rows if r.name in split and not r.passed]:
        out = outputs.get(row.name)
        layout = None if out is None else _layout(expected[row.name].shape, out.shape)
        inner = "" if out is None or layout is None else returned_instead(
            row.name, layout[1](out.to("cpu", torch.float64)), expected)
        last = labels.get(row.name, "").rpartition(" + ")[2] or "its last part"
        said = f"{last} returns {inner}'s output" if inner else f"{last}'s output is not {row.name}'s"
        why[row.name] = (f"no target module returns {row.name}'s output ({said}; the layer's sums are in the code "
                         "calling its parts): its output is not compared and no layer-output fit runs there")
        rows.remove(row)
    return why
