#!/usr/bin/env bash
# The main job on its built-in default (`bash run.sh` = `big-vision-hf transfer`: a PaliGemma transfer on synthetic
# data), or any `big-vision-hf` command (`bash run.sh convert ...`, `bash run.sh demo`).
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup_venv.sh
# The default replaces its own earlier result (outputs/transfer), so that `bash run.sh` can be run again.
if [ "$#" -eq 0 ]; then set -- transfer --overwrite; fi
exec .venv/bin/big-vision-hf "$@"
