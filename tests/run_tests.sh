#!/usr/bin/env bash
# The test command: builds a fresh environment (examples/setup_env.sh) and runs the whole suite, slow and
# multi-process tests included, after ruff's format and lint checks. Extra arguments go to pytest (e.g. -m "not slow" for the quick part).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
export VENV=${VENV:-$repo/.venv-test} FRESH=${FRESH:-1} EXTRAS=${EXTRAS:-test,demo,app,export,ray}
bash "$repo/examples/setup_env.sh"
cd "$repo"
# The formatter and the linter first (rules in pyproject.toml, [tool.ruff]): a change that breaks either fails here.
"$VENV/bin/ruff" format --check .
"$VENV/bin/ruff" check .
exec "$VENV/bin/python" -m pytest -p no:cacheprovider -ra --durations=15 "$@"
