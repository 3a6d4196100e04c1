#!/usr/bin/env python3
"""Check the built book in a real browser (headless Chromium), offline.

    python scripts/check_book.py [HTML_DIR] [--student] [--screenshots DIR] [--chromium PATH]

HTML_DIR defaults to ``_build/html`` (``scripts/build_book.sh``'s output; the student edition is in
``_build/student/_build/html``).  The pages are served on 127.0.0.1 (a free port) and every page is
loaded in headless Chromium.  The check fails (exit 1, with a list) on

* a JavaScript console error or an uncaught page error;
* a request to anything but the local server (the book must work offline; such requests are blocked
  and listed), or a file the server does not have (404);
* an equation MathJax did not render (a math node without output, raw ``$$``/``\\(``/``\\[`` text
  left in the page) or rendered as an error (``mjx-merror``);
* a missing image (an ``<img>`` that does not decode, naturalWidth 0);
* a widget view that the embedded widget manager did not render;
* a gallery (``lidlib.widgets.gallery``, CSS class ``lid-gallery``) whose controls do not switch the image:
  each control is moved through all its options and the visible image must change each time;
* a script loaded twice on a page (e.g. MathJax; see the _static/ pitfall in scripts/build_book.sh);
* a Colab button pointing at a notebook the site does not ship;
* with ``--student``: anything left of a solution (``.tag_solution``/``.solution`` elements, cells
  tagged ``solution`` in the shipped .md/.ipynb files).

Needs: ``pip install playwright`` (the Python package only: never ``playwright install``; the browser
is the system one) and ``apt-get install -y chromium`` (``/usr/bin/chromium``).
"""
from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import re
import shutil
import sys
import threading
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
SKIP_DIRS = {"_static", "_sources", "_images", "_downloads"}
PAGE_TIMEOUT_MS = 60_000
RENDER_TIMEOUT_MS = 30_000
SWITCH_TIMEOUT_MS = 5_000
MAX_STEPS = 12          # options tried per control (a gallery has fewer; a live slider fails at the first)

# --------------------------------------------------------------------------------------------------
# JavaScript run in the page

JS_WAIT_MATHJAX = """async () => {
  const mj = window.MathJax;
  if (!mj || !mj.startup || !mj.startup.promise) return false;
  await mj.startup.promise;
  if (mj.typesetPromise) await mj.typesetPromise();
  return true;
}"""

JS_WIDGET_VIEWS = """() => {
  const views = [...document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]')];
  const rendered = views.filter(s => {
    const p = s.previousElementSibling;
    return p && p.classList.contains('widget-subarea') && p.querySelector('.jupyter-widgets');
  });
  const state = document.querySelector('script[type="application/vnd.jupyter.widget-state+json"]');
  let galleriesInState = 0;
  if (state) {
    try {
      const models = JSON.parse(state.textContent).state || {};
      const galleryIds = new Set(Object.entries(models)
        .filter(([id, m]) => ((m.state || {})._dom_classes || []).includes('lid-gallery')).map(([id]) => id));
      galleriesInState = views.filter(s => {
        try { return galleryIds.has(JSON.parse(s.textContent).model_id); } catch (e) { return false; }
      }).length;
    } catch (e) { galleriesInState = -1; }
  }
  return {views: views.length, rendered: rendered.length, hasState: !!state, galleriesInState,
          galleries: document.querySelectorAll('.lid-gallery').length};
}"""

JS_IMAGES = """async () => {
  const imgs = [...document.images];
  for (const i of imgs) if (i.loading === 'lazy') i.loading = 'eager';
  const results = await Promise.all(imgs.map(async i => {
    if (!i.complete) await new Promise(r => { i.addEventListener('load', r); i.addEventListener('error', r); setTimeout(r, 15000); });
    if (i.naturalWidth > 0) return null;
    try { await i.decode(); return null; } catch (e) { return (i.currentSrc || i.src || i.outerHTML).slice(0, 200); }
  }));
  return {count: imgs.length, broken: results.filter(x => x)};
}"""  # noqa: E501 (JavaScript)

JS_MATH = r"""() => {
  const errors = [...document.querySelectorAll('mjx-merror, [data-mjx-error], [data-mml-node="merror"]')]
    .map(e => (e.getAttribute('data-mjx-error') || e.textContent || '').slice(0, 160));
  const nodes = [...document.querySelectorAll('span.math, div.math')];
  const unrendered = nodes.filter(n => !n.querySelector('mjx-container')).map(n => n.textContent.trim().slice(0, 160));
  const skip = 'script, style, pre, code, textarea, mjx-container, .highlight, svg';
  const raw = [];
  const pattern = /\$\$|\\\(|\\\)|\\\[|\\\]|\\begin\{|\$[^$\n]*[\\^_{}][^$\n]*\$/;
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let t = walker.nextNode(); t; t = walker.nextNode()) {
    const parent = t.parentElement;
    if (!parent || parent.closest(skip)) continue;
    const m = t.textContent.match(pattern);
    if (m) raw.push(t.textContent.trim().slice(0, 160));
  }
  return {containers: document.querySelectorAll('mjx-container').length, nodes: nodes.length, errors, unrendered, raw};
}"""

# Every widget view on the page (the element the embedded manager rendered a saved view into), and
# every control in it.  Each control gets data-check-control="<view>-<k>", each view data-check-view.
JS_LABEL_CONTROLS = """() => {
  const views = [...document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]')]
    .map(s => s.previousElementSibling).filter(p => p && p.classList.contains('widget-subarea'));
  const out = [];
  views.forEach((v, vi) => {
    v.setAttribute('data-check-view', String(vi));
    const controls = [];
    const add = (el, kind, n, label) => {
      if (el.hasAttribute('data-check-control')) return;
      const id = vi + '-' + controls.length;
      el.setAttribute('data-check-control', id);
      controls.push({id, kind, n, label: (label || '').trim().slice(0, 40)});
    };
    const desc = el => { const w = el.closest('.widget-inline-hbox, .widget-inline-vbox, .widget-toggle-buttons');
                         const l = w && w.querySelector('.widget-label'); return l ? l.textContent : ''; };
    v.querySelectorAll('select').forEach(el => add(el, 'select', el.options.length, desc(el)));
    v.querySelectorAll('.widget-toggle-buttons').forEach(el =>
      add(el, 'toggle', el.querySelectorAll('button').length, desc(el)));
    v.querySelectorAll('.noUi-handle').forEach(h => {
      const el = h.closest('.widget-slider, .widget-hslider, .widget-vslider, .widget-inline-hbox') || h;
      add(el, 'slider', Number(h.getAttribute('aria-valuemax')) - Number(h.getAttribute('aria-valuemin')) + 1, desc(el));
    });
    v.querySelectorAll('input[type="checkbox"]').forEach(el =>
      add(el, 'checkbox', 2, (el.closest('.widget-checkbox') || el).textContent));
    v.querySelectorAll('button').forEach(el => {
      if (!el.closest('.widget-toggle-buttons, [data-check-control]')) add(el, 'button', 2, el.textContent);
    });
    v.querySelectorAll('input[type="text"], input[type="number"], textarea').forEach(el => {
      if (!el.closest('[data-check-control]')) add(el, 'text', 2, desc(el));
    });
    v.querySelectorAll('.lm-TabBar-tab, .p-TabBar-tab').forEach((el, k) => {
      if (k > 0) add(el, 'tab', 2, el.textContent);
    });
    out.push({index: vi, gallery: !!v.querySelector('.lid-gallery'), controls});
  });
  return out;
}"""  # noqa: E501 (JavaScript)

# The picture of a view: the visible images (their src), or, if the view shows no image at all, the
# visible text outside its controls (a slider's own read-out does not count as a picture).
JS_PICTURE = """(vi) => {
  const v = document.querySelector('[data-check-view="' + vi + '"]');
  const vis = el => el.checkVisibility ? el.checkVisibility() : el.offsetParent !== null;
  const imgs = [...v.querySelectorAll('img')].filter(vis);
  const text = [...v.querySelectorAll('.widget-html-content, .jp-OutputArea, .widget-output, .widget-label')]
    .filter(e => vis(e) && !e.closest('[data-check-control]')).map(e => e.textContent).join('|');
  return {imgs: imgs.map(i => ({src: i.src, loaded: i.complete && i.naturalWidth > 0, width: i.getBoundingClientRect().width})),
          text};
}"""  # noqa: E501 (JavaScript)

JS_PICTURE_CHANGED = """([vi, before]) => {
  const pic = (""" + JS_PICTURE + """)(vi);
  if (pic.imgs.some(i => !i.loaded)) return false;
  return JSON.stringify(pic.imgs.map(i => i.src)) !== JSON.stringify(before.imgs.map(i => i.src))
      || (before.imgs.length === 0 && pic.text !== before.text);
}"""

# Widths: no table, image, figure or widget may be wider than the text column (the article's content
# box).  A table inside a scrolling wrapper counts by its own width (the reader would have to scroll).
JS_WIDTHS = """() => {
  const col = document.querySelector('article.bd-article') || document.querySelector('main') || document.body;
  const cs = getComputedStyle(col), r = col.getBoundingClientRect();
  const left = r.left + parseFloat(cs.paddingLeft), right = r.right - parseFloat(cs.paddingRight);
  const width = right - left;
  const vis = el => el.checkVisibility ? el.checkVisibility() : el.offsetParent !== null;
  const bad = [];
  const what = el => {
    const id = el.closest('section[id]'); const cell = el.closest('.cell');
    const t = el.tagName.toLowerCase() + (el.className && typeof el.className === 'string' ? '.' + el.className.split(' ')[0] : '');
    return t + (id ? ' in #' + id.id : '') + (el.tagName === 'TABLE' ? ' (' + (el.rows[0] ? el.rows[0].textContent.replace(/\\s+/g, ' ').trim().slice(0, 60) : '') + ')' : '');
  };
  const sel = 'table, img, figure, .widget-subarea, .cell_output svg, .cell_output canvas';
  col.querySelectorAll(sel).forEach(el => {
    if (!vis(el)) return;
    const b = el.getBoundingClientRect();
    if (b.width === 0) return;
    const w = Math.max(b.width, el.scrollWidth || 0);
    if (w > width + 1 || b.left < left - 1 || b.right > right + 1)
      bad.push({what: what(el), width: Math.round(w), column: Math.round(width),
                over: Math.round(Math.max(w - width, left - b.left, b.right - right))});
  });
  return {column: Math.round(width), bad};
}"""  # noqa: E501 (JavaScript)

JS_DUPLICATE_SCRIPTS = """() => {
  const seen = {}, dup = [];
  for (const s of document.scripts) {
    if (!s.src) continue;
    const path = s.src.split('?')[0];
    if (seen[path]) dup.push(path); else seen[path] = true;
  }
  return dup;
}"""

JS_SOLUTIONS = r"""() => [...document.querySelectorAll('.tag_solution, .solution')]
  .map(e => e.className + ': ' + e.textContent.replace(/\s+/g, ' ').trim().slice(0, 80))"""


# --------------------------------------------------------------------------------------------------
# Local server

class _Handler(http.server.SimpleHTTPRequestHandler):
    missing: list = []

    def log_request(self, code="-", size="-"):
        try:
            status = int(code)
        except (TypeError, ValueError):
            status = 0
        if status >= 400:
            self.missing.append((status, unquote(self.path)))

    def log_message(self, *args):  # silence the access log
        pass


class Server:
    """``http.server`` on 127.0.0.1 and a free port, in a thread."""

    def __init__(self, root: Path):
        handler = type("Handler", (_Handler,), {"missing": []})
        self.handler = handler
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def missing(self):
        return self.handler.missing


# --------------------------------------------------------------------------------------------------

def find_pages(root: Path) -> tuple[list[Path], list[str]]:
    """HTML pages to load, and problems with redirect pages (index.html -> first page)."""
    pages, problems = [], []
    for path in sorted(root.rglob("*.html")):
        rel = path.relative_to(root)
        if rel.parts[0] in SKIP_DIRS:
            continue
        text = path.read_text(encoding="utf8", errors="replace")
        m = re.search(r'http-equiv="Refresh"\s+content="\d+;\s*url=([^"]+)"', text, re.I)
        if m and len(text) < 2000:  # a redirect stub: check its target exists, do not load it
            target = (path.parent / unquote(m.group(1).split("#")[0])).resolve()
            if not target.exists():
                problems.append(f"{rel}: redirects to a missing page {m.group(1)}")
            continue
        pages.append(rel)
    return pages, problems


def find_chromium(explicit: str | None) -> str:
    for cand in [explicit, os.environ.get("CHROMIUM"), "/usr/bin/chromium", "/usr/bin/chromium-browser",
                 shutil.which("chromium"), shutil.which("chromium-browser"), shutil.which("google-chrome")]:
        if cand and Path(cand).exists():
            return cand
    sys.exit("error: no Chromium found; apt-get install -y chromium (or pass --chromium PATH)")


def check_sources_for_solutions(root: Path) -> list[str]:
    problems = []
    src = root / "_sources"
    for path in sorted(src.rglob("*")) if src.exists() else []:
        if path.suffix == ".ipynb":
            nb = json.loads(path.read_text(encoding="utf8"))
            n = sum("solution" in (c.get("metadata", {}).get("tags") or []) for c in nb.get("cells", []))
            if n:
                problems.append(f"_sources/{path.relative_to(src)}: {n} cell(s) tagged solution")
        elif path.suffix in (".md", ".txt"):
            text = path.read_text(encoding="utf8", errors="replace")
            if re.search(r'(:tags:|"tags"|^tags:).*\bsolution\b', text, re.M) or \
                    re.search(r"^\s*:class(-container)?:.*\bsolution\b", text, re.M):
                problems.append(f"_sources/{path.relative_to(src)}: contains a solution")
    return problems


def check_colab_links(root: Path, page: Path, html: str) -> list[str]:
    problems = []
    for url in re.findall(r'href="(https://colab\.research\.google\.com/github/[^"]+)"', html):
        m = re.match(r"https://colab\.research\.google\.com/github/[^/]+/[^/]+/blob/[^/]+/(.*)$", url)
        if not m or not m.group(1).endswith(".ipynb"):
            problems.append(f"{page}: the Colab button does not open an .ipynb: {url}")
            continue
        shipped = root / unquote(m.group(1))
        if not shipped.exists():
            problems.append(f"{page}: the Colab button opens {m.group(1)}, which the built site lacks")
    return problems


def safe_name(rel: Path) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", rel.with_suffix("").as_posix()).strip("-")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("html_dir", nargs="?", default="_build/html", help="built HTML (default: _build/html)")
    ap.add_argument("--student", action="store_true", help="also fail on any trace of a solution")
    ap.add_argument("--screenshots", metavar="DIR",
                    help="save a full-page PNG of every page, and of every gallery step")
    ap.add_argument("--chromium", metavar="PATH", help="Chromium executable (default: /usr/bin/chromium)")
    args = ap.parse_args(argv)

    root = Path(args.html_dir).resolve()
    if not (root / "index.html").exists():
        sys.exit(f"error: {root}/index.html not found; build the book first (scripts/build_book.sh)")
    try:
        from playwright.sync_api import TimeoutError as PWTimeout
        from playwright.sync_api import sync_playwright
    except ImportError:
        sys.exit("error: pip install playwright (the Python package; do not run `playwright install`)")

    shots = Path(args.screenshots) if args.screenshots else None
    if shots:
        shots.mkdir(parents=True, exist_ok=True)
    pages, failures = find_pages(root)
    if not pages:
        sys.exit(f"error: no HTML pages under {root}")
    if args.student:
        failures += check_sources_for_solutions(root)
    notes: list[str] = []
    totals = dict(pages=0, equations=0, images=0, widgets=0, galleries=0, controls=0, switches=0)
    external: list[tuple[str, str]] = []
    t0 = time.time()

    with Server(root) as server, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=find_chromium(args.chromium), headless=True, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        current = {"page": ""}

        def route(r):
            u = urlparse(r.request.url)
            if u.scheme in ("http", "https", "ws", "wss") and u.hostname not in LOCAL_HOSTS:
                external.append((current["page"], r.request.url))
                r.abort()
            else:
                r.continue_()

        context.route("**/*", route)
        base = f"http://127.0.0.1:{server.port}/"

        for rel in pages:
            name = rel.as_posix()
            current["page"] = name
            errors: list[str] = []
            page = context.new_page()
            page.on("console", lambda msg, errors=errors: errors.append(
                f"console error: {msg.text} ({msg.location.get('url', '')}:{msg.location.get('lineNumber', '')})")
                if msg.type == "error" else None)
            page.on("pageerror", lambda exc, errors=errors: errors.append(f"page error: {exc}"))
            page.on("websocket", lambda ws, name=name: external.append((name, ws.url))
                    if urlparse(ws.url).hostname not in LOCAL_HOSTS else None)
            try:
                for attempt in (1, 2):       # a loaded machine can miss the idle window once; a page that
                    page.goto(base + name, wait_until="load", timeout=PAGE_TIMEOUT_MS)   # never idles fails twice
                    try:
                        page.wait_for_load_state("networkidle", timeout=PAGE_TIMEOUT_MS)
                        break
                    except PWTimeout:
                        if attempt == 2:
                            errors.append("the network did not go idle (twice, 60 s each)")
                page.evaluate(JS_WAIT_MATHJAX)
                errors += [f"script loaded twice: {src}" for src in page.evaluate(JS_DUPLICATE_SCRIPTS)]

                # widgets (rendered by the embedded manager from the state saved in the page)
                w = page.evaluate(JS_WIDGET_VIEWS)
                if w["views"]:
                    if not w["hasState"]:
                        errors.append(f"{w['views']} widget view(s) but no saved widget state in the page")
                    try:
                        page.wait_for_function(f"() => ({JS_WIDGET_VIEWS})().rendered === {w['views']}",
                                               timeout=RENDER_TIMEOUT_MS)
                    except PWTimeout:
                        pass
                    w = page.evaluate(JS_WIDGET_VIEWS)
                    if w["rendered"] != w["views"]:
                        errors.append(f"only {w['rendered']} of {w['views']} widget views rendered")
                    if w["galleriesInState"] > w["galleries"]:
                        errors.append(f"{w['galleriesInState']} galleries displayed but {w['galleries']} rendered")
                totals["widgets"] += w["rendered"]
                page.evaluate(JS_WAIT_MATHJAX)

                m = page.evaluate(JS_MATH)
                totals["equations"] += m["nodes"]
                errors += [f"MathJax error: {e}" for e in m["errors"]]
                errors += [f"unrendered equation: {e}" for e in m["unrendered"]]
                errors += [f"raw TeX in the page text: {e!r}" for e in m["raw"]]

                im = page.evaluate(JS_IMAGES)
                totals["images"] += im["count"]
                errors += [f"missing image: {src}" for src in im["broken"]]

                if args.student:
                    errors += [f"solution left in the student edition: {s}" for s in page.evaluate(JS_SOLUTIONS)]

                if shots:
                    page.screenshot(path=str(shots / f"{safe_name(rel)}.png"), full_page=True)

                # widths: tables, figures, images and widgets fit in the text column
                wd = page.evaluate(JS_WIDTHS)
                errors += [f"{x['what']} is {x['width']} px wide and sticks out {x['over']} px of the text column "
                                f"({x['column']} px)" for x in wd["bad"]]

                # every control of every widget view, every option: the picture must change each time
                for v in page.evaluate(JS_LABEL_CONTROLS):
                    vi = v["index"]
                    kind_of_view = "gallery" if v["gallery"] else "widget"
                    if v["gallery"]:
                        totals["galleries"] += 1
                        if not v["controls"]:
                            errors.append(f"gallery {vi}: no control found")
                    for c in v["controls"]:
                        totals["controls"] += 1
                        loc = page.locator(f'[data-check-control="{c["id"]}"]')
                        n = c["n"]
                        if n < 2:
                            notes.append(f"{name}: {kind_of_view} {vi} control {c['id']} has {n} option(s); "
                                         "nothing to switch")
                            continue
                        steps = range(1, min(n, MAX_STEPS + 1)) if c["kind"] in ("select", "toggle", "slider") else [1]
                        for step in steps:
                            before = page.evaluate(JS_PICTURE, vi)
                            if v["gallery"] and (sum(1 for x in before["imgs"]) != 1
                                                 or not all(x["loaded"] for x in before["imgs"])):
                                errors.append(f"gallery {vi}: {len(before['imgs'])} visible image(s) before step "
                                              f"{step} of control {c['id']} (expected one loaded image)")
                                break
                            if c["kind"] == "select":
                                loc.select_option(index=step)
                            elif c["kind"] == "toggle":
                                loc.locator("button").nth(step).click()
                            elif c["kind"] == "slider":
                                loc.locator(".noUi-handle").first.focus()
                                page.keyboard.press("ArrowRight")
                            elif c["kind"] == "text":
                                loc.fill((loc.input_value() or "") + "1")
                                loc.press("Enter")
                            else:                       # checkbox, button, tab
                                loc.click()
                            try:
                                page.wait_for_function(JS_PICTURE_CHANGED, arg=[vi, before], timeout=SWITCH_TIMEOUT_MS)
                                totals["switches"] += 1
                            except PWTimeout:
                                hint = ("" if v["gallery"] else
                                        " (a live widget needs a kernel: show it with lidlib.widgets.gallery.live, "
                                        "which leaves only a pointer line in the static book)")
                                errors.append(f"{kind_of_view} {vi}: control {c['id']} ({c['kind']} "
                                              f"{c['label']!r}) step {step} changes nothing in the picture{hint}")
                                break
                            after = page.evaluate(JS_PICTURE, vi)
                            for x in after["imgs"]:
                                if x["width"] > wd["column"] + 1:
                                    errors.append(f"{kind_of_view} {vi}: an image {round(x['width'])} px wide, "
                                                  f"the text column {wd['column']} px")
                            if shots:
                                page.locator(f'[data-check-view="{vi}"]').screenshot(
                                    path=str(shots / f"{safe_name(rel)}-view{vi}-{c['id']}-step{step}.png"))
                html = (root / rel).read_text(encoding="utf8", errors="replace")
                errors += check_colab_links(root, rel, html)
            except Exception as exc:  # a crash on one page is a failure of that page, not of the run
                errors.append(f"check crashed: {type(exc).__name__}: {exc}")
            finally:
                page.close()

            # the browser's automatic /favicon.ico probe (the book declares no favicon) is not the page's
            favicon = [e for e in errors if "status of 404" in e and "/favicon.ico" in e]
            errors = list(dict.fromkeys(e for e in errors if e not in favicon))
            totals["pages"] += 1
            status = "ok" if not errors else "FAIL"
            print(f"[{status}] {name}")
            failures += [f"{name}: {e}" for e in errors]
        browser.close()

    missing = [(code, path) for code, path in server.missing if path.split("?")[0] != "/favicon.ico"]
    failures += [f"server: {code} for {path}" for code, path in missing]
    failures += [f"{page}: request to a non-local URL (blocked; the book must be offline): {url}"
                 for page, url in external]

    print(f"\n{totals['pages']} pages, {totals['equations']} equations, {totals['images']} images, "
          f"{totals['widgets']} widget views, {totals['galleries']} galleries, {totals['controls']} controls "
          f"({totals['switches']} switches) "
          f"checked in {time.time() - t0:.1f} s")
    for note in notes:
        print(f"note: {note}")
    if failures:
        print(f"\nFAILED: {len(failures)} problem(s):")
        for f in failures:
            print(f"  - {f}")
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
