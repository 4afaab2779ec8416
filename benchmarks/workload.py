"""The implementations under test, the inputs they share, and the step each mode times."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from benchmarks.presets import Case
from reference.builtin.config import Config
from reference.cases.case import Case as TransformerCase
from reference.levels.registry import LEVELS
from reference.targets.contract import DEFAULT_TARGET, Target, load_target

BUILTIN = "nn.Transformer"


@dataclass(frozen=True)
class Impl:
    """One implementation: the built-in (fast path on or off) or a plug-in target, optionally torch.compile'd."""

    name: str
    target: str | None = None  # MODULE:OBJECT; None for the built-in
    fastpath: bool = True  # torch.backends.mha.set_fastpath_enabled during its steps
    compiled: bool = False

    @property
    def is_builtin(self) -> bool:
        return self.target is None


def target_name(spec: str) -> str:
    """handmade's own targets by their short names (handmade, handmade_tiled), a plug-in by its spec."""
    module, _, name = spec.partition(":")
    return name if module == DEFAULT_TARGET.partition(":")[0] and name.startswith("handmade") else spec


def implementations(targets: list[str], compile: bool) -> list[Impl]:
    """The built-in with its fast path on (the reference of every ratio) and off, each target, compiled variants."""
    impls = [Impl(BUILTIN), Impl(f"{BUILTIN} (no fastpath)", fastpath=False)]
    impls += [Impl(target_name(spec), target=spec) for spec in targets]
    if compile:
        impls += [Impl(f"{i.name} +compile", i.target, i.fastpath, compiled=True) for i in impls if i.fastpath]
    return impls


@dataclass
class Inputs:
    """src and tgt features, and the masks passed to forward."""

    src: Tensor
    tgt: Tensor
    masks: dict[str, Tensor]


def make_inputs(case: Case, batch_first: bool, seed: int = 0) -> Inputs:
    """Random features, a bool causal target mask, and (padding "right") key padding masks on every attention.

    Padded lengths are drawn from [L/2, L] with the first sequence full; ``memory_key_padding_mask`` is the
    source mask, as it must be for the built-in's nested-tensor path to agree with the slow path.
    """
    size, device = case.size, case.device
    gen = torch.Generator().manual_seed(seed)
    shape = (size.batch, size.seq_len, size.d_model) if batch_first else (size.seq_len, size.batch, size.d_model)
    src = torch.randn(shape, generator=gen).to(device=device, dtype=case.torch_dtype)
    tgt = torch.randn(shape, generator=gen).to(device=device, dtype=case.torch_dtype)
    causal = torch.ones(size.seq_len, size.seq_len, dtype=torch.bool).triu(diagonal=1)
    masks = {"tgt_mask": causal.to(device)}
    if case.padding == "right":
        positions = torch.arange(size.seq_len)
        for name in ("src_key_padding_mask", "tgt_key_padding_mask"):
            lengths = torch.randint(size.seq_len // 2 + 1, size.seq_len + 1, (size.batch,), generator=gen)
            lengths[0] = size.seq_len
            masks[name] = (positions.unsqueeze(0) >= lengths.unsqueeze(1)).to(device)
        masks["memory_key_padding_mask"] = masks["src_key_padding_mask"]
    elif case.padding != "none":
        raise ValueError(f"padding must be 'none' or 'right', got padding={case.padding!r}")
    return Inputs(src, tgt, masks)


def builtin(case: Case, config: dict) -> nn.Module:
    """nn.Transformer in ``config``, built by the component registry (default initialisation, global RNG)."""
    return LEVELS["transformer"].build("torch", TransformerCase(Config(**config)), case.device, case.torch_dtype)


def build_model(impl: Impl, case: Case, config: dict, reference: nn.Module | None = None) -> nn.Module:
    """The built-in, or the target built and loaded with ``reference``'s weights (when given); compiled if asked."""
    device, dtype = case.device, case.torch_dtype
    if impl.is_builtin:
        model = reference if reference is not None else builtin(case, config)
    else:
        target = load_target(impl.target)
        model = target.build(config, device, dtype)
        if reference is not None:
            target.load_reference(model, reference)
    return torch.compile(model) if impl.compiled else model


def build_models(
    impls: list[Impl], case: Case, config: dict, seed: int = 0
) -> tuple[dict[str, nn.Module], dict[str, str]]:
    """Every implementation with the same weights (the built-in's default initialisation, drawn from ``seed``),
    and the reason each one that could not be built failed."""
    torch.manual_seed(seed)
    reference = builtin(case, config)
    models, failed = {}, {}
    for impl in impls:
        try:
            models[impl.name] = build_model(impl, case, config, reference)
        except Exception as exc:  # NotSupportedError, TargetError, a missing kernel: all recorded
            failed[impl.name] = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:300]}"
    return models, failed


def make_step(
    impl: Impl, model: nn.Module, inputs: Inputs, mode: str, for_counting: bool = False
) -> Callable[[], object]:
    """The call to time: eval forward under inference_mode, or train forward + backward (grads set to None first).

    Puts ``model`` in eval or train mode now, so the step itself does only the work being timed.
    ``for_counting`` runs eval under no_grad instead: the same kernels, but composite ops reach
    dispatch modes (the FLOP counter) decomposed.
    """
    target: Target | None = None if impl.is_builtin else load_target(impl.target)
    src, tgt, masks, fastpath = inputs.src, inputs.tgt, inputs.masks, impl.fastpath

    def forward() -> Tensor:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        return model(src, tgt, **masks) if target is None else target.run(model, src, tgt, **masks)

    if mode == "eval":
        model.eval()
        no_grad = torch.no_grad if for_counting else torch.inference_mode

        def step() -> Tensor:
            with no_grad():
                return forward()

        return step
    if mode != "train":
        raise ValueError(f"mode must be 'eval' or 'train', got mode={mode!r}")
    model.train()
    grad = torch.randn(tgt.shape, generator=torch.Generator().manual_seed(1)).to(tgt)

    def train_step() -> None:
        model.zero_grad(set_to_none=True)
        forward().backward(grad)

    return train_step
