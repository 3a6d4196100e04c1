#!/usr/bin/env bash
# Re-create book/_vendor/: the JavaScript the built book would otherwise load from a CDN.
#
#   scripts/vendor_js.sh            # fetch the pinned versions from the npm registry, verify, copy
#
# The result is committed, so building the book never needs npm or the internet; run this only to
# upgrade (change a version below, run, and paste the new integrity it prints).  Only the files the
# pages load are kept (about 4 MB):
#   mathjax/tex-svg-full.js        MathJax 3 with every TeX extension built in (no autoload requests)
#                                  and SVG output (no font files to fetch).
#   jupyter-widgets/embed.js       @jupyter-widgets/html-manager's standalone (non-AMD, no require.js)
#                                  widget renderer for ipywidgets 8 state saved in the page, plus the
#                                  three Font Awesome woff2 files its CSS refers to (webpack resolves
#                                  them next to embed.js).
# The directory is deliberately NOT a `_static/` folder: Jupyter Book 1 adds every .js/.css file
# under the book's `_static/` to every page.  `_config.yml` copies it with `html_static_path`, and
# points `mathjax_path` and myst-nb's `nb_ipywidgets_js` at the copies.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/book/_vendor"

# name@version  sha512 integrity (as `npm pack --json` reports it)
PKGS=(
  "mathjax@3.2.2 sha512-Bt+SSVU8eBG27zChVewOicYs7Xsdt40qm4+UpHyX7k0/O9NliPc+x77k1/FEsPsjKPZGJvtRZM1vO+geW0OhGw=="
  "@jupyter-widgets/html-manager@1.0.15 sha512-5thBIV6ymNgmPVOHvzx+gGy8ZSKmSazhtGw4/c4xJDVzRhG9PTeQsRjF3FUTopvFi//SABeNz1yp47bCrJ3CQA=="
)

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

for entry in "${PKGS[@]}"; do
  spec="${entry%% *}"
  want="${entry#* }"
  json="$(cd "$TMP" && npm pack --json --silent "$spec")"
  read -r file got < <(printf '%s' "$json" | python3 -c 'import json,sys; d=json.load(sys.stdin)[0]; print(d["filename"], d["integrity"])')
  if [[ "$got" != "$want" ]]; then
    echo "integrity mismatch for $spec:" >&2
    echo "  expected $want" >&2
    echo "  got      $got" >&2
    exit 1
  fi
  mkdir -p "$TMP/${spec%@*}"
  tar -xzf "$TMP/$file" -C "$TMP/${spec%@*}"
  echo "fetched $spec ($got)"
done

rm -rf "$DEST/mathjax" "$DEST/jupyter-widgets"
mkdir -p "$DEST/mathjax" "$DEST/jupyter-widgets"

MJ="$TMP/mathjax/package"
cp "$MJ/es5/tex-svg-full.js" "$MJ/LICENSE" "$DEST/mathjax/"

HM="$TMP/@jupyter-widgets/html-manager/package/dist"
cp "$HM/embed.js" "$HM/embed.js.LICENSE.txt" "$DEST/jupyter-widgets/"
# The woff2 fonts embed.js's CSS names (the other formats are never fetched by current browsers).
for font in $(grep -o '[0-9a-f]\{20\}\.woff2' "$HM/embed.js" | sort -u); do
  cp "$HM/$font" "$DEST/jupyter-widgets/"
done

du -sh "$DEST"
echo "vendored into $DEST; commit it."
