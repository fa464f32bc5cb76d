#!/usr/bin/env bash
# The whole test suite: installs what it needs into .venv, then runs pytest.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup_venv.sh
exec .venv/bin/python -m pytest -q -p no:cacheprovider tests "$@"
