#!/usr/bin/env bash
# Builds the Python environment that the demo and the tests run in, from nothing.
#   VENV            where to build it (default: .venv in the repository)
#   FRESH=1         delete VENV first (the test command does, so that a fresh machine is what is tested)
#   EXTRAS          the package's extras to install (default: demo, what examples/run_demo.sh needs; the test
#                   command asks for test,demo,app,export)
# Installs, in order: torch and torchvision (pinned together: timm needs torchvision, and PyPI's torchvision
# only works beside the matching torch), then this package with the EXTRAS, then Debian's tuxpaint stamps and
# background photos (real object cut-outs for the offline demo data; never committed) and libcairo2, which
# CairoSVG needs to draw the SVG stamps; with the app extra, also Debian's chromium and chromium-driver (the
# demo page's browser test drives them).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${VENV:-$repo/.venv}
if [ "${FRESH:-0}" = 1 ]; then rm -rf "$venv"; fi
if [ ! -x "$venv/bin/python" ]; then
  echo "== creating $venv"
  python3 -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" --upgrade pip
"${pip[@]}" "torch==2.14.1" "torchvision==0.29.1"
extras=${EXTRAS:-demo}
"${pip[@]}" -e "$repo[$extras]"

if [ ! -d /usr/share/tuxpaint/stamps/animals ] || [ ! -d /usr/share/tuxpaint/templates ] \
  || ! ldconfig -p | grep "libcairo.so.2 " >/dev/null; then
  echo "== installing Debian's tuxpaint stamps and templates (object photos and backgrounds for the demo data)"
  echo "   and libcairo2 (CairoSVG draws the SVG stamps with it)"
  sudo_cmd=(); [ "$(id -u)" = 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -q
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -q tuxpaint-stamps-default tuxpaint-data libcairo2
fi
if [[ ",$extras," == *",app,"* ]] && { [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; }; then
  echo "== installing Debian's chromium and chromium-driver (the demo page's browser test)"
  sudo_cmd=(); [ "$(id -u)" = 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -q
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -q chromium chromium-driver
fi
echo "== environment ready: $venv"
