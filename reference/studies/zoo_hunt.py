"""``parity zoo``: hunt every bug-zoo entry in-process, diagnose each one caught, print what caught and what was named.

Each entry (reference/catalogue/zoo.py: handmade with one catalogue deviation) is hunted at its deviation's
level (the whole model, or an attention for a bug that needs its inputs apart): it meets that level's fixed
panel of discriminating cases, then cases drawn by the level's own strategy (``reference.cases.strategies.cases()``
for the whole model; generate phase only: a kill needs no shrinking), in float64 and in any other dtype its
deviation lists. Every caught entry is then diagnosed (``parity diagnose --as LEVEL`` on the families its
catching case belongs to, no reproducer) and the report says which catalogue key diagnosis named, and whether
it is the entry's own. Exit status 1 if an entry escapes or a control (one per level hunted) is caught.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.strategies import SearchStrategy

import reference.cases.strategies as strategies
from reference.builtin.config import Config
from reference.cases.case import Case
from reference.cases.kinds import AttentionCase
from reference.inference.prepare import at_level
from reference.levels.registry import LEVELS
from reference.targets.contract import NotSupportedError, Target, TargetError, load_target

# Between them, these three cases touch every option and mask kind a zoo bug hides behind.
PANEL = (
    Case(Config(d_model=16, nhead=4, num_encoder_layers=2, num_decoder_layers=2, dim_feedforward=32, dropout=0.5,
                activation="gelu", layer_norm_eps=1e-3, batch_first=False, norm_first=False), batch=3, src_len=5,
         tgt_len=4, tgt_mask="causal_float", memory_mask="additive", src_key_padding_mask="bool",
         memory_key_padding_mask="float_finite", seed=1),
    Case(Config(d_model=16, nhead=4, num_encoder_layers=2, num_decoder_layers=1, dim_feedforward=32, dropout=0.1,
                activation="relu", layer_norm_eps=1e-6, batch_first=True, norm_first=True), batch=2, src_len=6,
         tgt_len=6, src_mask="per_head_additive", tgt_mask="per_head_bool", memory_mask="random_inf",
         src_key_padding_mask="float_inf", tgt_key_padding_mask="bool", memory_key_padding_mask="bool", seed=2),
    Case(Config(d_model=12, nhead=3, num_encoder_layers=1, num_decoder_layers=2, dim_feedforward=16, dropout=0.0,
                activation="gelu", layer_norm_eps=0.5, norm_first=True, bias=False), batch=None, src_len=4, tgt_len=5,
         src_mask="random_bool", tgt_mask="causal_bool", tgt_is_causal=True, seed=3),
)
# An attention's own: query, key and value three distinct tensors (keys of another length, of the same length,
# of other widths), every kind of mask between them.
ATTENTION_PANEL = (
    AttentionCase(embed_dim=8, num_heads=2, query_len=3, key_len=5, attn_mask="additive", key_padding_mask="bool",
                  seed=1),
    AttentionCase(embed_dim=12, num_heads=3, batch_first=True, batch=2, query_len=4, key_len=4,
                  attn_mask="random_inf", key_padding_mask="float_finite", average_attn_weights=False, seed=2),
    AttentionCase(embed_dim=6, num_heads=1, kdim=4, vdim=5, add_bias_kv=True, add_zero_attn=True, batch=None,
                  query_len=2, key_len=6, attn_mask="per_head_bool", seed=3),
)
PANELS: dict[str, tuple[Any, ...]] = {"transformer": PANEL, "attention": ATTENTION_PANEL}
DRAWN = 12  # strategy-drawn cases after the panel: the derandomized sequence reaches every entry within a few


@dataclass(frozen=True, kw_only=True)
class Catch:
    """How a case exposed the target: the first failing verdict, or the target's crash."""

    case: Any  # the level's case (a whole-model Case, an AttentionCase)
    index: int  # in the sequence hunted: the panel first, then the drawn cases
    dtype: str
    what: str
    detail: str
    crashed: bool


def drawn_cases(count: int = DRAWN, level: str = "transformer") -> list[Any]:
    """``count`` cases from the level's strategy (``strategies.cases()`` for the whole model), the same ones
    every run (derandomized, no database: the sequence follows the drawing function's source, so the whole
    model's keeps its own function)."""
    if level != "transformer":
        return _drawn(LEVELS[level].cases(), count)
    out: list[Case] = []

    @settings(max_examples=count, derandomize=True, database=None, phases=[Phase.generate], deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(strategies.cases())
    def collect(case: Case) -> None:
        out.append(case)

    collect()
    return out[:count]


def _drawn(strategy: SearchStrategy[Any], count: int) -> list[Any]:
    out: list[Any] = []

    @settings(max_examples=count, derandomize=True, database=None, phases=[Phase.generate], deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(case: Any) -> None:
        out.append(case)

    collect()
    return out[:count]


def first_catch(target: Target, cases: Iterable[Any], dtype: torch.dtype = torch.float64,
                level: str = "transformer") -> Catch | None:
    """The first case on which ``target`` fails the comparison at ``level`` (the whole model by default) at
    ``dtype``, or None if it passes all (a case it declines is no catch)."""
    for index, case in enumerate(cases):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                verdicts = at_level(target, level, case, "cpu", dtype)
        except TargetError as exc:
            return Catch(case=case, index=index, dtype=str(dtype), what="crash", detail=str(exc).splitlines()[0][:160],
                         crashed=True)
        except NotSupportedError:
            continue
        failed = [v for v in verdicts if not v.passed]
        if failed:
            return Catch(case=case, index=index, dtype=str(dtype), what=failed[0].what,
                         detail=str(failed[0]).splitlines()[0][:200], crashed=False)
    return None


def hunt(target: Target, dtypes: Iterable[torch.dtype] = (torch.float64,), drawn: list[Any] | None = None,
         level: str = "transformer") -> Catch | None:
    """The level's panel, then the drawn cases, in each dtype in turn: the first catch."""
    cases = [*PANELS[level], *(drawn_cases(level=level) if drawn is None else drawn)]
    for dtype in dict.fromkeys((torch.float64, *dtypes)):
        catch = first_catch(target, cases, dtype, level)
        if catch is not None:
            return catch
    return None


@dataclass(kw_only=True)
class EntryResult:
    """One entry: how it was caught, and which catalogue keys diagnosis named for it."""

    key: str
    bug: str
    level: str = "transformer"
    caught: bool = False
    by: str = ""  # panel case i / drawn case i, dtype, verdict
    detail: str = ""
    named: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def named_own(self) -> bool:
        return self.key in self.named


def run_entry(key: str, diagnose_it: bool = True) -> EntryResult:
    """Hunt one entry (or a control: ``control``, ``attention_control``) at its level and, when caught,
    diagnose it on the families it fails."""
    from reference.catalogue import BY_KEY
    from reference.catalogue.zoo import level_of, spec

    start = time.perf_counter()
    torch.set_num_threads(1)
    target, level = load_target(spec(key)), level_of(key)
    result = EntryResult(key=key, bug=target.obj.bug, level=level)
    deviation = BY_KEY.get(key)
    catch = hunt(target, deviation.dtypes if deviation else (), level=level)
    if catch is not None:
        panel = len(PANELS[level])
        where = f"panel case {catch.index}" if catch.index < panel else f"drawn case {catch.index - panel}"
        at = "" if level == "transformer" else f", {level}"
        result.caught, result.detail = True, catch.detail
        result.by = f"{where} ({catch.dtype.removeprefix('torch.')}{at}): {'crash' if catch.crashed else catch.what}"
        if diagnose_it:
            result.named = named_keys(target, catch.case, level)
    result.seconds = time.perf_counter() - start
    return result


def diagnosis_families(target: Target, case: Any, count: int = 2, level: str = "transformer") -> tuple[str, ...]:
    """The first ``count`` diagnosis families (in ``parity diagnose``'s order) whose probe case the target fails
    (two, so that deviations alike on one family are told apart); else the families like ``case``."""
    from reference.diagnose.families import families_like, family_grid

    failing = tuple(f.name for f in family_grid(level=level) if first_catch(target, f.cases[:1], level=level)
                    is not None)
    return failing[:count] or (families_like(case) if isinstance(case, Case) else ("default",))


def named_keys(target: Target, case: Any, level: str = "transformer") -> list[str]:
    """The catalogue keys ``parity diagnose`` names for ``target``, on the families that show its difference."""
    from reference.diagnose.pipeline import diagnose

    d = diagnose(target, out_dir=None, family_names=diagnosis_families(target, case, level=level), reproduce=False,
                 level=level)
    return [c.key for c in d.causes]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="parity zoo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", default="", help="comma-separated entry keys (default: every entry)")
    parser.add_argument("--jobs", type=int, default=2, help="entries hunted in parallel processes (default 2)")
    parser.add_argument("--no-diagnose", action="store_true", help="only hunt: do not diagnose the entries caught")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    parser.add_argument("--list", action="store_true", help="list the entries and their bugs, run nothing")
    return parser.parse_args(argv)


def report(results: list[EntryResult], controls: list[EntryResult]) -> str:
    width = max(len(r.key) for r in results)
    lines = [f"{'entry':<{width}}  caught  {'by (case, dtype, verdict)':<44}  diagnosis named"]
    for r in results:
        named = ", ".join(r.named) or "-"
        own = "" if not r.caught or not r.named else ("  (its own)" if r.named_own else "  (NOT its own)")
        lines.append(f"{r.key:<{width}}  {'yes' if r.caught else 'NO':6s}  {r.by:<44}  {named}{own}")
    caught = sum(r.caught for r in results)
    n_own = sum(r.named_own for r in results)
    lines += ["", f"caught {caught}/{len(results)}; diagnosis named the entry's own key for {n_own}/{caught} caught"]
    lines += [f"{c.key} ({c.bug}): {'CAUGHT: ' + c.by if c.caught else 'not caught (as it must be)'}" for c in controls]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run ``parity zoo``; exit 1 if any entry escapes or a control is caught."""
    from reference.catalogue.zoo import CONTROLS, ENTRIES

    args = parse_args(sys.argv[1:] if argv is None else argv)
    keys = [n.strip() for n in args.entries.split(",") if n.strip()] or list(ENTRIES)
    unknown = [n for n in keys if n not in ENTRIES]
    if unknown:
        print(f"unknown entries {unknown}; known: {', '.join(ENTRIES)}", file=sys.stderr)
        return 2
    if args.list:
        for k in keys:
            level = ENTRIES[k].level
            print(f"{k:32s} {ENTRIES[k].bug}" + ("" if level == "transformer" else f" (--as {level})"))
        return 0
    controls = [CONTROLS[level] for level in dict.fromkeys(ENTRIES[k].level for k in keys)]
    print(f"parity zoo: {len(keys)} entries + {len(controls)} control(s), {args.jobs} process(es)", flush=True)
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = [pool.submit(run_entry, k, not args.no_diagnose) for k in keys]
        control_futures = [pool.submit(run_entry, c, False) for c in controls]
        results = []
        for future in futures:
            r = future.result()
            results.append(r)
            print(f"  {r.key}: {'caught' if r.caught else 'ESCAPED'}"
                  f"{'; named ' + ', '.join(r.named) if r.named else ''} ({r.seconds:.0f} s)", flush=True)
        checked = [f.result() for f in control_futures]
    print()
    print(report(results, checked))
    print(f"\n{len(results)} entries and {len(checked)} control(s) in {time.perf_counter() - start:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([{**asdict(r), "named_own": r.named_own} for r in [*results, *checked]], f, indent=1)
    return 0 if all(r.caught for r in results) and not any(c.caught for c in checked) else 1


if __name__ == "__main__":
    sys.exit(main())
