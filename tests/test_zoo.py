"""The suite's sharpness: every bug-zoo entry is caught, and the zoo's machinery without a bug is not.

Fast by design (CI): each entry meets a fixed panel of discriminating cases and then cases drawn by the
suite's own strategy. ``parity zoo`` is the thorough version (the whole suite per entry, kill matrix).
"""

from __future__ import annotations

import pytest

from equivalence_tests.zoo import CONTROL, ENTRIES
from equivalence_tests.zoo.hunt import PANEL, drawn_cases, first_catch
from reference.targets import load_target

DRAWN = 12  # strategy-drawn cases per entry: the derandomized sequence finds every entry within a few


@pytest.fixture(scope="module")
def drawn() -> list:
    return drawn_cases(DRAWN)


def test_zoo_has_at_least_twenty_described_entries() -> None:
    assert len(ENTRIES) >= 20, f"len(ENTRIES)={len(ENTRIES)}, but should be at least 20"
    for name, spec in ENTRIES.items():
        bug = getattr(load_target(spec).obj, "bug", "")
        assert bug and "\n" not in bug, f"{name}: bug={bug!r}, but should be a one-line description"


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_zoo_entry_is_caught_by_the_panel(name: str) -> None:
    catch = first_catch(load_target(ENTRIES[name]), PANEL)
    assert catch is not None, f"zoo entry {name} ({ENTRIES[name]}) passed every panel case, but should be caught"


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_zoo_entry_is_caught_by_the_suite_strategy(name: str, drawn: list) -> None:
    catch = first_catch(load_target(ENTRIES[name]), drawn)
    assert catch is not None, (
        f"zoo entry {name} passed {len(drawn)} cases drawn by strategies.cases(), but the strategy should reach it"
    )


def test_zoo_machinery_without_a_bug_passes(drawn: list) -> None:
    catch = first_catch(load_target(CONTROL), [*PANEL, *drawn])
    assert catch is None, f"the bug-free control failed on {catch.case.describe()}: {catch.detail}"
