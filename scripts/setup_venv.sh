#!/usr/bin/env bash
# Creates .venv and installs big_vision_hf with its test extras; re-runs only when setup.cfg changes.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
stamp=".venv/.installed-$(sha1sum setup.cfg | cut -c1-12)"
if [ -f "$stamp" ]; then exit 0; fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# torch first, pinned: a CPU build of 2.13.0 is what the project is tested with (newer pulls CUDA wheels).
.venv/bin/python -m pip install -q "torch==2.13.0" numpy 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import torch" || { echo "setup: torch==2.13.0 failed to install" >&2; exit 1; }
.venv/bin/python -m pip install -q -e ".[test]" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import big_vision_hf, pytest, peft, datasets, accelerate" || { echo "setup: install failed" >&2; exit 1; }
# GriTS (the pg2 extra's grits-metric) compiles its pylcs dependency (C++): apart, so that a machine without a
# compiler still gets the suite (the GriTS tests then skip, saying why).
.venv/bin/python -m pip install -q grits-metric 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import grits" 2>/dev/null || echo "setup: grits-metric not installed (no C++ build?); GriTS tests will skip" >&2
rm -f .venv/.installed-* && touch "$stamp"
