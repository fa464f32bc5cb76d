"""Video transfer: big_vision's frame sampling, the frames folded into the batch as paligemma.py does, the six
video configs as tasks (batches + evaluation of a tiny model), and a tiny PaliGemma that learns a video task."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch
from PIL import Image

from big_vision_hf.transfer import synthetic
from big_vision_hf.transfer.collator import PaliGemmaCollator
from big_vision_hf.transfer.evaluation import evaluate
from big_vision_hf.transfer.tasks import get_task
from big_vision_hf.transfer.video import load_frames, prepare_video_dataset, sample_frame_indices

VIDEO_TASKS = ("msrvtt_cap", "msrvtt_qa", "msvd_qa", "activitynet_cap", "activitynet_qa", "vatex_cap")
COLORS = list(synthetic.COLORS)
QUESTION = "how many circles?"


@pytest.fixture(scope="module")
def tok():
    return synthetic.make_tokenizer(extra_texts=[f"answer en {QUESTION}"] * 8 + COLORS * 8)


@pytest.fixture(scope="module")
def processor(tok):
    return synthetic.make_processor(tok, res=32, patch=16, text_len=32)  # 4 image tokens per frame


def _model(tok, seed=0):
    return synthetic.make_model(tok, res=32, patch=16, vision_width=32, vision_layers=1, text_width=64,
                                text_layers=2, seed=seed)


def _frame(color, size=32):
    return Image.new("RGB", (size, size), synthetic.COLORS[color])


def test_frame_sampling_as_big_vision():
    assert sample_frame_indices(100, 4, 9) == [0, 9, 18, 27]  # evaluation: from the first frame
    assert sample_frame_indices(20, 4, 9) == [0, 9, 18, 0]  # frames past the end dropped, the clip tiled
    assert sample_frame_indices(3, 5, 1) == [0, 1, 2, 0, 1]  # video_replicate_img
    starts = {sample_frame_indices(100, 4, 9, deterministic=False, rng=random.Random(s))[0] for s in range(50)}
    assert min(starts) >= 0 and max(starts) <= 100 - 28 and len(starts) > 5  # random start, span inside
    with pytest.raises(ValueError):
        sample_frame_indices(0, 4, 1)


def test_load_frames_from_list_array_folder_and_file(tmp_path):
    frames = [_frame(c) for c in COLORS]
    out = load_frames(frames, 2, 2)
    assert [f.getpixel((0, 0)) for f in out] == [synthetic.COLORS["red"], synthetic.COLORS["blue"]]
    out = load_frames(np.stack([np.asarray(f) for f in frames]), 3, 1)
    assert [f.getpixel((0, 0)) for f in out] == [synthetic.COLORS[c] for c in COLORS[:3]]
    for i, f in enumerate(frames):
        f.save(tmp_path / f"{i:03d}.png")
    out = load_frames(str(tmp_path), 2, 3)
    assert [f.getpixel((0, 0)) for f in out] == [synthetic.COLORS["red"], synthetic.COLORS["yellow"]]
    av = pytest.importorskip("av")
    path = str(tmp_path / "clip.mp4")
    with av.open(path, "w") as container:
        stream = container.add_stream("mpeg4", rate=4)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        for f in frames * 2:
            for packet in stream.encode(av.VideoFrame.from_image(f)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    out = load_frames(path, 3, 2)  # frames 0, 2, 4 = red, blue, red (lossy codec: compare roughly)
    got = [np.asarray(f)[16, 16].astype(int) for f in out]
    want = [synthetic.COLORS[c] for c in ("red", "blue", "red")]
    assert all(np.abs(g - np.array(w)).max() < 40 for g, w in zip(got, want))


def test_frames_are_folded_into_the_batch_as_paligemma_py(tok, processor):
    """paligemma.py embed_image: [B, T, ...] -> [B*T, ...] -> SigLIP -> [B, T*n, D]; transformers does the same
    when the processor gets a list of frames per prompt."""
    model = _model(tok).eval()
    videos = [[_frame("red"), _frame("blue"), _frame("green")], [_frame("yellow"), _frame("red"), _frame("red")]]
    batch = processor(images=videos, text=["caption en"] * 2, padding=True, return_tensors="pt")
    n = processor.image_seq_length
    assert (batch["input_ids"] == tok.image_token_id).sum(-1).tolist() == [3 * n, 3 * n]
    assert batch["pixel_values"].shape[0] == 6  # B*T frames
    with torch.no_grad():
        ref = model(**batch).logits
        feats = model.model.get_image_features(batch["pixel_values"])
        feats = getattr(feats, "pooler_output", feats)
        zimg = feats.reshape(2, 3 * n, -1)  # the fold of paligemma.py
        embeds = model.get_input_embeddings()(batch["input_ids"].clamp(max=model.config.text_config.vocab_size - 1))
        is_img = batch["input_ids"] == tok.image_token_id
        embeds = embeds.clone()
        embeds[is_img] = zimg.reshape(-1, zimg.shape[-1]).to(embeds.dtype)
        out = model(inputs_embeds=embeds, attention_mask=batch["attention_mask"],
                    token_type_ids=batch["token_type_ids"]).logits
    assert torch.allclose(out, ref, atol=1e-5)


def _records(task, n, seed=0):
    rng = random.Random(seed)
    recs = []
    for _ in range(n):
        colors = [rng.choice(COLORS) for _ in range(3)]
        rec = {"video": [_frame(c) for c in colors]}
        if "captions" in task.fields:
            rec["captions"] = [f"a {colors[-1]} circle", f"a {colors[-1]} square"]
        else:
            rec.update(question=QUESTION, answer=colors[-1])
        recs.append(rec)
    return recs


@pytest.mark.parametrize("name", VIDEO_TASKS)
def test_video_task_builds_batches_and_evaluates(name, tok, processor):
    task = get_task(name)
    assert task.num_frames in (8, 16) and task.frame_stride > 1
    train_rows = prepare_video_dataset(_records(task, 2), task, train=True, num_frames=3, stride=1)
    assert len(train_rows[0]["image"]) == 3 and isinstance(train_rows[0]["suffix"], str)
    batch = PaliGemmaCollator(processor, text_len=32)(train_rows)
    assert batch["pixel_values"].shape[0] == 6 and (batch["labels"] != -100).any()
    rows = prepare_video_dataset(_records(task, 2), task, expand="list", num_frames=3, stride=1)
    recipe = task.recipe(224, text_len=4)
    result = evaluate(_model(tok), processor, rows, recipe, batch_size=2, progress=False)
    key = "cider" if task.metric == "cider" else "acc"
    assert key in result.metrics and len(result.predictions) == 2


def test_tiny_paligemma_learns_a_video_task(tok, processor, tmp_path):
    """The answer is the colour of the LAST of 3 frames (whatever the question): the model has to read the right
    frame's tokens."""
    from big_vision_hf.transfer.training import train

    task = get_task("msvd_qa")
    train_rows = prepare_video_dataset(_records(task, 64, seed=1), task, train=True, num_frames=3, stride=1)
    eval_rows = prepare_video_dataset(_records(task, 24, seed=2), task, num_frames=3, stride=1)
    model = _model(tok, seed=0)
    recipe = task.recipe(224, hparams=synthetic.TINY_HPARAMS, lr=1e-2, epochs=None, steps=60, batch_size=16,
                         text_len=24)  # the tiny tokenizer spells the 17-token prompt nearly letter by letter
    before = evaluate(model, processor, eval_rows, recipe, batch_size=24, progress=False).metrics["acc"]
    train(model, processor, train_rows, os.path.join(tmp_path, "run"), recipe, progress=False, logging_steps=20,
          use_cpu=True)
    after = evaluate(model, processor, eval_rows, recipe, batch_size=24, progress=False).metrics["acc"]
    assert after >= 0.6 and after > before + 0.4, (before, after)


def test_run_evaluate_on_a_video_jsonl(tok, processor, tmp_path):
    """`big-vision-hf evaluate` path: a JSONL whose `video` lists frame files relative to it."""
    import json

    from big_vision_hf.transfer.run import run_evaluate

    folder = tmp_path / "model"
    _model(tok).save_pretrained(folder)
    processor.save_pretrained(folder)
    for i, c in enumerate(COLORS[:3]):
        _frame(c).save(tmp_path / f"f{i}.png")
    with open(tmp_path / "data.jsonl", "w") as f:
        for _ in range(2):
            f.write(json.dumps({"video": [f"f{i}.png" for i in range(3)], "question": QUESTION, "answer": "red"}))
            f.write("\n")
    metrics = run_evaluate(str(folder), str(tmp_path / "data.jsonl"), task="msvd_qa", progress=False, batch_size=2)
    assert metrics["msvd_qa"]["num"] == 2


def test_transfer_cli_path_on_a_video_jsonl(tmp_path):
    """`big-vision-hf transfer --task msvd_qa --data videos.jsonl`: the tiny model trains on frame lists."""
    import json

    from big_vision_hf.transfer.run import run_transfer

    for c in ("red", "blue"):
        _frame(c, 64).save(tmp_path / f"{c}.png")
    with open(tmp_path / "train.jsonl", "w") as f:
        for i in range(12):
            c = ("red", "blue")[i % 2]
            f.write(json.dumps({"video": ["red.png", f"{c}.png"], "question": QUESTION, "answer": c}) + "\n")
    out = run_transfer(task="msvd_qa", data=str(tmp_path / "train.jsonl"), output_dir=str(tmp_path / "out"),
                       epochs=1, progress=False)
    assert out.losses and "acc" in out.metrics_after["msvd_qa"]
    assert os.path.exists(tmp_path / "out" / "metrics.json")
