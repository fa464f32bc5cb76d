"""Fine-tuning a converted model: Trainer on a tiny `datasets` image dataset, and LoRA through PEFT."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoImageProcessor, AutoModelForImageClassification, Trainer, TrainingArguments

import big_vision_hf  # noqa: F401
from conftest import Golden, convert_cli

datasets = pytest.importorskip("datasets")
peft = pytest.importorskip("peft")


def _tiny_dataset(n=24, size=32, seed=0):
    """Two classes a model can learn quickly: reddish vs bluish noise images."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    images, labels = [], []
    for i in range(n):
        label = i % 2
        base = np.array([200, 40, 40] if label == 0 else [40, 40, 200])
        pixels = np.clip(base + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
        images.append(Image.fromarray(pixels))
        labels.append(label)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["red", "blue"])})
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)


def _converted(tmp_path):
    g = Golden("vit_tok")
    folder = tmp_path / "converted"
    convert_cli(g.params, str(folder), "--model-name", "vit", "--model-config", json.dumps(g.model_kwargs))
    return str(folder)


def _prepared(folder):
    processor = AutoImageProcessor.from_pretrained(folder)
    ds = _tiny_dataset()

    def transform(batch):
        out = processor([im.convert("RGB") for im in batch["image"]], return_tensors="pt")
        out["labels"] = batch["label"]
        return out

    return ds.with_transform(transform)


def _mean_loss(model, ds):
    model.eval()
    batch = ds[: len(ds)]
    with torch.no_grad():
        return model(pixel_values=batch["pixel_values"], labels=torch.tensor(batch["labels"])).loss.item()


def _train(model, ds, tmp_path, lr, epochs=6):
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"), per_device_train_batch_size=8, num_train_epochs=epochs, learning_rate=lr,
        logging_steps=1, save_strategy="no", report_to=[], remove_unused_columns=False, use_cpu=True, seed=0,
        dataloader_num_workers=0,
    )
    Trainer(model=model, args=args, train_dataset=ds).train()


def test_trainer_full_finetune_reduces_loss(tmp_path):
    folder = _converted(tmp_path)
    model = AutoModelForImageClassification.from_pretrained(
        folder, num_labels=2, id2label={0: "red", 1: "blue"}, label2id={"red": 0, "blue": 1},
        ignore_mismatched_sizes=True,
    )
    ds = _prepared(folder)
    before = _mean_loss(model, ds)
    _train(model, ds, tmp_path, lr=3e-3)
    after = _mean_loss(model, ds)
    assert after < 0.5 * before, (before, after)


def test_lora_adapts_exactly_the_named_modules(tmp_path):
    from peft import LoraConfig, get_peft_model

    folder = _converted(tmp_path)
    model = AutoModelForImageClassification.from_pretrained(folder, num_labels=2, ignore_mismatched_sizes=True)
    # Documented target names: q_proj k_proj v_proj out_proj (attention), fc1 fc2 (MLP); head: classifier.
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], modules_to_save=["classifier"])
    model = get_peft_model(model, config)
    adapted = sorted({n.rsplit(".lora_A", 1)[0] for n, _ in model.named_parameters() if ".lora_A" in n})
    # Both encoder layers and the MAP-free tok model: exactly q/v of the 2 encoder layers.
    assert adapted == sorted(
        f"base_model.model.vit.encoder.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")
    ), adapted
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all("lora_" in n or "classifier" in n for n in trainable), trainable
    ds = _prepared(folder)
    before = _mean_loss(model, ds)
    _train(model, ds, tmp_path, lr=1e-2)
    after = _mean_loss(model, ds)
    assert after < 0.7 * before, (before, after)


def test_activation_checkpointing_same_loss_and_grads(tmp_path):
    folder = _converted(tmp_path)
    model = AutoModelForImageClassification.from_pretrained(folder, num_labels=2, ignore_mismatched_sizes=True)
    model.train()
    torch.manual_seed(0)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 0, 1])
    loss = model(pixel_values=x, labels=y).loss
    loss.backward()
    grad = model.vit.embeddings.patch_embedding.weight.grad.clone()
    model.zero_grad()
    model.activation_checkpointing_enable()
    loss2 = model(pixel_values=x, labels=y).loss
    loss2.backward()
    torch.testing.assert_close(loss, loss2)
    torch.testing.assert_close(grad, model.vit.embeddings.patch_embedding.weight.grad)
