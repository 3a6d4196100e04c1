"""Run every exercise solution of the book (book/solutions/chNN.py: exercise_* functions)."""
import importlib
import inspect
import pathlib
import sys

import pytest

BOOK = pathlib.Path(__file__).resolve().parent.parent / "book"
sys.path.insert(0, str(BOOK))

MODULES = sorted(p.stem for p in (BOOK / "solutions").glob("ch*.py"))
CASES = [(m, name) for m in MODULES
         for name, fn in inspect.getmembers(importlib.import_module(f"solutions.{m}"), inspect.isfunction)
         if name.startswith("exercise_")]


def test_there_are_solutions():
    assert MODULES, "book/solutions/ has no chapter modules"


@pytest.mark.parametrize("module,name", CASES)
def test_solution_runs(module, name):
    fn = getattr(importlib.import_module(f"solutions.{module}"), name)
    fn()
