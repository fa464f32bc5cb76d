"""Peak tensor memory of a transfer training step, measured on any device (CPU included): what the memory planner
(:mod:`~big_vision_hf.transfer.planner`) is checked against.

``torch.cuda.max_memory_allocated`` exists only on CUDA and the process RSS counts the allocator's caching, the
Python heap and the libraries. :class:`PeakMemoryTracker` counts tensor storages instead: a
``TorchDispatchMode`` sees every ATen op (forward and backward: on CPU the autograd engine runs in the calling
thread), registers each output storage that is not one of the op's inputs' (views and in-place results are
not new memory) and un-registers it when the storage is freed (a ``weakref.finalize`` on the storage, whose
Python object torch keeps unique). Its peak is what a perfect allocator would need: on CUDA add the caching
allocator's rounding and fragmentation (usually a few percent).

    tracker = PeakMemoryTracker()
    with tracker:
        loss = model(**batch).loss
        loss.backward()
    tracker.peak  # bytes allocated by the block at its high point (tensors alive before it are not counted)

:func:`measure_training_step` runs one step of the transfer (``PaliGemmaTrainer.compute_loss``, backward,
grad-norm clip, :func:`~big_vision_hf.transfer.training.build_optimizer`'s ``BvAdam`` step, ``zero_grad`` to
``None``) after a first untracked step, so the optimizer state exists, and returns the peak of everything alive:
parameters, optimizer state, batch, and the step's own allocations.
"""

from __future__ import annotations

import tempfile
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["PeakMemoryTracker", "measure_training_step", "storage_bytes", "synthetic_batch"]


def storage_bytes(tensors) -> int:
    """Bytes of the distinct storages under ``tensors`` (an iterable of tensors; shared storages counted once)."""
    seen = {}
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.device.type != "meta":
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


class PeakMemoryTracker(TorchDispatchMode):
    """Current and peak bytes of the tensor storages allocated inside the ``with`` block (see the module
    docstring). ``peak`` is the high point; ``current`` what is still alive."""

    def __init__(self):
        super().__init__()
        self.current = 0
        self.peak = 0
        self._live: dict[int, int] = {}

    def _free(self, key: int) -> None:
        self.current -= self._live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor) and t.device.type != "meta"}
        out = func(*args, **kwargs)
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            storage = t.untyped_storage()
            key = storage.data_ptr()
            if key in inputs or key in self._live or storage.nbytes() == 0:
                continue
            self._live[key] = storage.nbytes()
            self.current += storage.nbytes()
            self.peak = max(self.peak, self.current)
            weakref.finalize(storage, self._free, key)
        return out


def measure_training_step(model, batch: dict, *, lr: float = 1e-4, precision: str = "fp32") -> dict:
    """Peak tensor bytes of one transfer training step of ``model`` (already LoRA-wrapped / frozen as wanted) on
    ``batch`` (the collator's dict). Returns ``{"peak", "static", "step_peak", "forward", "weights_and_state"}``:
    ``static`` = parameters + buffers + optimizer state (``weights_and_state``) + batch before the step,
    ``step_peak`` = the step's own high point, ``peak`` their sum, ``forward`` what is alive when the loss is
    computed (static + the tensors saved for the backward).
    ``precision="bf16"``: the step under bfloat16 autocast, as ``train(precision="bf16")``."""
    from transformers import TrainingArguments

    from .training import PaliGemmaTrainer, build_optimizer

    model.train()
    device = next(model.parameters()).device
    with tempfile.TemporaryDirectory(prefix="bvhf_memtrack_") as out:  # only compute_loss is used: nothing written
        trainer = PaliGemmaTrainer(model=model, args=TrainingArguments(
            output_dir=out, report_to="none", use_cpu=device.type == "cpu"))
    optimizer = build_optimizer(model, lr)
    params = [p for p in model.parameters() if p.requires_grad]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    marks = {}

    def step(tracker=None):
        with autocast:
            loss = trainer.compute_loss(model, batch)
        if tracker is not None:
            marks["forward"] = tracker.current
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # creates the optimizer state
    state = [v for s in optimizer.state.values() for v in s.values()]
    weights_and_state = storage_bytes([*model.parameters(), *model.buffers(), *state])
    static = weights_and_state + storage_bytes(batch.values())
    tracker = PeakMemoryTracker()
    with tracker:
        step(tracker)
    return {"peak": static + tracker.peak, "static": static, "step_peak": tracker.peak,
            "forward": static + marks["forward"], "weights_and_state": weights_and_state}


def synthetic_batch(config, batch: int, text_len: int, rows: int, seed: int = 0) -> dict:
    """A training batch for a ``PaliGemmaConfig`` in the collator's layout, unpadded (every example
    ``image_tokens + text_len + 1`` tokens): image tokens, ``<bos>`` + prefix (``token_type_ids`` 0), then
    ``rows`` supervised suffix tokens (``token_type_ids`` 1, ``labels``)."""
    g = torch.Generator().manual_seed(seed)
    vision, text = config.vision_config, config.text_config
    n_img = (vision.image_size // vision.patch_size) ** 2
    length = n_img + text_len + 1
    ids = torch.randint(3, text.vocab_size, (batch, length), generator=g)
    ids[:, :n_img] = config.image_token_index
    ids[:, n_img] = 2  # <bos>
    types = torch.zeros_like(ids)
    types[:, length - rows:] = 1
    labels = torch.where(types.bool(), ids, torch.full_like(ids, -100))
    pixels = torch.randn(batch, 3, vision.image_size, vision.image_size, generator=g)
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": torch.ones_like(ids),
            "pixel_values": pixels, "labels": labels}
