"""`big-vision-hf transfer` sharded with FSDP2 over 2 CPU processes (gloo) against one process on the same global
batch: the loss curve and the final weights (full fine-tuning, and LoRA merged into the weights), and a run stopped
after a sharded checkpoint -- or SIGKILLed mid-run -- and resumed (`--resume`) against the uninterrupted one.

The 2-process runs go through both ways into `big_vision_hf/transfer/distributed.py`: `torchrun ... --fsdp` (full
fine-tuning, then the resumed run) and `accelerate launch` with the shipped `configs/fsdp2.yaml` (LoRA). All fp32, the
tiny synthetic PaliGemma (`synthetic.make_model`), global batch 4 (2 per process), 4 steps at lr 1e-3 (Adam): the
per-step losses agree within 1e-5 and every final weight within 5e-5 (= 0.05 x lr; measured: about 5e-7 and 3e-6).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest
import torch
from safetensors.torch import load_file

from big_vision_hf.cli import main
from big_vision_hf.transfer.distributed import FSDP2_CONFIG

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")]

STEPS, LR = 4, 1e-3
RUN = ["transfer", "--task", "synthetic_caption", "--max-steps", str(STEPS), "--batch-size", "4", "--lr", str(LR),
       "--eval-limit", "2", "--eval-batch-size", "2", "--no-eval-before", "--quiet"]
LOSS_TOL, WEIGHT_TOL = 1e-5, 0.05 * LR


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(launcher: list[str], args: list[str], cwd, timeout: float = 240.0) -> str:
    """Runs ``launcher + [-m big_vision_hf.cli] + args`` as 2 CPU processes (killed on timeout); its output."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", *launcher, "-m", "big_vision_hf.cli", *args]
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_tree(proc)
        out, _ = proc.communicate()
        pytest.fail(f"{' '.join(cmd)} ran over {timeout:.0f} s:\n{out[-3000:]}")
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}:\n{out[-5000:]}"
    return out


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a launcher and every process under it (torchrun starts its workers in sessions of their own)."""
    tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for p in tree:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(tree, timeout=30)
    proc.wait()


def _torchrun(args: list[str], cwd) -> str:
    return _launch(["torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port",
             str(_free_port())], args, cwd)


def _accelerate(args: list[str], cwd) -> str:
    return _launch(["accelerate.commands.launch", "--config_file", FSDP2_CONFIG, "--num_processes", "2",
             "--main_process_port", str(_free_port())], args, cwd)


def _losses(folder) -> list[tuple[int, float]]:
    with open(os.path.join(folder, "checkpoints", f"checkpoint-{STEPS}", "trainer_state.json")) as f:
        return [(h["step"], h["loss"]) for h in json.load(f)["log_history"] if "loss" in h]


def _compare(sharded, single, label: str) -> None:
    ours, ref = _losses(sharded), _losses(single)
    assert [s for s, _ in ours] == [s for s, _ in ref] == list(range(1, STEPS + 1)), (ours, ref)
    loss_diff = max(abs(a - b) for (_, a), (_, b) in zip(ours, ref))
    a, b = load_file(os.path.join(sharded, "model.safetensors")), load_file(os.path.join(single, "model.safetensors"))
    assert set(a) == set(b), f"{label}: different tensors {sorted(set(a) ^ set(b))[:5]}"
    weight_diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    print(f"{label}: loss max diff {loss_diff:.1e} over {STEPS} steps, weight max abs diff {weight_diff:.1e}")
    assert loss_diff <= LOSS_TOL, f"{label}: losses {ours} vs one process {ref}"
    assert weight_diff <= WEIGHT_TOL, f"{label}: final weights differ by up to {weight_diff:.2e}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One process (in this one), and 2 FSDP processes through torchrun --fsdp: full fine-tuning."""
    root = tmp_path_factory.mktemp("fsdp")
    assert main([*RUN, "--output", str(root / "single")]) == 0
    _torchrun([*RUN, "--fsdp", "--output", str(root / "sharded")], root)
    return root


def test_fsdp_full_finetuning_matches_one_process(runs):
    sharded = runs / "sharded"
    checkpoint = sharded / "checkpoints" / f"checkpoint-{STEPS}"
    assert (checkpoint / "pytorch_model_fsdp_0" / ".metadata").is_file(), os.listdir(checkpoint)  # sharded
    assert not (checkpoint / "model.safetensors").exists()
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= set(os.listdir(checkpoint))  # 2 processes
    _compare(sharded, runs / "single", "FSDP2 full fine-tuning")
    metrics = json.load(open(sharded / "metrics.json"))
    assert metrics["steps"] == STEPS and "synthetic_caption" in metrics["after"]  # evaluated on the main process
    from transformers import PaliGemmaForConditionalGeneration

    PaliGemmaForConditionalGeneration.from_pretrained(sharded)  # an ordinary folder


def test_fsdp_resume_from_a_sharded_checkpoint(runs):
    """A run stopped after its step-3 checkpoint (OUT.partial holds it and nothing after), resumed: the same step-4
    loss and weights as the uninterrupted run."""
    out = runs / "resumed"
    work = runs / "resumed.partial"
    os.makedirs(work / "checkpoints")
    shutil.copytree(runs / "sharded" / "checkpoints" / f"checkpoint-{STEPS - 1}",
                    work / "checkpoints" / f"checkpoint-{STEPS - 1}")
    log = _torchrun([*RUN, "--fsdp", "--resume", "--output", str(out)], runs)
    assert f"resuming from checkpoint-{STEPS - 1} (step {STEPS - 1})" in log, log[-3000:]
    assert not work.exists() and (out / "model.safetensors").is_file()
    _compare(out, runs / "sharded", "FSDP2 resumed at step 3")


def test_fsdp_killed_mid_run_resumes(runs):
    """Both processes SIGKILLed once the step-1 sharded checkpoint is whole (steps 2-4, their checkpoints, the
    gather and the folder still to come), then `--resume`: the newest whole checkpoint is taken and the result
    equals the uninterrupted run's."""
    out, work = runs / "killed", runs / "killed.partial"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "big_vision_hf.cli", *RUN, "--fsdp", "--output", str(out)]
    proc = subprocess.Popen(cmd, cwd=runs, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    first = work / "checkpoints" / "checkpoint-1"
    deadline = time.monotonic() + 240
    try:
        while not ((first / "trainer_state.json").is_file() and (first / "optimizer_0" / ".metadata").is_file()):
            assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before its step-1 checkpoint"
            assert time.monotonic() < deadline, "no step-1 checkpoint within 240 s"
            time.sleep(0.02)
    finally:
        _kill_tree(proc)
    assert work.is_dir() and not out.exists(), "the run finished before it was killed"
    log = _torchrun([*RUN, "--fsdp", "--resume", "--output", str(out)], runs)
    assert "resuming from checkpoint-" in log, log[-3000:]
    assert not work.exists() and (out / "model.safetensors").is_file()
    _compare(out, runs / "sharded", "FSDP2 killed and resumed")


def test_fsdp_lora_through_the_shipped_accelerate_config(tmp_path):
    lora = [*RUN, "--lora", "llm"]
    assert main([*lora, "--output", str(tmp_path / "single")]) == 0
    _accelerate([*lora, "--output", str(tmp_path / "sharded")], tmp_path)
    _compare(tmp_path / "sharded", tmp_path / "single", "FSDP2 LoRA (merged)")
    checkpoint = tmp_path / "sharded" / "checkpoints" / f"checkpoint-{STEPS}"
    assert (checkpoint / "optimizer_0" / ".metadata").is_file(), os.listdir(checkpoint)


def test_fsdp_without_a_launcher_is_a_one_line_error(tmp_path, capsys):
    assert main([*RUN, "--fsdp", "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "--fsdp shards over several processes" in err and "Traceback" not in err
    assert not (tmp_path / "out.partial").exists()
