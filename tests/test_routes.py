"""The routes by which a reader runs the book: a fresh clone, a downloaded notebook / Colab, Binder,
a classroom.

Fast checks (always): the Makefile's choice of environment, the Colab set-up cell, the Binder
configuration, the folded solution outputs and their removal from the student edition.

End-to-end checks (``LIDBOOK_ROUTES=1``, run by .ci/run after ``make book``; about 5-10 min, most of
it installing torch into a fresh venv), all offline, in ONE fresh venv made here:

1. *Binder*: ``pip install -r binder/requirements.txt``, then ``binder/postBuild`` (installs
   ``.[book]``), then one chapter opened through jupytext and executed in ``book/``, as Binder does.
2. *Downloaded notebook / Colab*: lidlib is uninstalled again; the ``.ipynb`` that the site ships for
   a toy chapter runs top to bottom in an empty folder outside the repository: its own set-up cell
   installs ``lidlib[book]`` from ``LIDLIB_SOURCE=file://<this checkout>`` (on Colab: the
   repository).  Then the shipped notebook of a real-network chapter runs the same way.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"
SHIPPED = ROOT / "_build" / "html" / "_sources" / "book"
sys.path.insert(0, str(BOOK / "_ext"))
sys.path.insert(0, str(ROOT / "scripts"))

import lidbook_ext

ROUTES = os.environ.get("LIDBOOK_ROUTES") == "1"
# the chapters of the end-to-end routes (override: LIDBOOK_ROUTE_CHAPTERS="02_lrp0 10_sig_lid_ig")
TOY, REAL = os.environ.get("LIDBOOK_ROUTE_CHAPTERS", "02_lrp0 10_sig_lid_ig").split()
BINDER_CHAPTER = os.environ.get("LIDBOOK_BINDER_CHAPTER", "01_relevance")


def chapters():
    return sorted(p for p in BOOK.glob("[0-9][0-9]_*.md"))


# ----------------------------------------------------------------------------------------------
# A fresh clone: the Makefile installs into the active venv, else into a project venv .venv/.

def _make_n(target, path_dirs, extra_env=None):
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "CONDA_PREFIX", "PYTHON")}
    env["PATH"] = os.pathsep.join(map(str, path_dirs)) + os.pathsep + "/usr/bin:/bin"
    env.update(extra_env or {})
    out = subprocess.run(["make", "-n", "-C", str(ROOT), target], env=env, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout


def _fake_python_dir(tmp_path, python):
    d = tmp_path / "bin"
    d.mkdir()
    (d / "python3").symlink_to(python)
    return d


@pytest.mark.parametrize("target", ["book", "test"])
def test_make_outside_a_venv_uses_a_project_venv(tmp_path, target):
    """A system Python (here: the one this venv is made from) is never asked to pip install."""
    base = Path(sys.base_prefix) / "bin" / "python3"
    out = _make_n(target, [_fake_python_dir(tmp_path, base)])
    assert ("python3 -m venv \".venv\"" in out) == (not (ROOT / ".venv" / "bin" / "python").exists())
    assert f"{ROOT}/.venv/bin/python -m pip install" in out
    assert "python3 -m pip" not in out.replace(f"{ROOT}/.venv/bin/python", "VENV")


@pytest.mark.parametrize("target", ["book", "test"])
def test_make_inside_a_venv_uses_it(tmp_path, target):
    venv = tmp_path / "v"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    out = _make_n(target, [venv / "bin"])
    assert "-m venv" not in out and ".venv/bin/python" not in out
    assert "python3 -m pip install" in out


def test_make_on_a_pep668_system_python():
    """Debian/Ubuntu: python3 refuses pip (EXTERNALLY-MANAGED); make still never calls its pip."""
    system = Path("/usr/bin/python3")
    if not system.exists():
        pytest.skip("no /usr/bin/python3")
    marker = subprocess.run([str(system), "-c", "import sysconfig; print(sysconfig.get_path('stdlib'))"],
                            capture_output=True, text=True, check=False).stdout.strip()
    if not (Path(marker) / "EXTERNALLY-MANAGED").exists():
        pytest.skip("this machine's /usr/bin/python3 is not externally managed")
    out = _make_n("book", ["/usr/bin"])
    assert ("python3 -m venv \".venv\"" in out) == (not (ROOT / ".venv" / "bin" / "python").exists())
    assert f"{ROOT}/.venv/bin/python -m pip install" in out
    assert "python3 -m pip" not in out.replace(f"{ROOT}/.venv/bin/python", "V")


def test_the_project_venv_is_not_part_of_the_book():
    """make's .venv/ (and pip's in-tree build/) sit in the checkout: the build and the student copy skip them."""
    from sphinx.util.matching import Matcher

    match = Matcher(_config()["exclude_patterns"])

    def excluded(path):   # Sphinx prunes a folder that matches, or skips the file
        parts = path.split("/")
        return any(match("/".join(parts[:k])) for k in range(1, len(parts) + 1))

    for path in (".venv/lib/python3.11/site-packages/pkg/README.md", "build/lib/lidlib/notes.md"):
        assert excluded(path), f"_config.yml's exclude_patterns let the build read {path}"
    assert not excluded("book/02_lrp0.md")
    copy = (ROOT / "scripts" / "build_book.sh").read_text(encoding="utf8")
    ignore = copy[copy.index("ignore_patterns("):copy.index("))", copy.index("ignore_patterns("))]
    assert '".venv"' in ignore and '"build"' in ignore, "the student copy would copy .venv/"


# ----------------------------------------------------------------------------------------------
# Downloaded notebook / Colab: the set-up cell of the shipped notebooks.

def _config():
    return yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf8"))


class _App:
    """The part of a Sphinx app that lidbook_ext._add_setup_cells reads."""

    def __init__(self, outdir):
        cfg = _config()["repository"]

        class C:
            lidbook_colab_setup = lidbook_ext.DEFAULT_SETUP
            html_theme_options = {"repository_url": cfg["url"], "repository_branch": cfg["branch"]}

        class B:
            format = "html"

        self.config, self.builder, self.outdir = C(), B(), str(outdir)


def _setup_cell(nb):
    cells = [c for c in nb.cells if lidbook_ext.SETUP_TAG in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, "the shipped notebook has no (or several) set-up cells"
    return cells[0]


def test_setup_cell_is_inserted_after_the_title(tmp_path):
    import nbformat

    src = tmp_path / "_sources" / "book"
    src.mkdir(parents=True)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Title"),
                                         nbformat.v4.new_code_cell("import lidlib")])
    nbformat.write(nb, src / "ch.ipynb")
    lidbook_ext._add_setup_cells(_App(tmp_path), None)
    lidbook_ext._add_setup_cells(_App(tmp_path), None)       # idempotent
    nb = nbformat.read(src / "ch.ipynb", as_version=4)
    assert [c.cell_type for c in nb.cells] == ["markdown", "code", "code"]
    assert _setup_cell(nb).source == nb.cells[1].source == lidbook_ext.DEFAULT_SETUP.format(
        repository_url=_config()["repository"]["url"].rstrip("/"), branch=_config()["repository"]["branch"])


def _run_setup(code, monkeypatch, lidlib_found, colab=False, source=None):
    """Execute the set-up cell's code with pip replaced by a recorder; returns the pip calls."""
    import importlib.util

    calls = []
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(subprocess, "run", lambda args, **kw: calls.append(list(args)))
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: (real_find_spec(name, *a) if lidlib_found else None)
                        if name == "lidlib" else real_find_spec(name, *a))
    if colab:
        monkeypatch.setitem(sys.modules, "google.colab", type(sys)("google.colab"))
    if source is None:
        monkeypatch.delenv("LIDLIB_SOURCE", raising=False)
    else:
        monkeypatch.setenv("LIDLIB_SOURCE", source)
    exec(compile(code, "<set-up cell>", "exec"), {})
    return calls


def test_setup_cell_installs_lidlib_book_from_the_repository_or_LIDLIB_SOURCE(tmp_path, monkeypatch):
    cfg = _config()["repository"]
    code = lidbook_ext.DEFAULT_SETUP.format(repository_url=cfg["url"].rstrip("/"), branch=cfg["branch"])
    pip = [sys.executable, "-m", "pip", "install", "-q"]
    assert _run_setup(code, monkeypatch, lidlib_found=True) == []            # installed: nothing to do
    assert _run_setup(code, monkeypatch, lidlib_found=False) == [
        pip + [f"lidlib[book] @ git+{cfg['url'].rstrip('/')}@{cfg['branch']}"]]
    assert _run_setup(code, monkeypatch, lidlib_found=True, colab=True) == [
        pip + [f"lidlib[book] @ git+{cfg['url'].rstrip('/')}@{cfg['branch']}"]]
    assert _run_setup(code, monkeypatch, lidlib_found=False, source=ROOT.as_uri()) == [
        pip + [f"lidlib[book] @ {ROOT.as_uri()}"]]


def test_shipped_notebooks_have_the_setup_cell():
    import nbformat

    if not SHIPPED.is_dir():
        pytest.skip("the book is not built (make book)")
    for md in chapters():
        nb = nbformat.read(SHIPPED / f"{md.stem}.ipynb", as_version=4)
        assert "LIDLIB_SOURCE" in _setup_cell(nb).source, md.name


# ----------------------------------------------------------------------------------------------
# Binder and the classroom.

def test_binder_installs_lidlib_and_jupytext():
    reqs = (ROOT / "binder" / "requirements.txt").read_text(encoding="utf8")
    post = (ROOT / "binder" / "postBuild").read_text(encoding="utf8")
    assert "jupytext" in reqs
    assert 'pip install --no-cache-dir ".[book]"' in post and "set-default-viewer" in post
    assert os.access(ROOT / "binder" / "postBuild", os.X_OK)


def _cells(md):
    import jupytext

    return jupytext.read(md, fmt="md:myst").cells


@pytest.mark.parametrize("md", chapters(), ids=lambda p: p.stem)
def test_solution_outputs_are_folded(md):
    """Full edition: a solution cell's output (the answer) is folded with it, not in plain view."""
    for cell in _cells(md):
        tags = cell.metadata.get("tags", [])
        if cell.cell_type == "code" and "solution" in tags:
            assert {"hide-cell", "hide-output", "remove-cell", "remove-output"} & set(tags), (
                f"{md.name}: solution cell {cell.source[:40]!r} shows its output (tag it hide-cell)")


@pytest.mark.parametrize("md", chapters(), ids=lambda p: p.stem)
def test_student_edition_has_no_solution(md):
    import strip_solutions

    text = md.read_text(encoding="utf8")
    stripped, removed, leaks = strip_solutions.strip_myst(text)
    assert not leaks
    if "from solutions." in text:
        assert removed >= 2
    assert not re.search(r"\b(from|import) solutions\b", stripped)
    import jupytext

    assert not [c for c in jupytext.reads(stripped, fmt="md:myst").cells
                if "solution" in c.metadata.get("tags", [])]


# ----------------------------------------------------------------------------------------------
# End to end, in one fresh venv (LIDBOOK_ROUTES=1).

def _clean_env(venv, home):
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "JUPYTER_PATH", "JUPYTER_DATA_DIR", "JUPYTER_CONFIG_DIR")}
    env.update(PATH=f"{venv}/bin{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(venv), HOME=str(home),
               OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"), OMP_WAIT_POLICY="PASSIVE",
               PIP_DISABLE_PIP_VERSION_CHECK="1", PYDEVD_DISABLE_FILE_VALIDATION="1")
    return env


def _run(cmd, **kw):
    t = time.perf_counter()
    kw.setdefault("check", False)
    out = subprocess.run(cmd, capture_output=True, text=True, **kw)
    took = time.perf_counter() - t
    print(f"[{took:6.1f} s] {' '.join(map(str, cmd))[:160]}")
    assert out.returncode == 0, f"{cmd} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
    return out


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory):
    if not ROUTES:
        pytest.skip("end-to-end routes: set LIDBOOK_ROUTES=1 (.ci/run does; needs ~6 GB and minutes)")
    base = Path(os.environ.get("LIDBOOK_ROUTES_DIR") or tmp_path_factory.mktemp("routes"))
    venv, home = base / "venv", base / "home"
    shutil.rmtree(venv, ignore_errors=True)
    home.mkdir(parents=True, exist_ok=True)
    _run(["python3", "-m", "venv", str(venv)], check=False)
    env = _clean_env(venv, home)
    # Binder: its requirements, then its postBuild from the repository root.
    _run([f"{venv}/bin/python", "-m", "pip", "install", "-q", "-r", "binder/requirements.txt"], cwd=ROOT, env=env)
    _run(["bash", "binder/postBuild"], cwd=ROOT, env=env)
    return venv, home, env


def _where(venv, env, cwd, modules=("lidlib", "solutions")):
    code = "import sys\n" + "".join(f"import {m}; print({m}.__file__)\n" for m in modules)
    return _run([f"{venv}/bin/python", "-c", code], cwd=cwd, env=env).stdout.split()


def test_binder_route_runs_a_chapter_through_jupytext(fresh_venv, tmp_path):
    venv, home, env = fresh_venv
    lidlib_file = _where(venv, env, tmp_path, ("lidlib",))[0]
    assert lidlib_file.startswith(str(venv)), f"lidlib not installed in the Binder venv: {lidlib_file}"
    assert (home / ".jupyter" / "labconfig").is_dir(), "postBuild did not set jupytext as the default viewer"
    _run([f"{venv}/bin/jupytext", "--to", "ipynb", "--execute", "--output", str(tmp_path / "out.ipynb"),
          f"{BINDER_CHAPTER}.md"], cwd=BOOK, env=env)


def _run_shipped(venv, env, chapter, folder):
    """Run a shipped notebook in an empty folder with the venv's kernel; returns lidlib's location."""
    import nbformat

    src = SHIPPED / f"{chapter}.ipynb"
    if not src.exists():
        pytest.fail(f"{src} is missing: build the book first (make book)")
    folder.mkdir()
    nb = nbformat.read(src, as_version=4)
    _setup_cell(nb)
    nb.cells.append(nbformat.v4.new_code_cell(
        "import sys, lidlib, solutions\nprint(sys.executable, lidlib.__file__, solutions.__file__)"))
    nbformat.write(nb, folder / f"{chapter}.ipynb")
    assert sorted(p.name for p in folder.iterdir()) == [f"{chapter}.ipynb"]
    runner = ("import sys, nbformat\nfrom nbclient import NotebookClient\n"
              "nb = nbformat.read(sys.argv[1], as_version=4)\n"
              "NotebookClient(nb, timeout=900, kernel_name='python3', resources={'metadata': {'path': '.'}}).execute()\n"
              "print(nb.cells[-1].outputs[0]['text'])\n")
    out = _run([f"{venv}/bin/python", "-c", runner, f"{chapter}.ipynb"], cwd=folder, env=env)
    executable, lidlib_file, solutions_file = out.stdout.split()[-3:]
    assert executable.startswith(str(venv))
    for f in (lidlib_file, solutions_file):
        assert f.startswith(str(venv)) and not f.startswith(str(ROOT)), f
    return lidlib_file


def test_downloaded_notebook_routes(fresh_venv, tmp_path):
    """A toy chapter, whose set-up cell installs lidlib[book]; then a real-network chapter."""
    venv, _home, env = fresh_venv
    _run([f"{venv}/bin/python", "-m", "pip", "uninstall", "-q", "-y", "lidlib"], env=env)
    env = dict(env, LIDLIB_SOURCE=ROOT.as_uri())
    probe = subprocess.run([f"{venv}/bin/python", "-c", "import lidlib"], cwd=tmp_path, env=env, check=False)
    assert probe.returncode != 0, "lidlib is still importable: the set-up cell would not be tested"
    _run_shipped(venv, env, TOY, tmp_path / "toy")
    _run_shipped(venv, env, REAL, tmp_path / "real")
