"""Atomic output folders: ``big-vision-hf convert`` and ``transfer`` killed with SIGKILL at several points leave no
folder or a complete one (never one that ``from_pretrained`` loads with missing or partial shards); a transfer
checkpoint killed while being written is skipped by ``--resume``, which takes the last complete one and says so;
an existing folder is replaced only with ``--overwrite`` (``evaluate`` too).

Each kill is a real ``SIGKILL`` of a child process running the CLI's ``main``: the child is forked from a
``forkserver`` that imported the package once (so a kill costs ~0.1 s, not an interpreter start), and dies at an
exact point of the write (after the first shard, halfway through a shard, inside PaliGemma's streamed writer, just
before the final rename), or at a timed moment chosen by the parent.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sys
import time

import pytest
import torch

from big_vision_hf.cli import main
from conftest import Golden

_CTX = multiprocessing.get_context("forkserver")
_CTX.set_forkserver_preload(["big_vision_hf.cli", "big_vision_hf.conversion.api", "transformers.modeling_utils",
                             "big_vision_hf.transfer.run", "big_vision_hf.transfer.training", "transformers.trainer"])


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _child(argv: list[str], point: str, n: int) -> None:
    """Runs ``big-vision-hf`` with ``argv`` and SIGKILLs itself at ``point`` (the ``n``-th occurrence)."""
    import transformers.modeling_utils as modeling_utils

    from big_vision_hf import atomic
    from big_vision_hf.conversion import export

    count = [0]
    if point in ("shard", "half_shard"):
        real_save = modeling_utils.safe_save_file

        def save(tensors, filename, *args, **kwargs):
            real_save(tensors, filename, *args, **kwargs)
            count[0] += 1
            if count[0] == n:
                if point == "half_shard":  # the kill lands while the file is being written
                    with open(filename, "r+b") as f:
                        f.truncate(os.path.getsize(filename) // 2)
                _die()

        modeling_utils.safe_save_file = save
    elif point == "stream":
        real_write = export._write_tensor

        def write(*args, **kwargs):
            count[0] += 1
            if count[0] == n:
                _die()
            real_write(*args, **kwargs)

        export._write_tensor = write
    elif point == "checkpoint_rename":  # the n-th checkpoint is written (staged) but not yet renamed
        real_replace = os.replace

        def replace(src, dst):
            if ".tmp-checkpoint-" in os.fspath(src):
                count[0] += 1
                if count[0] == n:
                    _die()
            real_replace(src, dst)

        os.replace = replace
    elif point == "publish":  # everything written, the final rename not done
        def publish(*args, **kwargs):
            _die()

        atomic.publish = publish
    elif point == "rename":
        real_replace, real_exchange = os.replace, atomic._exchange

        def before_publish(*args, **kwargs):
            _die()

        atomic.os.replace = before_publish
        atomic._exchange = before_publish
        del real_replace, real_exchange
    sys.exit(main(argv))


def _run_killed(argv: list[str], point: str, n: int = 1, after: float | None = None) -> int:
    """Runs the CLI in a forked child killed at ``point`` (or by the parent ``after`` seconds); its exit code."""
    process = _CTX.Process(target=_child, args=(argv, point, n))
    process.start()
    if after is not None:
        time.sleep(after)
        if process.is_alive():
            os.kill(process.pid, signal.SIGKILL)
    process.join(120)
    assert not process.is_alive(), "the child did not finish"
    return process.exitcode


def _reference_state(folder: str) -> dict[str, torch.Tensor]:
    from transformers import AutoModel

    return AutoModel.from_pretrained(folder).state_dict()


def _complete_or_absent(out: str, reference: dict[str, torch.Tensor], what: str) -> bool:
    """The output is absent, or a folder that loads the reference weights exactly. Returns whether it exists."""
    if not os.path.exists(out):
        return False
    state = _reference_state(out)
    assert set(state) == set(reference), f"{what}: a partial folder loads"
    assert all(torch.equal(v, reference[k]) for k, v in state.items()), f"{what}: the folder holds other weights"
    return True


@pytest.fixture(scope="module")
def vit_reference(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("ref") / "vit")
    assert main(["convert", Golden("vit_tok").params, folder, "--quiet", "--max-shard-size", "40KB"]) == 0
    return _reference_state(folder)


@pytest.mark.parametrize("point,n", [("shard", 1), ("half_shard", 2), ("rename", 1), ("timed", 0)])
def test_convert_killed_leaves_no_partial_folder(tmp_path, vit_reference, point, n):
    out = str(tmp_path / "vit")
    argv = ["convert", Golden("vit_tok").params, out, "--quiet", "--max-shard-size", "40KB"]
    code = _run_killed(argv, point, n, after=0.3 if point == "timed" else None)
    if point != "timed":
        assert code == -signal.SIGKILL, f"the child was not killed at {point} (exit {code})"
        assert not os.path.exists(out), f"killed at {point}: the output folder exists"
    _complete_or_absent(out, vit_reference, point)
    # the next run is not blocked by the killed one, and removes its temporary folder
    assert main(argv + (["--overwrite"] if os.path.exists(out) else [])) == 0
    _complete_or_absent(out, vit_reference, "rerun")
    assert os.listdir(tmp_path) == ["vit"], os.listdir(tmp_path)


def test_paligemma_streamed_write_killed(tmp_path):
    g = Golden("paligemma")
    kwargs = g.model_kwargs
    kwargs["llm"] = {**kwargs["llm"], "variant": g.config["gemma_variant_config"]}
    import json

    out = str(tmp_path / "pg")
    argv = ["convert", g.params, out, "--quiet", "--model-name", "proj.paligemma.paligemma", "--model-config",
            json.dumps(kwargs), "--max-shard-size", "100KB"]
    assert _run_killed(argv, "stream", 20) == -signal.SIGKILL
    assert not os.path.exists(out)
    assert len(os.listdir(tmp_path)) == 1  # the killed run's temporary folder, hidden, beside the target
    assert main(argv) == 0 and os.path.isfile(os.path.join(out, "model.safetensors.index.json"))
    assert os.listdir(tmp_path) == ["pg"]


def test_overwrite_needs_the_flag_and_a_killed_overwrite_keeps_the_old_folder(tmp_path, vit_reference, capsys):
    out = str(tmp_path / "vit")
    argv = ["convert", Golden("vit_tok").params, out, "--quiet", "--max-shard-size", "40KB"]
    assert main(argv) == 0
    marker = os.path.join(out, "mine.txt")
    with open(marker, "w") as f:
        f.write("the user's file")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("already exists and is not empty (--overwrite replaces it)") and "\n" not in err, err
    assert os.path.isfile(marker)
    # killed while replacing: the old folder is still there, whole
    assert _run_killed(argv + ["--overwrite"], "rename") == -signal.SIGKILL
    assert os.path.isfile(marker)
    _complete_or_absent(out, vit_reference, "killed overwrite")
    assert main(argv + ["--overwrite"]) == 0
    assert not os.path.exists(marker) and os.listdir(tmp_path) == ["vit"]
    _complete_or_absent(out, vit_reference, "overwritten")
    # an existing empty folder (mkdir out && convert ... out) is filled without --overwrite
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["convert", Golden("vit_tok").params, str(empty), "--quiet"]) == 0
    assert os.path.isfile(empty / "config.json")


# ---------------------------------------------------------------------------------------------------------
# transfer / evaluate
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def caption_data(tmp_path_factory):
    """Twelve 64 px images of a coloured square, captioned with its colour (fast to train on)."""
    import json

    import numpy as np
    from PIL import Image

    folder = tmp_path_factory.mktemp("captions")
    rng = np.random.default_rng(0)
    colours = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220)}
    with open(folder / "train.jsonl", "w") as f:
        for i in range(12):
            name = list(colours)[i % 3]
            image = np.full((64, 64, 3), 255, np.uint8)
            y, x = rng.integers(0, 32, 2)
            image[y:y + 24, x:x + 24] = colours[name]
            Image.fromarray(image).save(folder / f"{i}.png")
            f.write(json.dumps({"image": f"{i}.png", "prefix": "caption en", "suffix": f"a {name} square"}) + "\n")
    return str(folder / "train.jsonl")


def _transfer_argv(data, out, *extra):
    return ["transfer", "--data", data, "--output", out, "--max-steps", "4", "--batch-size", "4", "--eval-limit",
            "2", "--eval-batch-size", "2", "--no-eval-before", "--quiet", *extra]


def _transfer_result(out: str):
    from safetensors.torch import load_file

    return load_file(os.path.join(out, "model.safetensors")), json.load(open(os.path.join(out, "metrics.json")))


@pytest.fixture(scope="module")
def straight_run(caption_data, tmp_path_factory):
    """An uninterrupted run: ``(folder, weights, metrics)``."""
    out = str(tmp_path_factory.mktemp("straight") / "out")
    assert main(_transfer_argv(caption_data, out)) == 0
    return (out, *_transfer_result(out))


def test_transfer_killed_while_writing_a_checkpoint_resumes_from_the_last_complete_one(
        caption_data, straight_run, tmp_path, capsys):
    out = str(tmp_path / "out")
    argv = _transfer_argv(caption_data, out)
    assert _run_killed(argv, "checkpoint_rename", 3) == -signal.SIGKILL  # checkpoint-3 staged, not renamed
    partial = out + ".partial"
    assert not os.path.exists(out) and os.path.isdir(partial)
    assert not os.path.exists(os.path.join(partial, "config.json"))  # the partial folder is not a model
    checkpoints = os.listdir(os.path.join(partial, "checkpoints"))
    assert ".tmp-checkpoint-3" in checkpoints and "checkpoint-2" in checkpoints, checkpoints
    # without --resume the interrupted run is not silently replaced
    assert main(argv) == 2
    assert "holds an interrupted run" in capsys.readouterr().err
    assert main(argv + ["--resume"]) == 0
    printed = capsys.readouterr().out
    assert "skipping .tmp-checkpoint-3: a checkpoint killed while being written" in printed, printed
    assert "resuming from checkpoint-2 (step 2)" in printed, printed
    weights, metrics = _transfer_result(out)
    assert metrics["steps"] == 4 and not os.path.exists(partial)
    _, reference, reference_metrics = straight_run
    assert all(bool((weights[k] == v).all()) for k, v in reference.items()), "resumed weights differ"
    assert metrics["final_loss"] == pytest.approx(reference_metrics["final_loss"], rel=1e-5)


@pytest.mark.parametrize("point, n", [("shard", 2), ("publish", 1)])
def test_transfer_killed_leaves_no_partial_output(caption_data, straight_run, tmp_path, point, n):
    """Killed halfway through writing a checkpoint's weights, or after everything but the final rename: no output
    folder; ``--resume`` completes the run (from the last step: nothing is trained twice)."""
    from transformers import PaliGemmaForConditionalGeneration

    out = str(tmp_path / "out")
    argv = _transfer_argv(caption_data, out)
    assert _run_killed(argv, point, n) == -signal.SIGKILL
    assert not os.path.exists(out)
    assert main(argv + ["--resume"]) == 0
    PaliGemmaForConditionalGeneration.from_pretrained(out)
    weights, metrics = _transfer_result(out)
    assert metrics["steps"] == 4 and sorted(os.listdir(tmp_path)) == ["out"]
    assert all(bool((weights[k] == v).all()) for k, v in straight_run[1].items()), "resumed weights differ"


def test_transfer_and_evaluate_need_overwrite(caption_data, straight_run, tmp_path, capsys):
    out = str(tmp_path / "out")
    os.makedirs(out)
    open(os.path.join(out, "notes.txt"), "w").write("mine")
    assert main(_transfer_argv(caption_data, out)) == 2
    assert "already exists and is not empty (--overwrite replaces it)" in capsys.readouterr().err
    assert os.listdir(out) == ["notes.txt"] and not os.path.exists(out + ".partial")
    model = straight_run[0]
    evaluation = str(tmp_path / "eval")
    argv = ["evaluate", "--model", model, "--data", caption_data, "--output", evaluation, "--limit", "2", "--quiet"]
    assert main(argv) == 0 and sorted(os.listdir(evaluation)) == ["metrics.json", "predictions.jsonl"]
    assert main(argv) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(argv + ["--overwrite"]) == 0
    assert sorted(os.listdir(tmp_path)) == ["eval", "out"]
