#!/usr/bin/env bash
# Create .venv at the repository root and install the project into it (editable).
# Usage: scripts/install.sh [extra]   e.g. scripts/install.sh test
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRA="${1:-}"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
SPEC="."
if [ -n "$EXTRA" ]; then SPEC=".[$EXTRA]"; fi
.venv/bin/python -m pip install --quiet -e "$SPEC"
# ImageBind's model code only; see pyproject.toml for why --no-deps.
.venv/bin/python -m pip install --quiet --no-deps "imagebind-unofficial==0.1.1"
