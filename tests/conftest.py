"""Shared test helpers: golden fixtures made by the ORIGINAL big_vision code, and the user path."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


class Golden:
    """A fixture from `../shared/golden/<name>/` copied into tests/fixtures: params, config, inputs, outputs."""

    def __init__(self, name: str):
        self.name = name
        self.dir = os.path.join(FIXTURES, name)
        self.params = os.path.join(self.dir, "params.npz")
        with open(os.path.join(self.dir, "config.json")) as f:
            self.config = json.load(f)
        self.inputs = dict(np.load(os.path.join(self.dir, "inputs.npz")))
        self.outputs = dict(np.load(os.path.join(self.dir, "outputs.npz")))

    @property
    def model_kwargs(self) -> dict:
        return dict(self.config["model_kwargs"])

    def image_nchw(self, key: str = "image") -> torch.Tensor:
        return torch.from_numpy(self.inputs[key]).permute(0, 3, 1, 2).contiguous()


@pytest.fixture
def golden():
    return Golden


def max_abs_err(ours: torch.Tensor, ref: np.ndarray) -> float:
    ours = ours.detach().float().numpy()
    assert ours.shape == ref.shape, f"shape {ours.shape} != reference {ref.shape}"
    err = float(np.abs(ours - ref).max())
    if os.environ.get("BVHF_PARITY_LOG"):  # `BVHF_PARITY_LOG=file pytest ...` collects the figures for the README
        with open(os.environ["BVHF_PARITY_LOG"], "a") as f:
            f.write(f"{os.environ.get('PYTEST_CURRENT_TEST', '?').split(' ')[0]}\t{ref.shape}\t{err:.2e}\n")
    return err


def convert_cli(*argv: str) -> None:
    """Runs `big-vision-hf convert ...` in-process (the console script calls the same `main`)."""
    from big_vision_hf.cli import main

    rc = main(["convert", *argv, "--quiet"])
    assert rc == 0, f"big-vision-hf convert {' '.join(argv)} exited {rc}"


def rewrite_npz(src: str, dst: str, fn) -> str:
    """Writes `dst` with the arrays of `src` passed through `fn(dict) -> dict` (to build other layouts)."""
    arrays = dict(np.load(src))
    np.savez(dst, **fn(arrays))
    return dst
