"""Which convention a target's mask argument follows, found by measurement on probes that block known positions.

For a mask argument, a stream of keys (the key/value inputs, a layer's own input, a decoder's memory) and a
candidate form (``MaskForm``: layout and kind), the probe writes a pattern of blocked (query, key) pairs in that
form, perturbs the input at one key position per batch element, and reads which output rows moved: rows whose
query the pattern blocks from that key must not move at all, the others must. A form that raises, gives NaN,
changes the output when it blocks nothing, or moves the wrong rows is not the target's. The patterns are
closed under composition (causal; padding), so they hold through a stack of layers too.

Forms are tried from the most capable (one row per query and batch element) to the least (one padding row per
batch element; one (L, S) mask for the batch); then, with the kind found, per-head layouts. The first form that
behaves is the target's. When none does (a bug in the masking, or in what the rows see), the one that lets
the least of the perturbation through is kept, marked as the closest; none close: the argument is left to
the caller (passed as torch's masks, by its name).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from reference.inference.masks import ATTENTION, FULL, KINDS, PADDING, PER_HEAD, MaskForm, encode

Run = Callable[[Mapping[str, Tensor], Mapping[str, Tensor]], Tensor]  # (inputs, target masks) -> (N, L, E)
UNMOVED, MOVED = 1e-9, 1e-6  # relative to the output's scale
CLOSE = 0.9  # a form must keep out at least a tenth of what it should block to be the closest, when none is exact


@dataclass(frozen=True)
class Stream:
    """Keys a mask can block: the level inputs they come from, the input the queries come from, and whether the
    queries are the keys themselves (then a query's own row always moves with its own input)."""

    name: str
    perturb: tuple[str, ...]
    query: str
    self_stream: bool


def _pattern(capability: str, N: int, L: int, S: int) -> tuple[Tensor, list[int]]:
    """(blocked (N, L, S), the key position perturbed in each batch element)."""
    causal = torch.ones(L, S, dtype=torch.bool).triu(1)
    pad = lambda n: (torch.arange(S) >= S - n).expand(L, S)  # noqa: E731
    middle = min(L, S) // 2
    if capability == "full":
        return torch.stack([causal, pad(2)]), [middle, S - 2]
    if capability == "padding":
        return torch.stack([pad(2), pad(1)]), [S - 2, S - 2]
    return torch.stack([causal] * N), [middle] * N


class Probe:
    """Probes for one target at one level: ``run`` calls it on the probe inputs with raw mask arguments."""

    def __init__(self, run: Run, inputs: Mapping[str, Tensor], heads: int, seed: int = 0) -> None:
        self.run, self.heads = run, heads
        g = torch.Generator().manual_seed(seed)
        lengths: dict[int, int] = {}  # inputs of one length keep one length; distinct ones stay distinct
        for v in inputs.values():
            lengths.setdefault(v.shape[1], max(v.shape[1], 4 + len(lengths)))
        self.inputs = {k: torch.randn(2, lengths[v.shape[1]], v.shape[2], generator=g, dtype=torch.float64)
                       for k, v in inputs.items()}
        self.noise = {k: 3.0 * torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in self.inputs.items()}
        with torch.no_grad():
            self.base = run(self.inputs, {})
        self.scale = 1.0 + float(self.base.abs().max())
        self._moved: dict[tuple[str, tuple[int, ...]], Tensor] = {}
        self._causal: dict[str, bool] = {}

    def causal_by_default(self, stream: Stream) -> bool:
        """Whether the target, given no mask, attends causally on ``stream`` (its own input): perturbing the
        last position moves that row only, and perturbing the first moves the rows after it."""
        if stream.name not in self._causal:
            L = self.inputs[stream.query].shape[1]
            last = self._moves_unmasked(stream, [L - 1] * self.base.shape[0])
            first = self._moves_unmasked(stream, [0] * self.base.shape[0])
            self._causal[stream.name] = stream.self_stream and L > 1 and bool((last[:, :-1] <= UNMOVED).all()) \
                and bool((last[:, -1] > MOVED).all()) and bool((first[:, 1:] > MOVED).all())
        return self._causal[stream.name]

    def _blocks_nothing(self, param: str, stream: Stream, form: MaskForm, shape: torch.Size) -> bool:
        """Whether ``form`` blocking nothing gives the output with no mask, or ``form`` blocking the future (key
        j > query i) does: the target is causal when given no mask, and a mask given replaces that (whatever its
        code does elsewhere: a bug that moves rows would hide the causality from a perturbation)."""
        zeros = torch.zeros(shape, dtype=torch.float64)
        references = [zeros]
        if shape[-2] > 1:
            references.append(zeros.masked_fill(torch.ones(shape[-2:], dtype=torch.bool).triu(1), float("-inf")))
        for reference in references:
            try:
                out = self.run(self.inputs, {param: encode(form, reference, param)})
            except Exception:
                continue
            if out.shape == self.base.shape and self._rows(out, self.base).max() <= UNMOVED:
                return True
        return False

    def _perturbed(self, stream: Stream, positions: Sequence[int]) -> dict[str, Tensor]:
        out = dict(self.inputs)
        for name in stream.perturb:
            if name in out:
                x = out[name].clone()
                for n, j in enumerate(positions):
                    x[n, j] += self.noise[name][n, j]
                out[name] = x
        return out

    def _rows(self, a: Tensor, b: Tensor) -> Tensor:
        return (a - b).abs().amax(dim=-1) / self.scale  # (N, L)

    def _moves_unmasked(self, stream: Stream, positions: Sequence[int]) -> Tensor:
        """How far each row moves, unmasked, when ``stream`` is perturbed at ``positions``."""
        key = (stream.name, tuple(positions))
        if key not in self._moved:
            with torch.no_grad():
                self._moved[key] = self._rows(self.run(self._perturbed(stream, positions), {}), self.base)
        return self._moved[key]

    def leak(self, param: str, stream: Stream, form: MaskForm, blocked: Tensor, positions: Sequence[int],
             per_head: Tensor | None = None) -> float | None:
        """How much of the perturbation still reaches the rows ``form`` of ``param`` should block from it: 0 when
        it blocks exactly ``blocked`` (N, L, S) (or, per head, ``per_head`` (N, H, L, S)) on ``stream``, up to 1
        when it blocks nothing; None when it does not behave as a mask at all (it raises, gives NaN, changes the
        output while blocking nothing, or stops rows it should not block from moving)."""
        full = blocked[:, None] if per_head is None else per_head
        mask = torch.zeros(full.shape, dtype=torch.float64).masked_fill(full, float("-inf"))
        try:
            with torch.no_grad():
                if not self._blocks_nothing(param, stream, form, mask.shape):
                    return None
                written = encode(form, mask, param)
                y0 = self.run(self.inputs, {param: written})
                y1 = self.run(self._perturbed(stream, positions), {param: written})
        except Exception:
            return None
        if y0.shape != self.base.shape or not bool(torch.isfinite(y0).all() and torch.isfinite(y1).all()):
            return None
        moved = self._rows(y1, y0)
        still, must_move = self._expected(stream, blocked, positions, per_head)
        unmasked = self._moves_unmasked(stream, positions)
        if not bool((moved[must_move] > MOVED).all()):
            return None
        if not bool(still.any()):
            return 0.0
        if bool((moved[still] <= UNMOVED).all()):
            return 0.0
        return float((moved[still] / unmasked[still]).clamp(max=1.0).mean()) + UNMOVED

    def _expected(self, stream: Stream, blocked: Tensor, positions: Sequence[int],
                  per_head: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(rows that must not move, rows that must move) (N, L) when ``blocked`` and the perturbed keys meet."""
        N, L, _ = blocked.shape
        own = torch.zeros(N, L, dtype=torch.bool)
        for n, j in enumerate(positions):
            if stream.self_stream and j < L:
                own[n, j] = True  # a query's own row moves with its own input, blocked or not
        sees = (~per_head).any(dim=1) if per_head is not None else ~blocked  # some head sees the key
        sees_key = torch.stack([sees[n, :, j] for n, j in enumerate(positions)])  # (N, L)
        moves = self._moves_unmasked(stream, positions) > MOVED
        return ~sees_key & ~own & moves, sees_key & ~own & moves

    def takes_finite(self, param: str, stream: Stream, form: MaskForm, blocked: Tensor,
                     positions: Sequence[int]) -> bool:
        """Whether finite values of an additive ``form`` are added to the scores: one value added to every key
        changes nothing (softmax does not see it), and -2 where the pattern blocks acts without blocking (the
        rows kept still by -inf move)."""
        shape = (blocked.shape[0], 1, *blocked.shape[1:])
        form = replace(form, finite=True)
        soft = torch.zeros(shape, dtype=torch.float64).masked_fill(blocked[:, None], -2.0)
        try:
            with torch.no_grad():
                shifted = self.run(self.inputs, {param: encode(form, torch.full(shape, 1.5, dtype=torch.float64),
                                                                param)})
                written = encode(form, soft, param)
                y0 = self.run(self.inputs, {param: written})
                y1 = self.run(self._perturbed(stream, positions), {param: written})
        except Exception:
            return False
        if shifted.shape != self.base.shape or self._rows(shifted, self.base).max() > UNMOVED:
            return False
        still, _ = self._expected(stream, blocked, positions)
        acts = bool(self._rows(y0, self.base).max() > MOVED)
        return acts and bool((self._rows(y1, y0)[still] > MOVED).all())

    def _finite(self, param: str, stream: Stream, form: MaskForm, blocked: Tensor, positions: Sequence[int],
                torch_argument: bool) -> MaskForm:
        """``form``, or its additive kind when that blocks the same and adds finite values (it can carry more).
        An argument named as torch's own (``tgt_mask``, ``key_padding_mask``, ...) that takes -inf floats as
        well takes torch's float masks: their finite values are passed as torch's API gives them, and how it
        reads them is judged (a float mask read as bool is a bug there, not a convention)."""
        additive = form if form.kind.startswith("additive") else MaskForm(layout=form.layout, kind="additive")
        if additive is not form and self.leak(param, stream, additive, blocked, positions) != 0.0:
            return form
        if torch_argument or self.takes_finite(param, stream, additive, blocked, positions):
            return replace(additive, finite=True)
        return form

    def find(self, param: str, streams: Sequence[Stream],
             torch_names: Mapping[str, Sequence[str]] | None = None) -> tuple[Stream, MaskForm] | None:
        """The stream and form ``param`` follows, the most capable first; when none blocks exactly what is asked
        (the target's masking differs), the one that comes closest, of the most capable kind that comes close at
        all, marked so; None when none keeps anything out. ``torch_names``: per stream, torch's own argument
        names for its masks."""
        closest: dict[str, tuple[float, Stream, MaskForm]] = {}
        for stream in streams:
            if stream.query not in self.inputs or not any(n in self.inputs for n in stream.perturb):
                continue
            L = self.inputs[stream.query].shape[1]
            S = next(self.inputs[n].shape[1] for n in stream.perturb if n in self.inputs)
            for capability, layouts in (("full", FULL), ("padding", PADDING), ("attention", ATTENTION)):
                blocked, positions = _pattern(capability, 2, L, S)
                for layout in layouts:
                    for kind in KINDS:
                        form = MaskForm(layout=layout, kind=kind)
                        leak = self.leak(param, stream, form, blocked, positions)
                        if leak == 0.0:
                            named = param in (torch_names or {}).get(stream.name, ())
                            form = self._finite(param, stream, form, blocked, positions, named)
                            return stream, self._per_head(param, stream, form, blocked, positions)
                        best = closest.get(capability)
                        if leak is not None and leak < CLOSE and (best is None or leak < best[0]):
                            closest[capability] = (leak, stream, replace(form, exact=False))
        for capability in ("full", "padding", "attention"):
            if capability in closest:
                return closest[capability][1], closest[capability][2]
        return None

    def _per_head(self, param: str, stream: Stream, form: MaskForm, blocked: Tensor,
                  positions: Sequence[int]) -> MaskForm:
        """``form`` with the per-head layout its argument takes, if any: one pattern for every head behaves as
        before, and the pattern in head 0 alone lets every other head see the perturbed keys."""
        if self.heads < 2 or form.capability == "padding":
            return form
        every = blocked[:, None].expand(-1, self.heads, -1, -1)
        first = torch.zeros(every.shape, dtype=torch.bool)
        first[:, 0] = blocked
        for layout in PER_HEAD:
            trial = replace(form, head_layout=layout)
            if self.leak(param, stream, trial, blocked, positions, per_head=every.clone()) == 0.0 and \
                    self.leak(param, stream, trial, blocked, positions, per_head=first) == 0.0:
                return trial
        return form


def keeps_batch_apart(run: Callable[[Mapping[str, Tensor]], Tensor], inputs: Mapping[str, Tensor]) -> bool:
    """Whether ``run`` (a layout of the target on batch-first inputs) keeps batch elements apart: perturbing every
    input of element 0 moves element 0's output and leaves element 1's exactly as it was. A target called in the
    wrong layout mixes them (its attention runs along the batch), so this tells the layouts apart when the
    shapes allow both, whatever the weights or a bug elsewhere."""
    g = torch.Generator().manual_seed(1)
    x0 = {k: torch.randn(2, max(v.shape[1], 4), v.shape[2], generator=g, dtype=torch.float64)
          for k, v in inputs.items()}
    x1 = {k: v.clone() for k, v in x0.items()}
    for v in x1.values():
        v[0] += 3.0 * torch.randn(v[0].shape, generator=g, dtype=torch.float64)
    try:
        with torch.no_grad():
            y0, y1 = run(x0), run(x1)
    except Exception:
        return False
    if y0.shape != y1.shape or y0.dim() != 3 or y0.shape[0] != 2:
        return False
    scale = 1.0 + float(y0.abs().max())
    return float((y1[1] - y0[1]).abs().max()) <= UNMOVED * scale < MOVED * scale < float((y1[0] - y0[0]).abs().max())
