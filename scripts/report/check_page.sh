#!/usr/bin/env bash
# Checks a report written by make_report.py in a real browser (headless Chromium):
#   scripts/report/check_page.sh DIR
# 1. index.html references no network resource (no http://, https:// or // in src/href);
# 2. every local src/href target exists beside it and is non-empty;
# 3. Chromium loads the page and every <img> has loaded (complete and naturalWidth > 0).
#
# How 3 works: the report is copied to a temporary folder, and the copy of index.html gets a small
# inline script that, on the window's load event, appends
#   <pre id="xmoe-check">XMOE_CHECK images=N broken=K [src ...]</pre>
# to the page. `chromium --headless --dump-dom` (with a virtual-time budget, so the load event has
# fired) prints the resulting DOM, and the line is read from it. The report itself is not changed.
#
# Needs the Debian package chromium (not installed by scripts/setup.sh; not part of ctest). Set
# CHROMIUM to use another binary (chromium-browser, google-chrome). Exit status: 0 page OK,
# 1 a check failed, 2 usage error or no browser.
set -euo pipefail

usage() { echo "usage: $0 DIR   (DIR = a folder written by make_report.py)" >&2; exit 2; }
[ $# -eq 1 ] || usage
dir=$1
page="$dir/index.html"
[ -f "$page" ] || { echo "check_page: $page: no such file" >&2; exit 2; }

browser=${CHROMIUM:-}
if [ -z "$browser" ]; then
  for candidate in chromium chromium-browser google-chrome; do
    if command -v "$candidate" >/dev/null 2>&1; then browser=$candidate; break; fi
  done
fi
[ -n "$browser" ] || { echo "check_page: no chromium found (apt-get install chromium, or set CHROMIUM)" >&2; exit 2; }

failures=0
fail() { echo "check_page: FAIL: $*" >&2; failures=$((failures + 1)); }

# 1 and 2: the links of the page.
links=$(grep -oE '(src|href)="[^"]*"' "$page" | sed -E 's/^(src|href)="(.*)"$/\2/' | sort -u)
n_img=$(grep -oE '<img ' "$page" | wc -l)
[ "$n_img" -gt 0 ] || fail "index.html has no <img>"
while IFS= read -r link; do
  [ -n "$link" ] || continue
  case "$link" in
    http://* | https://* | //*) fail "network resource $link" ;;
    \#*) ;;  # in-page anchor
    *) [ -s "$dir/$link" ] || fail "missing or empty file $link" ;;
  esac
done <<< "$links"

# 3: load it in the browser.
work=$(mktemp -d "${TMPDIR:-/tmp}/xmoe_check_page_XXXXXX")
trap 'rm -rf "$work"' EXIT
cp -R "$dir"/. "$work/"
probe='<script>window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var bad = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); })
                .map(function (i) { return i.getAttribute("src"); });
  var out = document.createElement("pre"); out.id = "xmoe-check";
  out.textContent = "XMOE_CHECK images=" + imgs.length + " broken=" + bad.length +
                    (bad.length ? " " + bad.join(" ") : "");
  document.body.appendChild(out);
});</script>'
python3 - "$work/index.html" "$probe" <<'EOF'
import sys
path, probe = sys.argv[1], sys.argv[2]
text = open(path, encoding="utf-8").read()
open(path, "w", encoding="utf-8").write(text.replace("</body>", probe + "\n</body>", 1))
EOF
dom=$("$browser" --headless --disable-gpu --no-sandbox --no-first-run --disable-extensions \
        --allow-file-access-from-files --run-all-compositor-stages-before-draw \
        --virtual-time-budget=15000 --dump-dom "file://$work/index.html" 2>"$work/.stderr") || {
  cat "$work/.stderr" >&2
  fail "$browser exited with an error"
}
result=$(printf '%s\n' "$dom" | grep -oE 'XMOE_CHECK images=[0-9]+ broken=[0-9]+[^<]*' || true)
if [ -z "$result" ]; then
  fail "the page did not finish loading in the browser (no XMOE_CHECK line in the DOM)"
else
  echo "check_page: $result"
  case "$result" in
    *" broken=0"*) ;;
    *) fail "images that did not load: ${result#*broken=}" ;;
  esac
  seen=$(printf '%s' "$result" | sed -E 's/^XMOE_CHECK images=([0-9]+).*/\1/')
  [ "$seen" -eq "$n_img" ] || fail "the browser saw $seen images, index.html has $n_img"
fi

if [ "$failures" -gt 0 ]; then
  echo "check_page: $failures problem(s) in $page" >&2
  exit 1
fi
echo "check_page: $page OK ($n_img images loaded, all links local and present)"
