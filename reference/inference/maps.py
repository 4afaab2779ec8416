"""A weight map: which rows of which built-in tensor each target parameter holds, and how to move weights
and gradients across it. Also the override a user writes when the inference cannot decide.

An override is a dict (or a .json, .toml, or .py file with ``WEIGHT_MAP``) ``{target_param: source}``; a
source is ``"builtin_param"``, ``"builtin_param[rows a:b]"`` (``[a:b]`` too), with ``.T`` when the target
holds it transposed, or a list of sources concatenated along rows; None or "" leaves a parameter as is.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from reference.builtin.weights import WeightMapError

Override = Mapping[str, "str | Sequence[str] | None"]
SOURCE = re.compile(r"^\s*(?P<name>[\w.]+?)\s*(?:\[\s*(?:rows\s+)?(?:(?P<a>\d+)\s*:\s*(?P<b>\d+)|"
                    r"(?P<k>\d+)\s*/\s*(?P<n>\d+))\s*\])?\s*(?P<t>\.T)?\s*$")
OVERRIDE_HELP = (
    "write an override, a JSON/TOML file or a Python dict {target_param: \"builtin_param\"}, with rows "
    "\"builtin_param[rows a:b]\", \".T\" for a transposed tensor and a list to concatenate, e.g. "
    "{\"attn.w1\": \"in_proj_weight[rows 8:16]\", \"proj.weight\": \"out_proj.weight.T\"}; "
    "or write an adapter (the plug-in contract in the README)")


@dataclass(frozen=True)
class Source:
    """Rows ``rows`` (None: all) of built-in parameter ``name``."""

    name: str
    rows: tuple[int, int] | None = None

    def text(self) -> str:
        return self.name if self.rows is None else f"{self.name}[rows {self.rows[0]}:{self.rows[1]}]"


@dataclass(frozen=True)
class Link:
    """Target parameter ``target`` = concat(sources, dim 0), transposed when ``transpose``, reshaped to its shape."""

    target: str
    sources: tuple[Source, ...]
    transpose: bool = False
    how: str = "order and shape"

    def text(self) -> str:
        body = " ++ ".join(s.text() for s in self.sources)
        return f"{body}.T" if self.transpose else body


@dataclass(kw_only=True)
class WeightMap:
    """The verified pairing: load the built-in's weights into a target; gather a target's gradients back."""

    links: tuple[Link, ...]
    builtin_shapes: dict[str, tuple[int, ...]]
    ignored: tuple[str, ...] = ()  # target parameters never used in the forward pass: left as they are
    notes: tuple[str, ...] = ()
    difference: float | None = None  # the verified max |target - built-in| (relative), None before verifying
    verified: bool = False  # the outputs agreed within the output dtype's rounding
    ties: tuple[tuple[str, ...], ...] = field(default=(), repr=False)  # same-shaped tensors ordered by argument
    held: tuple[Source, ...] = ()  # built-in rows with no counterpart in the target: held at zero in the built-in

    @torch.no_grad()
    def hold(self, builtin: nn.Module) -> None:
        """Fix the built-in's rows that have no counterpart at zero, and take their tensors out of the gradients
        (the built-in is then exactly the target's module; what the target does not have is not judged)."""
        if not self.held:
            return
        state = dict(builtin.named_parameters())
        for source in self.held:
            param = state[source.name]
            (param if source.rows is None else param[source.rows[0]:source.rows[1]]).zero_()
            param.requires_grad_(False)

    def _value(self, link: Link, state: Mapping[str, Tensor], shape: torch.Size) -> Tensor:
        parts = [state[s.name] if s.rows is None else state[s.name][s.rows[0]:s.rows[1]] for s in link.sources]
        value = parts[0] if len(parts) == 1 else torch.cat(parts)
        return (value.T if link.transpose else value).reshape(shape)

    @torch.no_grad()
    def load(self, model: nn.Module, builtin: nn.Module) -> None:
        """Copy the built-in's weights into ``model`` (converted to each parameter's dtype and device), the
        built-in's rows with no counterpart held at zero first (``hold``)."""
        self.hold(builtin)
        state = dict(builtin.named_parameters())
        params = dict(model.named_parameters())
        for link in self.links:
            target = params[link.target]
            target.copy_(self._value(link, state, target.shape))

    def grads(self, model: nn.Module) -> dict[str, Tensor]:
        """``model``'s parameter gradients under the built-in's names, pieces put back in their rows.

        A built-in parameter none of whose pieces has a gradient is left out (the engine judges it missing);
        a piece without a gradient is zero.
        """
        params = dict(model.named_parameters())
        out: dict[str, Tensor] = {}
        for name, shape in self.builtin_shapes.items():
            got = [link for link in self.links if params[link.target].grad is not None
                   and any(s.name == name for s in link.sources)]
            if not got:
                continue
            first = params[got[0].target].grad
            assert first is not None
            full = torch.zeros(shape, dtype=first.dtype, device=first.device)
            for link in got:
                grad = params[link.target].grad
                assert grad is not None
                rows = [self.builtin_shapes[s.name][0] if s.rows is None else s.rows[1] - s.rows[0]
                        for s in link.sources]
                cat_shape = (sum(rows), *self.builtin_shapes[link.sources[0].name][1:])
                g = grad.reshape(cat_shape[::-1]).T if link.transpose else grad.reshape(cat_shape)
                for s, piece in zip(link.sources, torch.split(g, rows), strict=True):
                    if s.name == name:
                        a, b = (0, shape[0]) if s.rows is None else s.rows
                        full[a:b] += piece
            out[name] = full
        return out

    def as_override(self) -> dict[str, str | list[str]]:
        """The map written as an override (to edit and pass back)."""
        out: dict[str, str | list[str]] = {}
        for link in self.links:
            texts = [s.text() for s in link.sources]
            if link.transpose:
                texts = [f"{t}.T" for t in texts] if len(texts) == 1 else texts
            out[link.target] = texts[0] if len(texts) == 1 else texts
        return out

    def describe(self) -> str:
        """One line per target parameter: what it holds and how it was paired."""
        width = max((len(link.target) for link in self.links), default=0)
        lines = [f"  {link.target:<{width}} <- {link.text():<40} ({link.how})" for link in self.links]
        lines += [f"  {name:<{width}}    never used in the forward pass: left as is" for name in self.ignored]
        checked = ("" if self.difference is None
                   else f"; verified: outputs equal to {self.difference:.1e} with the built-in's random weights"
                   if self.verified else f"; NOT verified: the outputs differ by {self.difference:.3g}")
        return "\n".join([f"weight map ({len(self.links)} tensors{checked}):", *lines,
                          *(f"  note: {n}" for n in self.notes)])


def parse_source(text: str, shapes: Mapping[str, tuple[int, ...]] | None = None) -> tuple[Source, bool]:
    """``"in_proj_weight[rows 0:8].T"`` -> (Source("in_proj_weight", (0, 8)), transposed); ``NAME[k/n]`` is the
    k-th of n equal row blocks (``in_proj_weight[1/3]``: the keys' rows, whatever the model's width)."""
    m = SOURCE.match(text)
    if m is None:
        raise ValueError(f"cannot read override source {text!r}: write NAME, NAME[rows a:b] or NAME[k/n], "
                         "optionally .T")
    rows = (int(m["a"]), int(m["b"])) if m["a"] is not None else None
    if m["k"] is not None and shapes is not None and m["name"] in shapes:
        k, n, total = int(m["k"]), int(m["n"]), shapes[m["name"]][0]
        rows = (k * total // n, (k + 1) * total // n)
    return Source(m["name"], rows), m["t"] is not None


def load_override(source: str | Override) -> dict[str, Any]:
    """An override as a dict: given as one, or read from a .json, .toml or .py file (its ``WEIGHT_MAP``)."""
    if not isinstance(source, str):
        return dict(source)
    if source.endswith(".json"):
        import json
        with open(source) as f:
            return dict(json.load(f))
    if source.endswith(".toml"):
        import tomllib  # type: ignore[import-not-found,unused-ignore]
        with open(source, "rb") as f:
            return dict(tomllib.load(f))
    if source.endswith(".py"):
        import runpy
        return dict(runpy.run_path(source)["WEIGHT_MAP"])
    raise ValueError(f"an override file is .json, .toml or .py (with WEIGHT_MAP = {{...}}), got {source!r}")


def override_links(override: Mapping[str, Any], params: Mapping[str, Tensor],
                   shapes: Mapping[str, tuple[int, ...]]) -> tuple[list[Link], list[str]]:
    """An override's links, checked against both models' names, and the target parameters it leaves as is."""
    links, ignored = [], []
    for target, value in override.items():
        if target not in params:
            raise WeightMapError(f"override names target parameter {target!r}, which the target does not have "
                                 f"(it has {', '.join(params)})")
        if value is None or value == "":
            ignored.append(target)
            continue
        texts = [value] if isinstance(value, str) else list(value)
        parsed = [parse_source(t, shapes) for t in texts]
        for s, _ in parsed:
            if s.name not in shapes:
                raise WeightMapError(f"override maps {target!r} to {s.name!r}, which the built-in does not have "
                                     f"(it has {', '.join(shapes)})")
        transpose = len(parsed) == 1 and parsed[0][1]
        links.append(Link(target, tuple(s for s, _ in parsed), transpose, "override"))
    return links, ignored
