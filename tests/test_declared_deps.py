"""Every third-party package that the library, the book or the scripts import is declared.

A reader installs ``lidlib[book]`` (Colab, Binder, a downloaded notebook) or ``requirements.txt``
(``make book``); an import that neither declares fails on their machine only, never here, where the
test requirements pull much else in.  So the imports are read from the sources (``ast``), mapped to
their distributions (``importlib.metadata.packages_distributions``) and looked up in what each route
installs:

* ``lidlib/`` and ``book/solutions/`` (shipped in the wheel) and the chapters' code cells
  (``book/*.md``): ``pyproject.toml``'s dependencies and its ``book`` extra;
* ``book/_ext/`` and ``scripts/``: ``requirements.txt`` and ``requirements-test.txt``;
* ``requirements.txt`` holds the dependencies and the ``book`` extra, ``requirements-test.txt`` the
  ``test`` extra.
"""
from __future__ import annotations

import ast
import functools
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parent.parent
LOCAL = {"lidlib", "solutions", "lidbook_ext", "benchmark", "reference", "conftest"}
DYNAMIC = {"find_spec", "import_module"}      # importlib.util.find_spec("pkg"), import_module("pkg")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _req_name(line: str) -> str | None:
    line = line.split("#", 1)[0].strip()
    if not line or line.startswith("-"):
        return None
    return _norm(re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", line).group(0))


def requirement_names(path: Path) -> set[str]:
    return {n for n in map(_req_name, path.read_text(encoding="utf8").splitlines()) if n}


PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf8"))["project"]
CORE = {_req_name(r) for r in PYPROJECT["dependencies"]}
EXTRAS = {k: {_req_name(r) for r in v} for k, v in PYPROJECT["optional-dependencies"].items()}
REQS = requirement_names(ROOT / "requirements.txt")
REQS_TEST = requirement_names(ROOT / "requirements-test.txt")


def imported_names(source: str) -> set[str]:
    """Top-level names of the absolute imports in ``source`` (and of find_spec/import_module("x"))."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str) \
                and getattr(node.func, "attr", getattr(node.func, "id", None)) in DYNAMIC:
            names.add(node.args[0].value.split(".")[0])
    return names


def third_party(names: set[str]) -> set[str]:
    return {n for n in names if n not in sys.stdlib_module_names and n not in LOCAL and n != "__future__"}


def chapter_code(path: Path) -> str:
    """The code cells of a MyST-markdown chapter, IPython magics and shell lines dropped."""
    import jupytext

    nb = jupytext.read(path, fmt="md:myst")
    lines = [line for cell in nb.cells if cell.cell_type == "code"
             for line in cell.source.splitlines() if not line.lstrip().startswith(("%", "!"))]
    return "\n".join(lines)


@functools.cache
def _distributions() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def undeclared(names: set[str], declared: set[str]) -> dict[str, list[str]]:
    """Import name -> its distributions, for every import no declared distribution provides."""
    dists = _distributions()
    bad = {}
    for name in sorted(third_party(names)):
        provided = [_norm(d) for d in dists.get(name, [])]
        if not provided or not set(provided) & declared:
            bad[name] = provided or ["(not installed: no distribution provides it)"]
    return bad


def sources():
    """(label, python source, declared distributions) of everything checked."""
    shipped = CORE | EXTRAS["book"]
    build = REQS | REQS_TEST
    for path in sorted((ROOT / "lidlib").rglob("*.py")) + sorted((ROOT / "book" / "solutions").rglob("*.py")):
        yield path.relative_to(ROOT), path.read_text(encoding="utf8"), shipped
    for path in sorted((ROOT / "book").glob("*.md")):
        if path.read_text(encoding="utf8").startswith("---") and "kernelspec" in path.read_text(encoding="utf8")[:500]:
            yield path.relative_to(ROOT), chapter_code(path), shipped
    for path in sorted((ROOT / "book" / "_ext").rglob("*.py")) + sorted((ROOT / "scripts").glob("*.py")):
        yield path.relative_to(ROOT), path.read_text(encoding="utf8"), build


SOURCES = list(sources())


def test_sources_found():
    labels = {str(label) for label, _, _ in SOURCES}
    assert "lidlib/api.py" in labels and "book/solutions/ch01.py" in labels
    assert "book/02_lrp0.md" in labels and "book/_ext/lidbook_ext.py" in labels


@pytest.mark.parametrize("label,source,declared", SOURCES, ids=[str(s[0]) for s in SOURCES])
def test_every_import_is_declared(label, source, declared):
    bad = undeclared(imported_names(source), declared)
    assert not bad, (f"{label} imports third-party packages that its route does not install: {bad}; "
                     "declare them in pyproject.toml (dependencies or the book extra) and "
                     "requirements.txt (or requirements-test.txt for scripts)")


def test_the_check_catches_an_undeclared_import():
    source = "import numpy\nfrom tqdm.auto import tqdm\nimport importlib.util\nimportlib.util.find_spec('PIL')\n"
    assert third_party(imported_names(source)) == {"numpy", "tqdm", "PIL"}
    assert set(undeclared(imported_names(source), {"numpy"})) == {"tqdm", "PIL"}
    assert undeclared({"surely_not_a_module_xyz"}, REQS) == {
        "surely_not_a_module_xyz": ["(not installed: no distribution provides it)"]}
    assert not undeclared(imported_names("import os, json\nfrom . import api\nimport lidlib"), set())


def test_requirements_hold_the_declared_dependencies():
    assert CORE | EXTRAS["book"] <= REQS, f"requirements.txt lacks {sorted(CORE | EXTRAS['book'] - REQS)}"
    assert EXTRAS["test"] <= REQS_TEST, f"requirements-test.txt lacks {sorted(EXTRAS['test'] - REQS_TEST)}"
    assert "jupyter-book" in REQS and "jupytext" in REQS


def test_the_wheel_holds_every_package():
    """setuptools' package discovery finds lidlib, each of its subpackages, and the solutions."""
    from setuptools import find_namespace_packages, find_packages

    find = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf8"))["tool"]["setuptools"]["packages"]["find"]
    found = set()
    for where in find["where"]:
        found |= set(find_packages(str(ROOT / where), include=find["include"]))
    wanted = {"lidlib", "solutions"} | {
        "lidlib." + ".".join(p.parent.relative_to(ROOT / "lidlib").parts)
        for p in (ROOT / "lidlib").rglob("__init__.py") if p.parent != ROOT / "lidlib"}
    assert wanted <= found, f"missing from the wheel: {sorted(wanted - found)}"
    assert not {p for p in find_namespace_packages(str(ROOT / "lidlib")) if "__pycache__" not in p} - {
        p.removeprefix("lidlib.") for p in found}, "a folder under lidlib/ without __init__.py is not shipped"
