"""Long fuzzing run of the checkpoint reader and mapping: the property of ``tests/test_reliability_fuzz.py``.

Mutates valid big_vision checkpoints (ViT stored and deflated, scan-layout ViT, PaliGemma through the streamed
writer, GIVT's flax msgpack VAE: bytes, zip directory and local headers, ``.npy`` headers, truncation, names,
dtypes, shapes, values) and converts each: a one-line ``CheckpointError`` or a correct model, never another
exception, never a hang, never more memory than the file plus its largest parameter. The suite runs the same
property with a short, derandomized budget; this script runs many cases with fresh randomness and prints how many
were tried, per mutation and outcome (the README quotes the figure).

    python benchmarks/fuzz_checkpoints.py --examples 20000          # about 15 minutes on 2 CPU cores
    python benchmarks/fuzz_checkpoints.py --examples 2000 --seed 7  # reproducible
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from test_reliability_fuzz import BASES, SUITE_BASES, fuzz_property  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=20000, help="cases to try (default 20000)")
    parser.add_argument("--seed", type=int, help="hypothesis seed (default: fresh randomness)")
    parser.add_argument("--bases", nargs="+", choices=sorted(BASES), default=list(SUITE_BASES),
                        help="valid checkpoints to mutate (default: all)")
    args = parser.parse_args()
    counts: dict = {}
    start = time.time()
    failure = None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            fuzz_property(tmp, args.examples, derandomize=False, counts=counts, seed=args.seed, bases=args.bases)
        except BaseException as e:  # report what was tried before the failure, then the failure
            failure = e
    tried = sum(counts.values())
    print(f"{tried} cases in {time.time() - start:.0f} s ({'FAILED' if failure else 'no failure'})")
    for kind in sorted({k for k, _ in counts}):
        outcomes = ", ".join(f"{o}: {n}" for (k, o), n in sorted(counts.items()) if k == kind)
        print(f"  {kind:11s} {outcomes}")
    if failure is not None:
        raise failure
    return 0


if __name__ == "__main__":
    sys.exit(main())
