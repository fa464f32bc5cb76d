"""Convert every registered public checkpoint found in a local folder (see `big-vision-hf list`).

    python conversion_scripts/convert_registered.py CHECKPOINT_DIR OUT_DIR [--filter TEXT]

Looks for each registry entry's file name in CHECKPOINT_DIR (download them first, e.g.
`gsutil cp gs://big_vision/vit_s16_i1k_300ep.npz CHECKPOINT_DIR/`) and writes OUT_DIR/<name>/.
"""

import argparse
import os
import re
import sys

from big_vision_hf.cli import main
from big_vision_hf.conversion.zoo import ZOO

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint_dir")
    parser.add_argument("out_dir")
    parser.add_argument("--filter", default="", help="only registry names containing this text")
    args = parser.parse_args()
    failures = 0
    for entry in ZOO.values():
        path = os.path.join(args.checkpoint_dir, entry.filename)
        if args.filter.lower() not in entry.name.lower() or not os.path.exists(path):
            continue
        out = os.path.join(args.out_dir, re.sub(r"[^\w.-]+", "_", entry.name))
        print(f"== {entry.name}: {path} -> {out}")
        failures += main(["convert", path, out, "--name", entry.name]) != 0
    sys.exit(1 if failures else 0)
