#!/usr/bin/env bash
# Build the Jupyter Book (version 1) from a fresh clone, offline, executing every chapter.
#
# Usage:
#   scripts/build_book.sh             full book            -> _build/html/
#   scripts/build_book.sh --student   student edition      -> _build/student/_build/html/
#   scripts/build_book.sh -h          this help
#
# Then check the pages in a real browser:
#   python scripts/check_book.py                                   # full book
#   python scripts/check_book.py _build/student/_build/html --student
#
# What it does:
#   * removes the previous build (the HTML, the executed notebooks, the doctrees);
#   * runs `jupyter-book build . -W --keep-going` from the repository root: warnings are errors,
#     every page is still built so that all the problems are listed, and the exit status is non-zero
#     if anything failed (a cell that raises, a warning, text on a cell's stderr, a bad reference);
#   * every chapter is executed (execute_notebooks: force, 600 s per cell; see _config.yml) with
#     this checkout's lidlib first on PYTHONPATH;
#   * nothing is downloaded: MathJax and the widget manager are vendored in book/_vendor/.
#   * prints the wall-clock time and the number of pages.
#
# The student switch (--student): solutions are notebook cells tagged `solution`, e.g.
#     ```{code-cell} ipython3
#     :tags: [solution, hide-cell]
#     ```
# or a markdown cell preceded by  +++ {"tags": ["solution"]}  (typically an {admonition} with
# `:class: dropdown solution`).  The full book shows them (collapsed); --student copies the book to
# _build/student/, deletes those cells from the copy (scripts/strip_solutions.py), merges
# _config_student.yml over _config.yml, and builds the copy.  So the student pages, search index and
# downloadable .md/.ipynb contain no solution, and the build proves the chapters run without them.
set -euo pipefail
# OpenMP threads that spin while waiting are 5-20x slower on a shared 2-core machine.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

usage() { sed -n '2,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

STUDENT=0
for arg in "$@"; do
  case "$arg" in
    --student) STUDENT=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option: $arg" >&2; usage >&2; exit 2 ;;
  esac
done

JB="${JUPYTER_BOOK:-jupyter-book}"
if ! command -v "$JB" >/dev/null 2>&1; then
  echo "error: '$JB' not found; pip install 'jupyter-book>=1.0.4,<2'" >&2
  exit 1
fi
if ! "$JB" --version 2>/dev/null | grep -qE 'Jupyter Book[^0-9]*1\.'; then
  echo "error: Jupyter Book 1 is required ('jupyter-book>=1.0.4,<2'); found: $("$JB" --version 2>&1 | head -1)" >&2
  exit 1
fi
if ! jupyter kernelspec list 2>/dev/null | grep -qE '^\s*python3\s'; then
  echo "error: no 'python3' Jupyter kernel; pip install ipykernel (or python -m ipykernel install --user)" >&2
  exit 1
fi

# Jupyter Book 1 pitfall: if a top-level _static/ exists, it adds every .js/.css found in *all* of
# html_static_path (book/_vendor too) to every page: MathJax would load twice, embed.js everywhere.
if [[ -d _static ]]; then
  echo "error: remove the top-level _static/ folder; put the book's own CSS/JS in book/_vendor/lidbook/" >&2
  echo "       and list it in _config.yml (sphinx.config.html_css_files / html_js_files)." >&2
  exit 1
fi

START=$(date +%s)

if [[ $STUDENT == 1 ]]; then
  SRC="_build/student"
  echo "== student edition: copying the book to $SRC/ and removing the solutions"
  rm -rf "$SRC"
  python3 - "$ROOT" "$SRC" <<'EOF'
import shutil, sys
from pathlib import Path
import yaml

root, dest = Path(sys.argv[1]), Path(sys.argv[2])
shutil.copytree(root, dest, symlinks=True, ignore=shutil.ignore_patterns(
    ".git", "_build", "node_modules", "__pycache__", ".pytest_cache", "*.egg-info", ".ipynb_checkpoints",
    ".venv", "build"))

def merge(base, over):
    for k, v in over.items():
        base[k] = merge(base.get(k) or {}, v) if isinstance(v, dict) and isinstance(base.get(k), (dict, type(None))) else v
    return base

cfg = yaml.safe_load((root / "_config.yml").read_text(encoding="utf8"))
over = yaml.safe_load((root / "_config_student.yml").read_text(encoding="utf8")) or {}
(dest / "_config.yml").write_text(yaml.safe_dump(merge(cfg, over), sort_keys=False, allow_unicode=True),
                                  encoding="utf8")
(dest / "_config_student.yml").unlink()
EOF
  python3 scripts/strip_solutions.py "$SRC/book"
  OUT="$SRC/_build/html"
else
  SRC="."
  echo "== full book: removing the previous build"
  rm -rf _build/html _build/jupyter_execute _build/.doctrees _build/.jupyter_cache
  OUT="_build/html"
fi

# This checkout's lidlib wins over any installed copy (the kernel inherits the environment).
if [[ $SRC == "." ]]; then LIBROOT="$ROOT"; else LIBROOT="$ROOT/$SRC"; fi
export PYTHONPATH="$LIBROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYDEVD_DISABLE_FILE_VALIDATION=1   # quiets ipykernel's debugger warning on frozen modules
export LIDBOOK_STATIC=1                  # lidlib.widgets.gallery.live: no live widgets in the static pages (a pointer line instead)

STATUS=0
"$JB" build "$SRC" -W --keep-going --all || STATUS=$?

ELAPSED=$(( $(date +%s) - START ))
TIME="$(( ELAPSED / 60 )) min $(( ELAPSED % 60 )) s"

if [[ $STATUS != 0 ]]; then
  # myst-nb saves the traceback of a failed notebook under <html>/reports/; show it here.
  if [[ -d "$OUT/reports" ]]; then
    while IFS= read -r log; do
      echo "== traceback saved in $log (last 60 lines):" >&2
      tail -n 60 "$log" >&2
    done < <(find "$OUT/reports" -name '*.err.log' | sort)
  fi
  echo "BUILD FAILED (exit $STATUS) after $TIME: see the warnings/errors above." >&2
  exit "$STATUS"
fi
if [[ ! -f "$OUT/index.html" ]]; then
  echo "BUILD FAILED: $OUT/index.html is missing after $TIME." >&2
  exit 1
fi

# Pages = HTML files made from sources (not the index redirect, search and general index pages).
PAGES=$(find "$OUT" -name '*.html' -not -path "$OUT/_static/*" -not -path "$OUT/_sources/*" \
          -not -path "$OUT/_images/*" \
          -not -name genindex.html -not -name search.html -not -path "$OUT/index.html" | wc -l)
NOTEBOOKS=$(find "$OUT/_sources" -name '*.ipynb' 2>/dev/null | wc -l)
echo
echo "Built $PAGES pages ($NOTEBOOKS executed notebooks shipped for Colab/download) in $TIME"
echo "  open $OUT/index.html"
