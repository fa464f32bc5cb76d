#!/usr/bin/env bash
# The main job on its built-in default (`bash run.sh`), or any `big-vision-hf` command (`bash run.sh convert ...`).
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup_venv.sh
if [ "$#" -eq 0 ]; then set -- demo; fi
exec .venv/bin/big-vision-hf "$@"
