"""Shared test helpers: golden fixtures made by the ORIGINAL big_vision code, and the user path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

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

    def naflex_inputs(self, coords: bool = False) -> dict[str, torch.Tensor]:
        """NaFlex image kwargs from big_vision's (patches, ptype, yidx, xidx): ``spatial_shapes`` (the Siglip2 API),
        or big_vision's per-patch ``(y, x)`` as ``patch_coords`` with ``coords=True``."""
        x = {k: torch.from_numpy(v) for k, v in self.inputs.items()}
        yx = torch.stack([x["yidx"], x["xidx"]], dim=-1)
        out = {"pixel_values": x["patches"], "pixel_attention_mask": x["ptype"]}
        return {**out, "patch_coords": yx} if coords else {**out, "spatial_shapes": yx.amax(dim=1) + 1}

    def two_tower_inputs(self, naflex: bool = False, coords: bool = False) -> dict[str, torch.Tensor]:
        """Two-tower kwargs: the text ids and the image (``pixel_values`` NCHW, or :meth:`naflex_inputs`)."""
        image = self.naflex_inputs(coords) if naflex else {"pixel_values": self.image_nchw()}
        return {"input_ids": torch.from_numpy(self.inputs["text"]).long(), **image}


@pytest.fixture
def golden():
    return Golden


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread (and ``OMP_NUM_THREADS=1`` for subprocesses such as `run_without_package`'s) for a test
    module of tiny models: on a loaded 2-core machine contended threads are many times slower. Restored afterwards.
    Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads, omp = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    yield
    torch.set_num_threads(threads)
    if omp is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = omp


def max_abs_err(ours: torch.Tensor, ref: np.ndarray) -> float:
    ours = ours.detach().float().numpy()
    assert ours.shape == ref.shape, f"shape {ours.shape} != reference {ref.shape}"
    err = float(np.abs(ours - ref).max())
    if os.environ.get("BVHF_PARITY_LOG"):  # `BVHF_PARITY_LOG=file pytest ...` collects the figures for the README
        with open(os.environ["BVHF_PARITY_LOG"], "a") as f:
            f.write(f"{os.environ.get('PYTEST_CURRENT_TEST', '?').split(' ')[0]}\t{ref.shape}\t{err:.2e}\n")
    return err


def assert_max_abs_errors(label: str, errors: dict[str, float], tol: float) -> None:
    """Prints every figure of ``errors`` (name -> max abs error) and asserts the worst one is <= ``tol``."""
    figures = ", ".join(f"{k}={v:.1e}" for k, v in errors.items())
    print(f"{label} max abs error: {figures}")
    worst = max(errors, key=errors.get)
    assert errors[worst] <= tol, f"{label}: {worst} max abs error {errors[worst]:.2e} > {tol} ({figures})"


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


def params_prefixed(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A `rewrite_npz` layout: every name under ``params/`` (how big_vision's trainers save a checkpoint)."""
    return {f"params/{k}": v for k, v in arrays.items()}


def bfloat16_void(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A `rewrite_npz` layout: bfloat16 stored as numpy void ``V2`` (how big_vision writes bf16 ``.npz`` files),
    rounded to nearest even (as jax's ``astype(bfloat16)``, which made the fixtures' bf16 references)."""
    return {k: torch.from_numpy(np.asarray(v, np.float32)).to(torch.bfloat16).view(torch.int16).numpy().view("V2")
            for k, v in arrays.items()}


_CHILD_PRELUDE = """
import json, sys
sys.modules["big_vision_hf"] = None  # any import of our package now fails
import numpy as np, torch
folder, inputs_path, outputs_path = sys.argv[1:4]
inputs = dict(np.load(inputs_path))
"""
_CHILD_EPILOGUE = """
np.savez(outputs_path, **{name: np.asarray(value) for name, value in outputs.items()})
print(json.dumps({name: type(obj).__module__ for name, obj in remote.items()}))
"""


def run_without_package(tmp_path, folder, body: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Runs ``body`` in a fresh Python where ``big_vision_hf`` cannot be imported: a user with only the folder.

    ``body`` sees ``folder`` (str), ``inputs`` (the arrays given here, as numpy), ``np`` and ``torch``; it loads
    what it tests from ``folder`` with ``trust_remote_code=True`` and sets ``outputs`` (name -> array, returned) and
    ``remote`` (name -> each loaded model / processor). Fresh modules cache, Hub offline, cwd outside the repository.
    Asserts the child exits 0 and every object in ``remote`` is the folder's own code (``transformers_modules.*``).
    """
    work = Path(tempfile.mkdtemp(prefix="without_package_", dir=tmp_path))
    np.savez(work / "inputs.npz", **inputs)
    code = _CHILD_PRELUDE + textwrap.dedent(body) + _CHILD_EPILOGUE
    env = {**os.environ, "HF_MODULES_CACHE": str(work / "modules"), "HF_HUB_OFFLINE": "1"}
    argv = [sys.executable, "-c", code, str(folder), str(work / "inputs.npz"), str(work / "outputs.npz")]
    result = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=str(work), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    modules = json.loads(result.stdout.strip().splitlines()[-1])
    assert modules and all(m.startswith("transformers_modules.") for m in modules.values()), modules
    return dict(np.load(work / "outputs.npz"))
