#!/usr/bin/env bash
# Lint the GitHub Actions workflows: actionlint (built once from the Go module proxy and cached by
# tests/cluster/build-addons.sh), with shellcheck on their `run:` scripts. `make lint` and the
# pre-commit hook both run this.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v shellcheck >/dev/null || { echo "shellcheck is missing: run make system-deps" >&2; exit 1; }
dir="$(tests/cluster/build-addons.sh actionlint)"
"$dir/actionlint" -no-color -shellcheck shellcheck "$@"
echo "actionlint: .github/workflows clean"
