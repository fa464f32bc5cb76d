"""Two towers (SigLIP) parity with the original big_vision code through the user path, text pp, pipeline, training.

npz -> `big-vision-hf convert --model-name proj.image_text.two_towers` -> folder -> `AutoModel.from_pretrained` ->
forward, compared with what the ORIGINAL JAX code produced for the same random parameters (fp32, <= 1e-4):
``siglip`` (MAP image pool, no image head, text pool last) must land in transformers' ``SiglipModel``;
``siglip_scan_heads`` (scanned, gap + sincos image, MAP text pool, both heads) in our ``BvSiglipModel``.
"""

from __future__ import annotations

import io
import json
import random

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoProcessor, AutoTokenizer, SiglipModel, pipeline

import big_vision_hf  # noqa: F401  registers the Auto classes
from big_vision_hf.cli import main as cli_main
from big_vision_hf.conversion.api import convert_checkpoint
from big_vision_hf.conversion.checkpoint import CheckpointError
from big_vision_hf.conversion.export import add_text_processor
from big_vision_hf.modeling.modeling_bv_two_towers import (
    BvSiglipModel,
    BvTwoTowerModel,
    l2_normalize,
    sigmoid_loss,
    softmax_loss,
)
from big_vision_hf.processing.tokenization_bv_text import BvTextTokenizer
from conftest import Golden, assert_max_abs_errors, convert_cli, max_abs_err, rewrite_npz

TOL = 1e-4
FAMILY = "proj.image_text.two_towers"


def _convert(folder, g: Golden, params: str | None = None, kwargs: dict | None = None) -> str:
    convert_cli(params or g.params, str(folder), "--model-name", FAMILY, "--model-config",
                json.dumps(g.model_kwargs if kwargs is None else kwargs), "--image-size", "32")
    return str(folder)


def _tower_errors(out, ref, prefix: str, n_layers: int, encoder_key: str, hidden: str) -> dict:
    errors = {f"{prefix}/{encoder_key}": max_abs_err(out.last_hidden_state, ref[f"{prefix}/{encoder_key}"])}
    blocks = f"{prefix}/encoder/block" if prefix == "img" else f"{prefix}/block"
    for i in range(n_layers):
        errors[f"{blocks}{i:02d}/+mlp"] = max_abs_err(out.hidden_states[i + 1], ref[f"{blocks}{i:02d}/+mlp"])
    if hidden in ref:
        errors[hidden] = max_abs_err(out.hidden_states[0], ref[hidden])
    return errors


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("two_towers")
    return {name: _convert(root / name, Golden(name)) for name in ("siglip", "siglip_scan_heads")}


# ---------------------------------------------------------------------------------------------------------
# Parity
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_siglip_lands_in_transformers_siglipmodel_with_parity(folders, attn):
    g = Golden("siglip")
    model = AutoModel.from_pretrained(folders["siglip"], attn_implementation=attn).eval()
    assert type(model) is SiglipModel, type(model)
    assert json.load(open(f"{folders['siglip']}/config.json"))["model_type"] == "siglip"
    with torch.no_grad():
        out = model(**g.two_tower_inputs(), output_hidden_states=True)
    ref = g.outputs
    errors = {
        "zimg": max_abs_err(out.image_embeds, ref["zimg"]),
        "ztxt": max_abs_err(out.text_embeds, ref["ztxt"]),
        "derived/siglip_logits": max_abs_err(out.logits_per_image, ref["derived/siglip_logits"]),
        "img/pre_logits": max_abs_err(out.vision_model_output.pooler_output, ref["img/pre_logits"]),
        "txt/logits": max_abs_err(out.text_model_output.pooler_output, ref["txt/logits"]),
        "t": max_abs_err(model.logit_scale.exp(), ref["t"]),
        "b": max_abs_err(model.logit_bias, ref["b"]),
    }
    errors |= _tower_errors(out.vision_model_output, ref, "img", 2, "encoded", "img/with_posemb")
    errors |= _tower_errors(out.text_model_output, ref, "txt", 2, "transformed", "-")
    assert_max_abs_errors(f"siglip -> SiglipModel [{attn}]", errors, TOL)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_siglip_scan_heads_lands_in_bv_class_with_parity(folders, attn):
    g = Golden("siglip_scan_heads")
    model = AutoModel.from_pretrained(folders["siglip_scan_heads"], attn_implementation=attn).eval()
    assert type(model) is BvSiglipModel and model.config.model_type == "bv_siglip", type(model)
    with torch.no_grad():
        out = model(**g.two_tower_inputs(), output_hidden_states=True)
        image_features = model.get_image_features(g.image_nchw()).pooler_output
        text_features = model.get_text_features(g.two_tower_inputs()["input_ids"]).pooler_output
    ref = g.outputs
    errors = {
        "zimg": max_abs_err(out.image_embeds, ref["zimg"]),
        "ztxt": max_abs_err(out.text_embeds, ref["ztxt"]),
        "derived/siglip_logits": max_abs_err(out.logits_per_image, ref["derived/siglip_logits"]),
        "img/pre_logits": max_abs_err(out.vision_model_output.pooler_output, ref["img/pre_logits"]),
        "img/logits": max_abs_err(image_features, ref["img/logits"]),
        "txt/pre_logits": max_abs_err(out.text_model_output.pre_logits, ref["txt/pre_logits"]),
        "txt/logits": max_abs_err(text_features, ref["txt/logits"]),
        "t": max_abs_err(model.logit_scale.exp(), ref["t"]),
        "b": max_abs_err(model.logit_bias, ref["b"]),
    }
    errors |= _tower_errors(out.vision_model_output, ref, "img", 2, "encoded", "img/with_posemb")
    errors |= _tower_errors(out.text_model_output, ref, "txt", 2, "transformed", "-")
    assert_max_abs_errors(f"siglip_scan_heads -> BvSiglipModel [{attn}]", errors, TOL)


def test_siglip_as_bv_class_matches_too():
    """`target="bv"` puts a SiglipModel-representable checkpoint in our class, with the same outputs."""
    g = Golden("siglip")
    model = convert_checkpoint(g.params, FAMILY, g.model_kwargs, target="bv")
    assert type(model) is BvSiglipModel
    with torch.no_grad():
        out = model(**g.two_tower_inputs())
    assert_max_abs_errors("siglip -> BvSiglipModel", {
        "zimg": max_abs_err(out.image_embeds, g.outputs["zimg"]),
        "ztxt": max_abs_err(out.text_embeds, g.outputs["ztxt"]),
        "derived/siglip_logits": max_abs_err(out.logits_per_image, g.outputs["derived/siglip_logits"]),
    }, TOL)


@pytest.mark.parametrize("name", ["siglip", "siglip_scan_heads"])
def test_image_subtree_converts_as_vit(tmp_path, name):
    """`file.npz:img` alone is a ViT (family detected): MAP + no head -> BvViTModel; gap + head -> classifier."""
    g = Golden(name)
    folder = tmp_path / "img"
    convert_cli(f"{g.params}:img", str(folder), "--image-size", "32")
    if name == "siglip":
        model = AutoModel.from_pretrained(str(folder)).eval()
        assert type(model).__name__ == "BvViTModel"
        with torch.no_grad():
            errors = {"img/pre_logits": max_abs_err(model(g.image_nchw()).pooler_output, g.outputs["img/pre_logits"])}
    else:
        from transformers import AutoModelForImageClassification

        model = AutoModelForImageClassification.from_pretrained(str(folder)).eval()
        assert type(model).__name__ == "BvViTForImageClassification"
        with torch.no_grad():
            out = model(g.image_nchw())
        errors = {"img/pre_logits": max_abs_err(out.pooler_output, g.outputs["img/pre_logits"]),
                  "img/logits": max_abs_err(out.logits, g.outputs["img/logits"])}
    assert_max_abs_errors(f"{name}:img -> ViT", errors, TOL)


def test_normalisation_big_vision_vs_siglipmodel():
    """big_vision: z / (||z|| + 1e-8); SiglipModel: z / ||z|| (no epsilon): measured difference."""
    g = Golden("siglip")
    model = convert_checkpoint(g.params, FAMILY, g.model_kwargs)
    assert type(model) is SiglipModel
    with torch.no_grad():
        out = model(**g.two_tower_inputs())
        raw = model.get_image_features(g.image_nchw()).pooler_output
    ours = l2_normalize(raw)
    diff_fixture = float((ours - out.image_embeds).abs().max())
    norms = raw.norm(dim=-1)
    # Relative difference is 1e-8 / (||z|| + 1e-8): below fp32 resolution unless ||z|| is tiny.
    z = torch.randn(4, 48, dtype=torch.float64)
    diffs = {}
    for scale in (1.0, 1e-3, 1e-6):
        zs = z * scale
        norm = zs.norm(dim=-1, keepdim=True)
        diffs[scale] = float((zs / (norm + 1e-8) - zs / norm).abs().max())
    print(f"normalisation: fixture ||zimg|| {norms.min():.2f}..{norms.max():.2f}, max abs diff {diff_fixture:.1e}; "
          f"fp64 at ||z||~{{7, 7e-3, 7e-6}}: " + ", ".join(f"{v:.1e}" for v in diffs.values()))
    assert diff_fixture <= 1e-7, f"SiglipModel vs big_vision normalisation differ by {diff_fixture:.2e} on the fixture"
    assert diffs[1.0] < 1e-8 and diffs[1e-6] > 1e-4, diffs  # only matters for near-zero embeddings


# ---------------------------------------------------------------------------------------------------------
# Layouts and what SiglipModel cannot represent
# ---------------------------------------------------------------------------------------------------------


def _without(prefix: str):
    return lambda arrays: {k: v for k, v in arrays.items() if not k.startswith(prefix)}


def _to_scan(arrays):
    out, stacked = {}, {}
    for k, v in arrays.items():
        for root in ("img/Transformer/encoderblock_", "txt/Encoder_0/encoderblock_"):
            if k.startswith(root):
                i, rest = k[len(root):].split("/", 1)
                stacked.setdefault(root[:-1] + "/" + rest, {})[int(i)] = v
                break
        else:
            out[k] = v
    for k, layers in stacked.items():
        out[k] = np.stack([layers[i] for i in sorted(layers)])
    return out


def _double_posemb(arrays):
    """Old text checkpoints added a second posemb inside Encoder_0 (big_vision text_transformer.load merges it)."""
    arrays = dict(arrays)
    pe = arrays["txt/pos_embedding"]
    arrays["txt/pos_embedding"] = pe * 0.25
    arrays["txt/Encoder_0/pos_embedding"] = pe * 0.75
    return arrays


@pytest.mark.parametrize("layout", [_to_scan, _double_posemb])
def test_other_layouts_give_the_same_model(tmp_path, layout):
    g = Golden("siglip")
    params = rewrite_npz(g.params, str(tmp_path / "p.npz"), layout)
    model = convert_checkpoint(params, FAMILY, g.model_kwargs)
    with torch.no_grad():
        out = model(**g.two_tower_inputs())
    assert_max_abs_errors(f"siglip {layout.__name__}", {
        "zimg": max_abs_err(out.image_embeds, g.outputs["zimg"]),
        "ztxt": max_abs_err(out.text_embeds, g.outputs["ztxt"]),
    }, TOL)


def test_text_tower_without_head_gets_identity_head(tmp_path):
    g = Golden("siglip")
    params = rewrite_npz(g.params, str(tmp_path / "p.npz"), _without("txt/head"))
    model = convert_checkpoint(params, FAMILY, {**g.model_kwargs, "out_dim": [None, None]})
    assert type(model) is SiglipModel
    assert torch.equal(model.text_model.head.weight, torch.eye(48)) and not model.text_model.head.bias.any()
    with torch.no_grad():
        ztxt = model(**g.two_tower_inputs()).text_embeds
    pre = torch.from_numpy(g.outputs["txt/pre_logits"])
    assert_max_abs_errors("siglip without txt/head", {"ztxt": max_abs_err(ztxt, l2_normalize(pre).numpy())}, TOL)


def test_softmax_model_without_bias_is_not_siglip(tmp_path):
    """No `b` (LiT/CLIP-like, softmax loss): our class with model_type bv_two_towers, logits without bias."""
    g = Golden("siglip")
    params = rewrite_npz(g.params, str(tmp_path / "p.npz"), lambda a: {k: v for k, v in a.items() if k != "b"})
    kwargs = {k: v for k, v in g.model_kwargs.items() if k != "bias_init"}
    model = convert_checkpoint(params, FAMILY, kwargs)
    assert type(model) is BvTwoTowerModel and model.config.model_type == "bv_two_towers" and model.logit_bias is None
    with torch.no_grad():
        out = model(**g.two_tower_inputs())
    assert_max_abs_errors("siglip without b -> BvTwoTowerModel", {
        "zimg": max_abs_err(out.image_embeds, g.outputs["zimg"]),
        "logits": max_abs_err(out.logits_per_image, g.outputs["derived/siglip_logits"] - g.outputs["b"]),
    }, TOL)


def test_target_transformers_says_why_not():
    g = Golden("siglip_scan_heads")
    with pytest.raises(CheckpointError) as e:
        convert_checkpoint(g.params, FAMILY, g.model_kwargs, target="transformers")
    message = str(e.value)
    assert "\n" not in message and "image pool_type 'gap'" in message and "text pool_type 'map'" in message, message


def test_registered_siglip_filename_converts_both_towers(tmp_path):
    """A registered SigLIP file name finds the two-tower entry (its image tower is `file.npz:img`), both towers."""
    import shutil

    g = Golden("siglip")
    params = str(tmp_path / "webli_en_b16_224_63724782.npz")  # a registered basename
    shutil.copy(g.params, params)
    folder = _convert(tmp_path / "whole", g, params)
    assert type(AutoModel.from_pretrained(folder)) is SiglipModel


def test_detects_two_towers_from_the_arrays():
    from big_vision_hf.conversion.api import detect_family
    from big_vision_hf.conversion.checkpoint import read_checkpoint

    for name in ("siglip", "siglip_scan_heads"):
        assert detect_family(read_checkpoint(Golden(name).params)) == FAMILY


# ---------------------------------------------------------------------------------------------------------
# Bad inputs: one-line errors
# ---------------------------------------------------------------------------------------------------------


def test_missing_text_tower_is_a_one_line_error(tmp_path, capsys):
    g = Golden("siglip")
    params = rewrite_npz(g.params, str(tmp_path / "p.npz"), _without("txt/"))
    rc = cli_main(["convert", params, str(tmp_path / "out"), "--model-name", FAMILY, "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err, err
    assert "no text tower 'txt/'" in err and "--model-name vit" in err, err


@pytest.mark.parametrize("kwargs, needle", [
    ({"out_dim": [32, 48]}, "num_classes=32 but the checkpoint has no head"),
    ({"out_dim": [None, 32]}, "text out_dim/num_classes=32"),
    ({"text": {"pool_type": "map"}}, "needs txt/MAPHead_0"),
    ({"temperature": 10}, "unknown big_vision two_towers option"),
    ({"text": {"width": 64}}, "text hidden_size=64"),
])
def test_inconsistent_model_config_is_a_one_line_error(kwargs, needle):
    g = Golden("siglip")
    with pytest.raises(CheckpointError) as e:
        convert_checkpoint(g.params, FAMILY, kwargs)
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)


# ---------------------------------------------------------------------------------------------------------
# Text pp (BvTextTokenizer) against big_vision's ops, re-implemented from pp/ops_text.py and pp/proj/paligemma/ops.py
# ---------------------------------------------------------------------------------------------------------

_WORDS = "a photo of cat dog bird car tree house the small big red green blue white black on in with two three".split()


def _sentencepiece(path, gemma_like: bool, vocab_size: int = 60) -> str:
    import sentencepiece as spm

    rng = random.Random(0)
    words = _WORDS + ["".join(rng.choice("bcdfghklmnprstvz") + rng.choice("aeiou") for _ in range(rng.randint(1, 4)))
                      for _ in range(400)]
    sentences = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(3000)]
    ids = dict(pad_id=0, eos_id=1, bos_id=2, unk_id=3) if gemma_like else dict(pad_id=0, eos_id=1, unk_id=2, bos_id=-1)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences), model_writer=buf, vocab_size=vocab_size,
                                   model_type="unigram", minloglevel=2, **ids)
    with open(path, "wb") as f:
        f.write(buf.getvalue())
    return str(path)


@pytest.fixture(scope="module")
def spm_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("spm")
    return {"c4": _sentencepiece(root / "c4.model", False), "gemma": _sentencepiece(root / "gemma.model", True)}


def _big_vision_pp(sp, text: str, length: int, pad: int) -> list[int]:
    """big_vision: tf.strings.lower (ASCII) -> EncodeAsIds + [eos] -> sticky truncation / padding to `length`."""
    text = "".join(chr(ord(c) + 32) if "A" <= c <= "Z" else c for c in text)
    ids = sp.EncodeAsIds(text) + [sp.eos_id()]
    return ids[: length - 1] + ids[-1:] if len(ids) >= length else ids + [pad] * (length - len(ids))


TEXTS = ["A photo of a Cat.", "", "a photo of a big red dog with two cats and three birds on a tree",
         "ÉCOLE </s> <pad> émoji 😀", "  two  spaces ", "BLUE"]


@pytest.mark.parametrize("preset, pad", [("siglip", 1), ("siglip2", 0)])
def test_tokenizer_reproduces_big_vision_text_pp(spm_files, preset, pad):
    import sentencepiece as spm

    path = spm_files["c4" if preset == "siglip" else "gemma"]
    sp = spm.SentencePieceProcessor(model_file=path)
    tok = getattr(BvTextTokenizer, f"for_{preset}")(path, max_length=16)
    got = tok(TEXTS, return_tensors="pt")
    assert set(got) == {"input_ids"}  # no attention_mask: big_vision masks nothing
    expected = [_big_vision_pp(sp, t, 16, pad) for t in TEXTS]
    assert got["input_ids"].tolist() == expected
    assert all(sp.bos_id() not in row for row in expected[:1])  # no BOS (SigLIP 2: bos="no")
    # The pipeline asks every siglip model for max_length=64 and padding="max_length": the text length wins.
    assert tok(TEXTS, padding="max_length", max_length=64, truncation=True)["input_ids"] == expected
    assert tok(TEXTS, padding=True)["input_ids"] == expected  # "longest" is served as big_vision's fixed length
    tok.save_pretrained(str(spm_files["c4"]) + f".{preset}.saved")
    again = AutoTokenizer.from_pretrained(str(spm_files["c4"]) + f".{preset}.saved")
    # AutoTokenizer gives the fast twin (tokenization_fast, the same ids), built from spiece.model
    assert type(again).__name__ == "BvTextTokenizerFast" and again(TEXTS)["input_ids"] == expected


def test_tokenizer_errors_are_one_line(spm_files, tmp_path):
    bad = tmp_path / "tokenizer.json"
    bad.write_text('{"model": "not sentencepiece"}')
    with pytest.raises(ValueError) as e:
        BvTextTokenizer.for_siglip(str(bad))
    assert "not a readable SentencePiece model" in str(e.value) and "\n" not in str(e.value), str(e.value)
    tok = BvTextTokenizer.for_siglip(spm_files["c4"], max_length=8)
    with pytest.raises(ValueError) as e:
        tok(["a photo of a big red dog with two cats"], truncation=False)
    assert "longer than max_length=8" in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert len(tok(["a photo of a big red dog with two cats"])["input_ids"][0]) == 8  # default: sticky truncation


# ---------------------------------------------------------------------------------------------------------
# Processor and zero-shot pipeline on converted folders
# ---------------------------------------------------------------------------------------------------------


def _image(seed=0):
    from PIL import Image

    return Image.fromarray(np.random.RandomState(seed).randint(0, 255, (40, 50, 3), dtype=np.uint8))


LABELS = ["a cat", "a dog", "a big red car"]


def _pipeline_scores(folder, model):
    clf = pipeline("zero-shot-image-classification", model=folder, trust_remote_code=False)
    result = clf(_image(), candidate_labels=LABELS, hypothesis_template="{}")
    scores = {r["label"]: r["score"] for r in result}
    processor = AutoProcessor.from_pretrained(folder)
    inputs = processor(text=LABELS, images=[_image()], return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits_per_image[0]
    return torch.tensor([scores[label] for label in LABELS]), logits


def test_zero_shot_pipeline_sigmoid_for_siglip(folders, spm_files):
    for name, cls in (("siglip", SiglipModel), ("siglip_scan_heads", BvSiglipModel)):
        processor = add_text_processor(folders[name], spm_files["c4"], preset="siglip")
        assert type(processor.tokenizer).__name__ == "BvTextTokenizerFast"
        assert processor.tokenizer.model_max_length == 12
        loaded = AutoProcessor.from_pretrained(folders[name])
        assert type(loaded.tokenizer).__name__ == "BvTextTokenizerFast"
        assert type(loaded.image_processor).__name__ == "BvImageProcessor"
        model = AutoModel.from_pretrained(folders[name]).eval()
        assert type(model) is cls
        scores, logits = _pipeline_scores(folders[name], model)
        torch.testing.assert_close(scores, torch.sigmoid(logits), rtol=1e-5, atol=1e-7)


def test_zero_shot_pipeline_softmax_for_softmax_models(tmp_path, spm_files):
    g = Golden("siglip_scan_heads")
    params = rewrite_npz(g.params, str(tmp_path / "p.npz"), lambda a: {k: v for k, v in a.items() if k != "b"})
    folder = _convert(tmp_path / "softmax", g, params, {k: v for k, v in g.model_kwargs.items() if k != "bias_init"})
    add_text_processor(folder, spm_files["c4"])
    model = AutoModel.from_pretrained(folder).eval()
    assert type(model) is BvTwoTowerModel
    scores, logits = _pipeline_scores(folder, model)
    torch.testing.assert_close(scores, logits.softmax(-1), rtol=1e-5, atol=1e-7)
    assert abs(float(scores.sum()) - 1) < 1e-5


def test_wrong_tokenizer_for_the_model_is_a_one_line_error(folders, tmp_path):
    big = _sentencepiece(tmp_path / "big.model", False, vocab_size=300)  # more pieces than the 256-row embedding
    with pytest.raises(ValueError) as e:
        add_text_processor(folders["siglip"], big)
    assert "300 pieces but the text tower embeds 256" in str(e.value) and "\n" not in str(e.value), str(e.value)


# ---------------------------------------------------------------------------------------------------------
# Training: losses, Trainer, locked image tower
# ---------------------------------------------------------------------------------------------------------


def test_losses_match_big_vision_formulas():
    torch.manual_seed(0)
    zimg, ztxt = l2_normalize(torch.randn(5, 16)), l2_normalize(torch.randn(5, 16))
    t, b = torch.tensor([2.3]), torch.tensor([-10.0])
    logits = zimg @ ztxt.T * t.exp() + b
    m1_diag1 = 2 * torch.eye(5) - 1  # big_vision siglip.py: mean over images of the summed -log_sigmoid
    expected = -torch.nn.functional.logsigmoid(m1_diag1 * logits).sum(-1).mean()
    torch.testing.assert_close(sigmoid_loss(zimg, ztxt, t, b), expected)
    # transformers' SiglipModel loss (texts as rows) is the same number
    hf = -torch.nn.functional.logsigmoid(m1_diag1 * logits.T).sum(-1).mean()
    torch.testing.assert_close(sigmoid_loss(zimg, ztxt, t, b), hf)
    clip = zimg @ ztxt.T * t.exp()
    labels = torch.arange(5)
    cross_entropy = torch.nn.functional.cross_entropy
    expected = 0.5 * (cross_entropy(clip, labels) + cross_entropy(clip.T, labels))
    torch.testing.assert_close(softmax_loss(zimg, ztxt, t), expected)


@pytest.mark.parametrize("lock", [False, True])
def test_trainer_fine_tunes_with_the_model_loss(folders, tmp_path, lock):
    from transformers import Trainer, TrainingArguments

    datasets = pytest.importorskip("datasets")
    model = AutoModel.from_pretrained(folders["siglip_scan_heads"], lock_image_tower=lock)
    rng = np.random.default_rng(0)
    ds = datasets.Dataset.from_dict({
        "pixel_values": rng.uniform(-1, 1, (8, 3, 32, 32)).astype(np.float32).tolist(),
        "input_ids": rng.integers(0, 256, (8, 12)).tolist(),
    })

    def collate(rows):
        return {"pixel_values": torch.tensor([r["pixel_values"] for r in rows]),
                "input_ids": torch.tensor([r["input_ids"] for r in rows]), "return_loss": True}

    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    args = TrainingArguments(str(tmp_path / "run"), per_device_train_batch_size=4, max_steps=2, learning_rate=1e-2,
                             report_to=[], save_strategy="no", use_cpu=True, remove_unused_columns=False,
                             logging_steps=1, dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, train_dataset=ds, data_collator=collate)
    result = trainer.train()
    assert np.isfinite(result.training_loss)
    changed = {k for k, v in model.named_parameters() if not torch.equal(v.detach(), before[k])}
    image = {k for k in before if k.startswith(("vision_model.", "vision_head."))}
    assert "text_model.head.weight" in changed and "logit_scale" in changed
    if lock:
        assert not changed & image, sorted(changed & image)[:5]
    else:
        assert "vision_head.weight" in changed
