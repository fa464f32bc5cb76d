"""Shared argument handling for the per-family conversion scripts (they all call big_vision_hf.conversion)."""

from __future__ import annotations

import argparse
import sys


def run_family(model_name: str, description: str, argv: list[str] | None = None) -> int:
    from big_vision_hf.cli import main

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("checkpoint")
    parser.add_argument("out_dir")
    args, rest = parser.parse_known_args(argv)
    return main(["convert", args.checkpoint, args.out_dir, "--model-name", model_name, *rest])


if __name__ == "__main__":
    sys.exit("run one of the convert_*.py scripts")
