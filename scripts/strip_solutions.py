#!/usr/bin/env python3
"""Remove the solution cells from the chapters of a copy of the book (for the student build).

    python scripts/strip_solutions.py DIR      # edits every notebook under DIR in place

Convention (documented in scripts/build_book.sh): a solution is one or more notebook cells tagged
``solution`` -- a code cell (``:tags: [solution, hide-cell]``) and/or a markdown cell
(``+++ {"tags": ["solution"]}`` before it, usually holding an ``{admonition}`` with
``:class: dropdown solution``).  The student build removes those cells from the sources *before*
building, so solutions reach neither the pages, nor the search index, nor the shipped .md/.ipynb
files, and the build proves that the chapters still run without them.

MyST-markdown notebooks (.md with a ``kernelspec`` in the front matter) are cut line by line, using
myst-nb's own reader to find the cells, so everything else stays byte for byte; .ipynb chapters are
filtered with nbformat.  Exits 1 if a cell not tagged ``solution`` still contains a directive with
the class ``solution`` (a forgotten tag would leak the solution).
"""
from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

import yaml

TAG = "solution"
_CLASS_RE = re.compile(r"^\s*:class(?:-container)?:.*\bsolution\b", re.M)


def _md_parser():
    from markdown_it.renderer import RendererHTML
    from myst_parser.config.main import MdParserConfig
    from myst_parser.parsers.mdit import create_md_parser

    config = MdParserConfig()
    config = dataclasses.replace(config, disable_syntax=list(config.disable_syntax) + ["inline"])
    return create_md_parser(config, RendererHTML)


def strip_myst(text: str) -> tuple[str, int, list[int]]:
    """Remove the cells tagged ``solution`` from a MyST-markdown notebook's text.

    Returns ``(new_text, n_removed, lines_of_untagged_solution_directives)``; the cell boundaries
    follow :func:`myst_nb.core.read.read_myst_markdown_notebook`.
    """
    from myst_nb.core.read import _read_cell_metadata, _read_fenced_cell

    tokens = _md_parser().parse(text + "\n")
    lines = text.splitlines(keepends=True)
    start = 0
    if tokens and tokens[0].type == "front_matter":
        start = tokens[0].map[1] if tokens[0].map else 0
        tokens = tokens[1:]
    drop: list[tuple[int, int]] = []
    leaks: list[int] = []

    def markdown_cell(lo: int, hi: int, meta: dict) -> None:
        body = "".join(lines[lo:hi])
        if not body.strip():
            return
        if TAG in (meta.get("tags") or []):
            drop.append((lo, hi))
        elif _CLASS_RE.search(body):
            leaks.append(lo + 1)

    md_lo, md_meta, nesting = start, {}, 0
    for tok in tokens:
        nesting += tok.nesting
        if nesting != 0:
            continue
        lo, hi = tok.map or (0, 0)
        if tok.type == "fence" and tok.info.startswith(("{code-cell}", "{raw-cell}")):
            markdown_cell(md_lo, lo, md_meta)
            options, _ = _read_fenced_cell(tok, 0, "Code")
            if TAG in (options.get("tags") or []):
                drop.append((lo, hi))
            md_lo, md_meta = hi, {}
        elif tok.type == "myst_block_break":
            markdown_cell(md_lo, lo, md_meta)
            md_lo, md_meta = lo, _read_cell_metadata(tok, 0)  # the +++ line belongs to its cell
    markdown_cell(md_lo, len(lines), md_meta)

    keep = [True] * len(lines)
    for lo, hi in drop:
        for i in range(lo, min(hi, len(lines))):
            keep[i] = False
    return "".join(l for l, k in zip(lines, keep) if k), len(drop), leaks


def _is_myst_notebook(text: str) -> bool:
    if not text.startswith("---"):
        return False
    parts = text.split("\n---", 1)
    try:
        meta = yaml.safe_load(parts[0][3:]) if len(parts) == 2 else None
    except yaml.YAMLError:
        return False
    return isinstance(meta, dict) and "kernelspec" in meta


def strip_file(path: Path) -> tuple[int, list[str]]:
    """Strip one chapter in place; returns (cells removed, leak messages)."""
    if path.suffix == ".ipynb":
        import nbformat

        nb = nbformat.read(path, as_version=4)
        keep, leaks = [], []
        for i, cell in enumerate(nb.cells):
            if TAG in cell.get("metadata", {}).get("tags", []):
                continue
            if cell.cell_type == "markdown" and _CLASS_RE.search(cell.source):
                leaks.append(f"{path}: cell {i}")
            keep.append(cell)
        removed = len(nb.cells) - len(keep)
        nb.cells = keep
        nbformat.write(nb, path)
        return removed, leaks
    text = path.read_text(encoding="utf8")
    if not _is_myst_notebook(text):
        return 0, ([f"{path}: a solution-classed directive in a plain markdown page"]
                   if _CLASS_RE.search(text) else [])
    new, removed, leak_lines = strip_myst(text)
    path.write_text(new, encoding="utf8")
    return removed, [f"{path}:{n}" for n in leak_lines]


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print(__doc__, file=sys.stderr)
        return 2
    root = Path(argv[0])
    total, leaks = 0, []
    for path in sorted(root.rglob("*")):
        if path.suffix not in (".md", ".ipynb") or any(p.startswith(("_build", ".")) or p == "_vendor"
                                                         for p in path.relative_to(root).parts):
            continue
        n, bad = strip_file(path)
        total += n
        leaks += bad
        if n:
            print(f"  {path.relative_to(root)}: removed {n} solution cell(s)")
    if leaks:
        print("a directive with the class `solution` is in a cell not tagged `solution` "
              "(tag the cell, or the student edition shows it):", file=sys.stderr)
        for leak in leaks:
            print(f"  {leak}", file=sys.stderr)
        return 1
    print(f"removed {total} solution cell(s) under {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
