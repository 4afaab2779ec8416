"""The suite's sharpness: every bug-zoo entry is caught, and the zoo's machinery without a bug is not.

A zoo entry is handmade with one catalogue deviation (reference/catalogue/zoo.py), at the deviation's level
(the whole model, or an attention for a bug that needs query, key and value apart). Each meets its level's
fixed panel of discriminating cases and, separately, cases drawn by the level's own strategy (generate phase
only), as ``parity zoo`` hunts them; that diagnosis names each entry's own key is tested in test_diagnose.py.
"""

from __future__ import annotations

import pytest

from reference.catalogue import BY_KEY, CATALOGUE
from reference.catalogue.zoo import CONTROLS, ENTRIES, ZooEntry, level_of, spec
from reference.diagnose.runs import one_thread
from reference.studies.zoo_hunt import PANELS, drawn_cases, first_catch, hunt
from reference.targets.contract import Target, load_target


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def drawn() -> dict[str, list]:
    """Each level's drawn cases, drawn once."""
    return {level: drawn_cases(level=level) for level in CONTROLS}


def test_zoo_has_at_least_twenty_described_entries() -> None:
    assert len(ENTRIES) >= 20, f"len(ENTRIES)={len(ENTRIES)}, but should be at least 20"
    assert set(ENTRIES) == {d.key for d in CATALOGUE}, "every catalogue key should be a zoo entry"
    for key in ENTRIES:
        target = load_target(spec(key))
        bug = getattr(target.obj, "bug", "")
        assert bug and "\n" not in bug, f"{key}: bug={bug!r}, but should be a one-line description"
        d = BY_KEY[key]
        assert d.fix and d.cause and "\n" not in d.fix, f"{key}: every deviation says its fix and its cause family"


@pytest.mark.slow
@pytest.mark.parametrize("key", list(ENTRIES))
def test_zoo_entry_is_caught_by_the_panel(key: str) -> None:
    target, level = load_target(spec(key)), level_of(key)
    catch = next((c for dtype in BY_KEY[key].dtypes if (c := first_catch(target, PANELS[level], dtype, level))), None)
    assert catch is not None, f"zoo entry {key} passed every panel case, but should be caught"


@pytest.mark.slow
@pytest.mark.parametrize("key", list(ENTRIES))
def test_zoo_entry_is_caught_by_the_suite_strategy(key: str, drawn: dict[str, list]) -> None:
    target, level = load_target(spec(key)), level_of(key)
    catch = next((c for dtype in BY_KEY[key].dtypes if (c := first_catch(target, drawn[level], dtype, level))), None)
    assert catch is not None, (
        f"zoo entry {key} passed {len(drawn[level])} cases drawn by the {level} strategy, but it should reach it"
    )


def test_a_key_value_swap_needs_the_attention_level() -> None:
    """Why some entries are hunted at the attention level: planted in a whole handmade.Transformer, a key/value
    swap changes nothing, since every attention there takes one tensor as key and value."""
    assert level_of("key_value_swapped") == level_of("query_as_key") == "attention"
    whole = Target("key_value_swapped in a whole model", ZooEntry(BY_KEY["key_value_swapped"]))
    catch = hunt(whole, drawn=[])
    assert catch is None, f"a key/value swap showed in a whole model: {catch.detail}"


@pytest.mark.parametrize("level", list(CONTROLS))
def test_zoo_machinery_without_a_bug_passes(level: str, drawn: dict[str, list]) -> None:
    catch = hunt(load_target(spec(CONTROLS[level])), drawn=drawn[level], level=level)
    assert catch is None, f"the bug-free {level} control failed on {catch.case.describe()}: {catch.detail}"
