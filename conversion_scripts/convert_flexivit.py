"""Convert a FlexiViT (models/proj/flexi/vit.py) checkpoint.

    python conversion_scripts/convert_flexivit.py CHECKPOINT.npz OUT_DIR [--model-config JSON] [--image-size H W] ...

Same options as `big-vision-hf convert --help`, with `--model-name proj.flexi.vit` preset.
"""

import sys

from _common import run_family

if __name__ == "__main__":
    sys.exit(run_family("proj.flexi.vit", __doc__))
