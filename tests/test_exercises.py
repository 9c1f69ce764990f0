"""Every exercise's check fails on the unsolved starting point and passes on the solution."""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("exercise_check", ROOT / "exercises" / "check.py")
check = sys.modules["exercise_check"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check)

EXERCISES = check.load_exercises()


def test_there_are_exercises():
    assert len(EXERCISES) >= 2


@pytest.mark.parametrize("exercise", EXERCISES, ids=lambda ex: ex.name)
def test_unsolved_start_fails(exercise):
    ok, detail = exercise.run(ROOT / "exercises")
    assert not ok, f"the unsolved {exercise.name} already passes: {detail}"
    assert "TODO" in (ROOT / "exercises" / exercise.name).read_text()


@pytest.mark.parametrize("exercise", EXERCISES, ids=lambda ex: ex.name)
def test_solution_passes(exercise):
    ok, detail = exercise.run(ROOT / "solutions")
    assert ok, detail
