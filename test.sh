#!/usr/bin/env bash
# The whole test suite: installs what it needs into .venv, runs ruff, then pytest.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup_venv.sh
# CLIPPO's text rendering tests use Debian's Unifont (skipped with a reason where it cannot be installed).
if [ ! -f /usr/share/unifont/unifont.hex ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq unifont) >/dev/null 2>&1 || echo "test.sh: unifont not installed; CLIPPO rendering tests will skip"
fi
# The demo app's browser test drives Debian's Chromium (skipped with a reason where it cannot be installed).
if ! command -v chromedriver >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq chromium chromium-driver) >/dev/null 2>&1 || echo "test.sh: chromium not installed; the app's browser test will skip"
fi
# Lint and import order first (config: pyproject.toml [tool.ruff]); a finding fails the run.
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -q -p no:cacheprovider tests "$@"
