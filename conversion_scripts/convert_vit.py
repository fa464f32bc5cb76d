"""Convert a big_vision ViT (models/vit.py) checkpoint: AugReg, i1k S/16 baselines, DeiT-3, SigLIP image towers
(file.npz:img).

    python conversion_scripts/convert_vit.py CHECKPOINT.npz OUT_DIR [--model-config JSON] [--image-size H W] ...

Same options as `big-vision-hf convert --help`, with `--model-name vit` preset.
"""

import sys

from _common import run_family

if __name__ == "__main__":
    sys.exit(run_family("vit", __doc__))
