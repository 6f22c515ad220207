#!/usr/bin/env bash
# Builds the Python environment that the demo and the tests run in, from nothing.
#   VENV            where to build it (default: .venv in the repository)
#   FRESH=1         delete VENV first (the test command does, so that a fresh machine is what is tested)
#   EXTRAS          the package's extras to install (default: demo, what examples/run_demo.sh needs; the test
#                   command asks for test,demo,app,export,ray)
# Installs torch and torchvision (pinned together: timm needs torchvision, and PyPI's torchvision only works
# beside the matching torch), then this package with the EXTRAS; at the same time, in the background, the Debian
# packages that are absent (without their recommended packages): tuxpaint's stamps and background photos (real
# object cut-outs for the offline demo data; never committed) and libcairo2, which CairoSVG needs to draw the SVG
# stamps; with the app extra, also chromium and chromium-driver (the demo page's browser test drives them).
# A failed apt-get shows its output and fails the set-up.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${VENV:-$repo/.venv}
if [ "${FRESH:-0}" = 1 ]; then rm -rf "$venv"; fi
if [ ! -x "$venv/bin/python" ]; then
  echo "== creating $venv"
  python3 -m venv "$venv"
fi
sudo_cmd=(); [ "$(id -u)" = 0 ] || sudo_cmd=(sudo)
apt_packages=() browser_packages=()   # Debian packages to install, in the background while pip works
if [ ! -d /usr/share/tuxpaint/stamps/animals ] || [ ! -d /usr/share/tuxpaint/templates ] \
  || ! ldconfig -p | grep "libcairo.so.2 " >/dev/null; then
  echo "== installing Debian's tuxpaint stamps and templates (object photos and backgrounds for the demo data)"
  echo "   and libcairo2 (CairoSVG draws the SVG stamps with it), beside pip"
  apt_packages+=(tuxpaint-stamps-default tuxpaint-data libcairo2)
fi
extras=${EXTRAS:-demo}
if [[ ",$extras," == *",app,"* ]] && { [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; }; then
  echo "== installing Debian's chromium and chromium-driver (the demo page's browser test), beside pip"
  browser_packages=(chromium chromium-driver)
fi
apt_pid=""
if [ $(( ${#apt_packages[@]} + ${#browser_packages[@]} )) -gt 0 ]; then
  [ ${#sudo_cmd[@]} = 0 ] || sudo -v   # ask for the password now, not from the background job
  apt_log=$(mktemp)
  # --no-install-recommends: the data without the tuxpaint program and its 34 recommended packages (ghostscript,
  # SDL, a sound font, ...), which the demo does not use.
  apt_install=("${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q)
  { "${sudo_cmd[@]}" apt-get update -q \
    && { [ ${#apt_packages[@]} = 0 ] || "${apt_install[@]}" --no-install-recommends "${apt_packages[@]}"; } \
    && { [ ${#browser_packages[@]} = 0 ] || "${apt_install[@]}" "${browser_packages[@]}"; }
  } >"$apt_log" 2>&1 &
  apt_pid=$!
fi

pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" --upgrade pip
"${pip[@]}" "torch==2.14.1" "torchvision==0.29.1"
"${pip[@]}" -e "$repo[$extras]"

if [ -n "$apt_pid" ]; then
  if ! wait "$apt_pid"; then
    cat "$apt_log" >&2
    echo "== apt-get install ${apt_packages[*]} ${browser_packages[*]} failed (its output above)" >&2
    exit 1
  fi
  rm -f "$apt_log"
fi
echo "== environment ready: $venv"
