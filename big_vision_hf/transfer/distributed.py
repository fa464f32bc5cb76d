"""Sharded transfer (FSDP2, DeepSpeed ZeRO-3) across processes, through accelerate and transformers' ``Trainer``.

``big-vision-hf transfer`` runs unchanged under a launcher; every process runs the same command::

    accelerate launch --config_file "$(python -m big_vision_hf.transfer.distributed)" --num_processes 8 \\
        -m big_vision_hf.cli transfer --task vqav2 --model pg2-10b-448/ --data vqa/ --output out/vqav2
    torchrun --nproc_per_node 8 -m big_vision_hf.cli transfer ... --fsdp     # the same, without a config file

The shipped configs (package data, :data:`FSDP2_CONFIG`, :data:`ZERO3_CONFIG`; ``python -m
big_vision_hf.transfer.distributed [--zero3]`` prints the path) and ``--fsdp`` (:func:`fsdp_training_args`) shard
every SigLIP encoder layer and Gemma decoder layer as its own FSDP2 group (:func:`layer_classes`). The recipe's batch
is the global batch (split over the processes), so the loss curve and the weights are those of one process on the
same batch. Checkpoints are sharded (``checkpoint-N/pytorch_model_fsdp_0/``, ``optimizer_0/``: torch distributed
checkpoint), ``--resume`` continues from them, and the result folder holds the whole model (merged LoRA, or the
adapter), gathered on the main process (:func:`gather_model`), which also runs the evaluations and writes every file.

accelerate (1.16) turns FSDP on only for GPU-like devices; on CPU (gloo) processes :func:`fsdp_training_args` lets
them take the same FSDP2 path (``fully_shard`` runs on CPU), which is how the suite tests it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys

__all__ = [
    "CONFIG_DIR",
    "FSDP2_CONFIG",
    "LAYER_CLASSES",
    "ZERO3_CONFIG",
    "check_launcher",
    "finish",
    "fsdp_training_args",
    "gather_model",
    "is_main_process",
    "layer_classes",
    "main_process_first",
    "sharded_training",
    "world_size",
]

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
FSDP2_CONFIG = os.path.join(CONFIG_DIR, "fsdp2.yaml")
ZERO3_CONFIG = os.path.join(CONFIG_DIR, "deepspeed_zero3.yaml")
# The blocks each made one FSDP2 shard group (PaliGemma's own `_no_split_modules` names only the projector).
LAYER_CLASSES = ("SiglipEncoderLayer", "GemmaDecoderLayer", "Gemma2DecoderLayer")


def world_size() -> int:
    """Processes started by the launcher (``WORLD_SIZE``; 1 without one)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Whether this is the process that writes files (``RANK`` 0, or no launcher)."""
    return int(os.environ.get("RANK", "0")) == 0


@contextlib.contextmanager
def main_process_first():
    """The main process runs the block first (it creates folders, trains the tiny tokenizer), then the others.
    Without a launcher: just the block.

    Example:
        >>> with main_process_first():
        ...     pass
    """
    if world_size() == 1:
        yield
        return
    import datetime

    import torch
    from accelerate import PartialState

    # starts the process group (gloo on CPU, nccl on GPU) with the Trainer's default `ddp_timeout`, 30 minutes
    state = PartialState(cpu=not torch.cuda.is_available(), timeout=datetime.timedelta(seconds=1800))
    with state.main_process_first():
        yield


def layer_classes(model) -> list[str]:
    """The :data:`LAYER_CLASSES` that ``model`` holds, in that order."""
    present = {type(m).__name__ for m in model.modules()}
    return [name for name in LAYER_CLASSES if name in present]


def check_launcher(fsdp: bool) -> None:
    """``--fsdp`` needs a launcher's processes: a ``ValueError`` (one line for the CLI) without one."""
    if fsdp and world_size() < 2:
        raise ValueError("--fsdp shards over several processes: start the transfer with a launcher, e.g. `torchrun "
                         "--nproc_per_node 2 -m big_vision_hf.cli transfer ... --fsdp` (or `accelerate launch` with "
                         "the config that `python -m big_vision_hf.transfer.distributed` names, without --fsdp)")


def finish() -> None:
    """Leaves the launcher's process group, if one was started (a process exiting without it may abort in gloo's
    teardown, which the launcher reports as a failed run)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def fsdp_training_args(model, fsdp: bool) -> dict:
    """``TrainingArguments`` fields (and settings) for a sharded run of ``model``.

    ``fsdp`` (``--fsdp``): FSDP2 with the shipped config's settings, as ``TrainingArguments(fsdp=True,
    fsdp_config=...)`` (for ``torchrun`` or a plain ``accelerate launch``). Under ``accelerate launch
    --config_file`` (FSDP or DeepSpeed) the launcher's settings stand; for FSDP only the layer classes are filled in
    where the config leaves them out. Either way, CPU processes are let through accelerate's GPU-only FSDP switch.
    ``{}`` for an unsharded run.

    Example:
        >>> fsdp_training_args(model, fsdp=False)  # doctest: +SKIP
        {}
    """
    from_launcher = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if not (fsdp or from_launcher):
        return {}
    check_launcher(fsdp)
    import torch

    cpu = {} if torch.cuda.is_available() else {"use_cpu": True}  # gloo processes (accelerate needs to be told)
    _allow_fsdp_on_cpu()
    if not fsdp:
        os.environ.setdefault("FSDP_TRANSFORMER_CLS_TO_WRAP", ",".join(layer_classes(model)))
        return cpu
    config = {"version": 2, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
              "transformer_layer_cls_to_wrap": layer_classes(model), "state_dict_type": "SHARDED_STATE_DICT",
              "reshard_after_forward": True, "cpu_ram_efficient_loading": False}
    return {"fsdp": True, "fsdp_config": config, **cpu}


def sharded_training(training_args: dict | None = None) -> bool:
    """Whether the run shards the model: ``--fsdp`` (``training_args["fsdp"]``) or a launcher's FSDP / DeepSpeed
    config."""
    return bool((training_args or {}).get("fsdp")) or any(
        os.environ.get(f"ACCELERATE_USE_{kind}", "false").lower() == "true" for kind in ("FSDP", "DEEPSPEED"))


def _allow_fsdp_on_cpu() -> None:
    """accelerate (``AcceleratorState``, 1.16) sets ``DistributedType.FSDP`` only for GPU-like processes and leaves CPU
    ones on plain data parallelism, ignoring the FSDP plugin; torch's ``fully_shard`` itself runs on CPU with gloo.
    On a machine without CUDA this lets a given plugin through, as accelerate does for GPUs (idempotent)."""
    import torch

    if torch.cuda.is_available():
        return
    from accelerate import state
    from accelerate.utils import DistributedType

    init = state.AcceleratorState.__init__
    if getattr(init, "bvhf_cpu_fsdp", False):
        return

    @functools.wraps(init)
    def patched(self, *args, fsdp_plugin=None, **kwargs):
        init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin
            state.PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    patched.bvhf_cpu_fsdp = True
    state.AcceleratorState.__init__ = patched


def gather_model(trainer, fresh_model):
    """After a sharded run (FSDP, DeepSpeed): the trained model whole, as an ordinary model on the main process
    (``None`` on the others); after an unsharded one: ``trainer.model`` as it is.

    Every process takes part in gathering the full state dict (accelerate's ``get_state_dict``: on CPU, on the main
    process only); the main process loads it into ``fresh_model()`` (the same architecture and LoRA wrapping,
    unsharded), so the usual merge / adapter save and evaluation run on it.

    Example:
        >>> result = train(model, processor, rows, "out", recipe)  # doctest: +SKIP
        >>> model = gather_model(result.trainer, lambda: load_model_and_processor(folder)[0])  # doctest: +SKIP
    """
    if not (trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled):
        return trainer.model
    state = trainer.accelerator.get_state_dict(trainer.model_wrapped)
    if not trainer.accelerator.is_main_process:
        return None
    model = fresh_model()
    model.load_state_dict(state, strict=True)
    return model.eval()


if __name__ == "__main__":  # `python -m big_vision_hf.transfer.distributed [--zero3]`: the config's path
    print(ZERO3_CONFIG if "--zero3" in sys.argv[1:] else FSDP2_CONFIG)
