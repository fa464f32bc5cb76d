"""Convert a BiT ResNet-v2 (models/bit_paper.py), incl. the original big_transfer layout checkpoint.

    python conversion_scripts/convert_bit.py CHECKPOINT.npz OUT_DIR [--model-config JSON] [--image-size H W] ...

Same options as `big-vision-hf convert --help`, with `--model-name bit_paper` preset.
"""

import sys

from _common import run_family

if __name__ == "__main__":
    sys.exit(run_family("bit_paper", __doc__))
