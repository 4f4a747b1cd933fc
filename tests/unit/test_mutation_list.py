"""The mutants of tests/mutation.py still apply to the SQL they mutate: an edit of the completion
or claim SQL that moves a mutated line must move its mutant too (``make mutate`` refuses to run
otherwise)."""

from __future__ import annotations

import pytest

from tests.mutation import EXTENSION, MUTANTS, Mutant


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: m.name)
def test_each_mutant_changes_its_sql_in_exactly_one_place(mutant: Mutant) -> None:
    original = (EXTENSION / mutant.file).read_text()
    assert mutant.apply() != original


def test_mutants_have_distinct_names() -> None:
    names = [m.name for m in MUTANTS]
    assert len(set(names)) == len(names)
