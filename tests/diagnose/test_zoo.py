"""The suite's sharpness: every bug-zoo entry is caught, and the zoo's machinery without a bug is not.

A zoo entry is handmade with one catalogue deviation (reference/catalogue/zoo.py). Each meets a fixed panel of
discriminating cases and, separately, cases drawn by the suite's own strategy (generate phase only), as
``parity zoo`` hunts them; that diagnosis names each entry's own key is tested in test_diagnose.py.
"""

from __future__ import annotations

import pytest

from reference.catalogue import BY_KEY, CATALOGUE
from reference.catalogue.zoo import ENTRIES, spec
from reference.diagnose.runs import one_thread
from reference.studies.zoo_hunt import PANEL, drawn_cases, first_catch, hunt
from reference.targets.contract import load_target


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def drawn() -> list:
    return drawn_cases()


def test_zoo_has_at_least_twenty_described_entries() -> None:
    assert len(ENTRIES) >= 20, f"len(ENTRIES)={len(ENTRIES)}, but should be at least 20"
    assert set(ENTRIES) == {d.key for d in CATALOGUE}, "every catalogue key should be a zoo entry"
    for key in ENTRIES:
        target = load_target(spec(key))
        bug = getattr(target.obj, "bug", "")
        assert bug and "\n" not in bug, f"{key}: bug={bug!r}, but should be a one-line description"
        d = BY_KEY[key]
        assert d.fix and d.cause and "\n" not in d.fix, f"{key}: every deviation says its fix and its cause family"


@pytest.mark.parametrize("key", list(ENTRIES))
def test_zoo_entry_is_caught_by_the_panel(key: str) -> None:
    target = load_target(spec(key))
    catch = next((c for dtype in BY_KEY[key].dtypes if (c := first_catch(target, PANEL, dtype))), None)
    assert catch is not None, f"zoo entry {key} passed every panel case, but should be caught"


@pytest.mark.parametrize("key", list(ENTRIES))
def test_zoo_entry_is_caught_by_the_suite_strategy(key: str, drawn: list) -> None:
    target = load_target(spec(key))
    catch = next((c for dtype in BY_KEY[key].dtypes if (c := first_catch(target, drawn, dtype))), None)
    assert catch is not None, (
        f"zoo entry {key} passed {len(drawn)} cases drawn by strategies.cases(), but the strategy should reach it"
    )


def test_zoo_machinery_without_a_bug_passes(drawn: list) -> None:
    catch = hunt(load_target(spec("control")), drawn=drawn)
    assert catch is None, f"the bug-free control failed on {catch.case.describe()}: {catch.detail}"
