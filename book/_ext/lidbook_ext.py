"""Sphinx extension of the book (loaded by ``_config.yml``: ``sphinx.local_extensions``).

Colab only opens ``.ipynb`` files, but the chapters are MyST-markdown notebooks (``book/*.md``), so
sphinx-book-theme's Colab button would point at ``book/<page>.md`` on GitHub, which Colab cannot open.
The theme already ships the *executed* notebook of every markdown page as
``_sources/<page>.ipynb`` in the built site (that is what its ``.ipynb`` download button serves).
This extension

1. points the Colab launch button at that notebook on the branch the built site is published from
   (``lidbook_colab_branch``, default ``gh-pages``; ``lidbook_colab_path`` is the folder of the
   notebooks inside the published site, default ``_sources/``):
   ``https://colab.research.google.com/github/<org>/<repo>/blob/gh-pages/_sources/book/<page>.ipynb``;
2. inserts a set-up cell (after the title) into every shipped ``_sources/**/*.ipynb`` that installs
   ``lidlib[book]`` (the library, its exercise solutions and what the chapters import) when the
   notebook runs on Colab or wherever ``lidlib`` is not installed -- a downloaded notebook in an
   empty folder runs top to bottom after it.  It installs from the book's repository
   (``repository.url``/``branch`` of ``_config.yml``); the environment variable ``LIDLIB_SOURCE``
   (any pip URL, e.g. ``file:///path/to/clone``) overrides that, which is how
   tests/test_routes.py runs the shipped notebooks offline (``lidbook_colab_setup``; empty string:
   no cell).

3. removes duplicate ``<script>`` entries from every page: Sphinx 7.4 adds an inline script that an
   extension registered after ``builder-inited`` twice (its ``None`` file name comes back as ``''``);
   sphinx-thebe's ``const THEBE_JS_URL = ...`` then throws "Identifier 'THEBE_JS_URL' has already
   been declared" on every page.

Binder keeps the theme's link (it clones the repository and opens ``book/<page>.md`` there; binder/
installs ``.[book]`` and jupytext, which opens the page as a notebook).
"""
from __future__ import annotations

import re
from pathlib import Path

SETUP_TAG = "colab-setup"
DEFAULT_SETUP = (
    "# Set-up: on Colab, or wherever lidlib is not installed, install lidlib with the book's extras\n"
    "# from the book's repository (LIDLIB_SOURCE=<pip URL> installs from elsewhere, e.g. file:///a/clone).\n"
    "import importlib, importlib.util, os, subprocess, sys\n"
    "if \"google.colab\" in sys.modules or importlib.util.find_spec(\"lidlib\") is None:\n"
    "    source = os.environ.get(\"LIDLIB_SOURCE\", \"git+{repository_url}@{branch}\")\n"
    "    subprocess.run([sys.executable, \"-m\", \"pip\", \"install\", \"-q\", "
    "f\"lidlib[book] @ {{source}}\"], check=True)\n"
    "    importlib.invalidate_caches()"
)
_COLAB_RE = re.compile(r"^(?P<head>.*?/github/[^/]+/[^/]+/blob/)[^/]+/.*$")


def _colab_to_ipynb(app, pagename, templatename, context, doctree):
    """``html-page-context`` (after the theme built its buttons): Colab button -> published .ipynb."""
    branch = app.config.lidbook_colab_branch
    folder = app.config.lidbook_colab_path.strip("/")
    folder = f"{folder}/" if folder else ""
    for group in context.get("header_buttons", []) or []:
        if group.get("label") != "launch-buttons":
            continue
        for button in group.get("buttons", []):
            if button.get("text") != "Colab":
                continue
            m = _COLAB_RE.match(button.get("url", ""))
            if m:
                button["url"] = f"{m.group('head')}{branch}/{folder}{pagename}.ipynb"
                button["tooltip"] = "Launch on Colab (the executed notebook of this page)"


def _dedupe_scripts(app, pagename, templatename, context, doctree):
    """``html-page-context`` (last): drop repeated scripts (same file or body, same attributes)."""
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for js in scripts:
        filename = getattr(js, "filename", js) or ""
        attrs = getattr(js, "attributes", {}) or {}
        key = (filename, tuple(sorted((k, str(v)) for k, v in attrs.items())))
        if key not in seen:
            seen.add(key)
            unique.append(js)
    if len(unique) != len(scripts):
        context["script_files"] = unique


def _add_setup_cells(app, exception):
    """``build-finished``: add the Colab set-up cell to the shipped notebooks."""
    if exception is not None or app.builder.format != "html" or not app.config.lidbook_colab_setup:
        return
    import nbformat

    opts = app.config.html_theme_options or {}
    code = app.config.lidbook_colab_setup.format(
        repository_url=str(opts.get("repository_url", "")).rstrip("/"),
        branch=opts.get("repository_branch") or "main",
    )
    for path in sorted(Path(app.outdir, "_sources").rglob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        if any(SETUP_TAG in c.get("metadata", {}).get("tags", []) for c in nb.cells):
            continue
        cell = nbformat.v4.new_code_cell(code, metadata={"tags": [SETUP_TAG]})
        # after the title cell, if the notebook opens with a heading
        titled = nb.cells and nb.cells[0].cell_type == "markdown" and nb.cells[0].source.lstrip().startswith("#")
        at = 1 if titled else 0
        nb.cells.insert(at, cell)
        if (nb.nbformat, nb.nbformat_minor) < (4, 5):  # cell ids exist from nbformat 4.5 on
            cell.pop("id", None)
        nbformat.write(nb, path)


# 4. The paper's equation numbers.  Sphinx numbers labelled equations 1, 2, 3, ... in order of
#    appearance; the book must show and cite the paper's numbers.  An equation labelled ``eq-N``
#    (N the paper's number, e.g. ``$$ ... $$ (eq-13)``) is numbered N, both where it is displayed
#    and wherever ``{eq}`eq-13``` cites it.  Other equations stay unnumbered (no label).
_PAPER_EQ = re.compile(r"^eq-(\d+)$")


def _paper_equation_numbers():
    from sphinx.domains.math import MathDomain
    from sphinx.util import logging

    original = MathDomain.note_equation
    if getattr(original, "_lidbook", False):
        return
    log = logging.getLogger(__name__)

    def note_equation(self, docname, labelid, location=None):
        match = _PAPER_EQ.match(labelid)
        if match is None:
            return original(self, docname, labelid, location)
        if labelid in self.equations and self.equations[labelid][0] != docname:
            log.warning("duplicate label of equation %s, other instance in %s", labelid,
                        self.equations[labelid][0], location=location)
        self.equations[labelid] = (docname, int(match.group(1)))

    note_equation._lidbook = True
    MathDomain.note_equation = note_equation


def setup(app):
    _paper_equation_numbers()
    app.add_config_value("lidbook_colab_branch", "gh-pages", "html")
    app.add_config_value("lidbook_colab_path", "_sources/", "html")
    app.add_config_value("lidbook_colab_setup", DEFAULT_SETUP, "html")
    app.connect("html-page-context", _colab_to_ipynb, priority=900)
    app.connect("html-page-context", _dedupe_scripts, priority=999)
    app.connect("build-finished", _add_setup_cells)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
