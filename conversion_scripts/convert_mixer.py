"""Convert a MLP-Mixer (models/mlp_mixer.py), incl. the legacy vision_transformer layout checkpoint.

    python conversion_scripts/convert_mixer.py CHECKPOINT.npz OUT_DIR [--model-config JSON] [--image-size H W] ...

Same options as `big-vision-hf convert --help`, with `--model-name mlp_mixer` preset.
"""

import sys

from _common import run_family

if __name__ == "__main__":
    sys.exit(run_family("mlp_mixer", __doc__))
