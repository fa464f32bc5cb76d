"""SigLIP 2 NaFlex two towers: parity with the original big_vision code through the CLI, the Siglip2Model target
with its measured deviation, the zero-shot pipeline, and the registry's SigLIP / SigLIP 2 entries.

The fixture ``tests/fixtures/siglip2_naflex`` was made by the ORIGINAL ``big_vision.models.proj.image_text.
two_towers`` (commit 0127fb6) with ``image_model="proj.image_text.naflex_vit"`` (MAP pool, ``posemb="learn_2d"``,
``nposemb=4``, as the SigLIP 2 NaFlex configs) and the text transformer on random parameters; image inputs come
from big_vision's own NaFlex pp ops (a 3x5 grid + 1 pad, a 4x2 grid + 8 pads). Generator:
``tests/fixtures/siglip2_naflex/make_siglip2_naflex.py``. Per-token image outputs are compared at patch
positions only (``ptype == 1``).
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModel, AutoProcessor, Siglip2Model, pipeline

import big_vision_hf  # noqa: F401  registers the Auto classes
from big_vision_hf.configuration.configuration_bv_naflex import BvNaFlexViTConfig
from big_vision_hf.configuration.configuration_bv_two_towers import BvSiglipConfig
from big_vision_hf.conversion.api import convert_checkpoint
from big_vision_hf.conversion.checkpoint import CheckpointError
from big_vision_hf.conversion.export import add_text_processor
from big_vision_hf.conversion.zoo import ZOO, find_entry
from big_vision_hf.modeling.modeling_bv_naflex import BvNaFlexViTModel
from big_vision_hf.modeling.modeling_bv_two_towers import BvSiglipModel, BvTwoTowerModel
from big_vision_hf.processing.image_processing_bv_naflex import BvNaFlexImageProcessor
from conftest import Golden, assert_max_abs_errors, convert_cli, max_abs_err, rewrite_npz, run_without_package

TOL = 1e-4
FAMILY = "proj.image_text.two_towers"
NAFLEX = "proj.image_text.naflex_vit"
LABELS = ["a photo of a cat", "a photo of a dog", "a red car"]


@pytest.fixture(scope="module")
def g() -> Golden:
    return Golden("siglip2_naflex")


def _convert(folder, g: Golden, *extra: str, params: str | None = None) -> str:
    convert_cli(params or g.params, str(folder), "--model-name", FAMILY, "--model-config", json.dumps(g.model_kwargs),
                *extra)
    return str(folder)


@pytest.fixture(scope="module")
def folders(g, tmp_path_factory):
    root = tmp_path_factory.mktemp("siglip2_naflex")
    return {"bv": _convert(root / "bv", g), "transformers": _convert(root / "s2", g, "--target", "transformers")}


# ---------------------------------------------------------------------------------------------------------
# Parity with big_vision
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("coords", [False, True], ids=["spatial_shapes", "patch_coords"])
def test_cli_default_is_exact_bv_siglip_with_naflex_tower(g, folders, attn, coords):
    model = AutoModel.from_pretrained(folders["bv"], attn_implementation=attn).eval()
    assert type(model) is BvSiglipModel and type(model.vision_model) is BvNaFlexViTModel
    assert model.config.image_model == NAFLEX and isinstance(model.config.vision_config, BvNaFlexViTConfig)
    with torch.no_grad():
        out = model(**g.two_tower_inputs(naflex=True, coords=coords), output_hidden_states=True)
        image_features = model.get_image_features(**g.naflex_inputs(coords)).pooler_output
        text_features = model.get_text_features(g.two_tower_inputs(naflex=True)["input_ids"]).pooler_output
    ref, valid = g.outputs, g.inputs["ptype"] == 1
    errors = {
        "zimg": max_abs_err(out.image_embeds, ref["zimg"]),
        "ztxt": max_abs_err(out.text_embeds, ref["ztxt"]),
        "derived/siglip_logits": max_abs_err(out.logits_per_image, ref["derived/siglip_logits"]),
        "img/pre_logits": max_abs_err(image_features, ref["img/pre_logits"]),
        "txt/logits": max_abs_err(text_features, ref["txt/logits"]),
        "txt/transformed": max_abs_err(out.text_model_output.last_hidden_state, ref["txt/transformed"]),
        "t": max_abs_err(model.logit_scale.exp(), ref["t"]),
        "b": max_abs_err(model.logit_bias, ref["b"]),
    }
    vision = out.vision_model_output
    pairs = {"img/encoded": vision.last_hidden_state, "img/with_posemb": vision.hidden_states[0]}
    pairs |= {f"img/encoder/block{i:02d}/+mlp": vision.hidden_states[i + 1] for i in range(2)}
    for name, ours in pairs.items():  # patch tokens only
        errors[name] = float(np.abs(ours.numpy() - ref[name])[valid].max())
    assert_max_abs_errors(f"siglip2_naflex -> BvSiglipModel [{attn}, {'coords' if coords else 'shapes'}]", errors, TOL)


def _skip_unless_transformers_resize_is_jax():
    """transformers < 5.25 resizes the Siglip2 posemb with torch's F.interpolate(antialias=True), which is wrong on
    1-wide grids (every row gets the first row's value); 5.25 computes jax's weights, as our exact class does."""
    from transformers.models.siglip2.modeling_siglip2 import Siglip2VisionEmbeddings

    ref = np.load(os.path.join(os.path.dirname(__file__), "fixtures", "naflex_posemb_resize", "posemb_resize.npz"))
    theirs = Siglip2VisionEmbeddings.resize_positional_embeddings(torch.from_numpy(ref["posemb_4x4"]),
                                                                  torch.tensor([[12, 1]]), max_length=12)
    if np.abs(theirs[0].numpy().reshape(12, 1, -1) - ref["posemb_4x4_to_12x1"]).max() > 1e-5:
        pytest.skip("this transformers' Siglip2 posemb resize is torch F.interpolate, wrong on 1-wide grids")


def test_target_transformers_is_siglip2model_with_measured_deviation_in_card(g, folders):
    folder = folders["transformers"]
    assert json.load(open(os.path.join(folder, "config.json")))["model_type"] == "siglip2"
    assert not any(f.endswith(".py") for f in os.listdir(folder)), "a transformers class needs no remote code"
    model = AutoModel.from_pretrained(folder).eval()
    assert type(model) is Siglip2Model
    with torch.no_grad():
        out = model(**g.two_tower_inputs(naflex=True))
    ref = g.outputs
    assert_max_abs_errors("siglip2_naflex -> Siglip2Model (fixture)", {
        "zimg": max_abs_err(out.image_embeds, ref["zimg"]),
        "ztxt": max_abs_err(out.text_embeds, ref["ztxt"]),
        "derived/siglip_logits": max_abs_err(out.logits_per_image, ref["derived/siglip_logits"]),
        "img/pre_logits": max_abs_err(out.vision_model_output.pooler_output, ref["img/pre_logits"]),
    }, TOL)
    card = open(os.path.join(folder, "README.md")).read()
    line = next(line for line in card.splitlines() if "Siglip2Model" in line and "Parity" in line)
    print("model card:", line)
    figures = dict(re.findall(r"([\w/]+) (\d\.\de[+-]\d+)", line))
    assert set(figures) >= {"image_embeds", "text_embeds", "logits_per_image", "img/pre_logits"}, figures
    _skip_unless_transformers_resize_is_jax()
    # Synthetic grids up to 8x8 on a 4x4 posemb: the posemb resize matches big_vision; the deviation is small.
    assert max(float(v) for v in figures.values()) <= 1e-4, figures
    assert type(AutoProcessor.from_pretrained(folder)).__name__ in ("Siglip2ImageProcessorPil", "Siglip2Processor")


def test_exact_and_siglip2_models_agree_on_synthetic_inputs(g):
    """The conversion's own deviation measurement, on more aspect ratios than the fixture has."""
    from big_vision_hf.conversion.convert_two_towers import siglip2_model_deviation, synthetic_two_tower_inputs

    _skip_unless_transformers_resize_is_jax()
    exact = convert_checkpoint(g.params, FAMILY, g.model_kwargs)
    s2 = convert_checkpoint(g.params, FAMILY, g.model_kwargs, target="transformers")
    inputs = synthetic_two_tower_inputs(exact.config, num_tokens=64)
    deviation = siglip2_model_deviation(exact, s2, inputs)
    print("Siglip2Model vs BvSiglipModel (synthetic):", deviation)
    assert max(deviation.values()) <= 1e-4, deviation


# ---------------------------------------------------------------------------------------------------------
# Zero-shot pipeline (sigmoid)
# ---------------------------------------------------------------------------------------------------------


def _gemma_like_spm(path) -> str:
    import sentencepiece as spm

    rng = random.Random(0)
    words = "a photo of cat dog car red the small big on in with".split()
    words += ["".join(rng.choice("bcdfgklmnprst") + rng.choice("aeiou") for _ in range(rng.randint(1, 3)))
              for _ in range(300)]
    sentences = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 10))) for _ in range(2000)]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences), model_writer=buf, vocab_size=60,
                                   model_type="unigram", minloglevel=2, pad_id=0, eos_id=1, bos_id=2, unk_id=3)
    with open(path, "wb") as f:
        f.write(buf.getvalue())
    return str(path)


@pytest.fixture(scope="module")
def gemma_spm(tmp_path_factory):
    return _gemma_like_spm(tmp_path_factory.mktemp("spm") / "gemma_tokenizer.model")


def _image() -> Image.Image:
    return Image.fromarray(np.random.default_rng(3).integers(0, 256, (40, 72, 3), dtype=np.uint8))


@pytest.mark.parametrize("which", ["bv", "transformers"])
def test_zero_shot_pipeline_scores_with_sigmoid(folders, gemma_spm, which):
    folder = folders[which]
    add_text_processor(folder, gemma_spm, preset="siglip2")
    model = AutoModel.from_pretrained(folder).eval()
    classifier = pipeline("zero-shot-image-classification", model=folder)
    result = classifier(_image(), candidate_labels=LABELS, hypothesis_template="{}")
    scores = {r["label"]: r["score"] for r in result}
    processor = AutoProcessor.from_pretrained(folder)
    if which == "bv":
        assert type(processor.image_processor) is BvNaFlexImageProcessor
    inputs = processor(text=LABELS, images=[_image()], return_tensors="pt")
    assert inputs["input_ids"].shape == (3, 12) and inputs["pixel_values"].shape[-1] == 8 * 8 * 3
    with torch.no_grad():
        logits = model(**inputs).logits_per_image[0]
    torch.testing.assert_close(torch.tensor([scores[label] for label in LABELS]), torch.sigmoid(logits),
                               rtol=1e-5, atol=1e-7)


def test_registered_filename_converts_two_towers_with_the_registered_text_pp(g, tmp_path, gemma_spm):
    """``convert siglip2_b16_naflex.npz OUT --tokenizer gemma.model``: the registry supplies family, NaFlex image
    model and the SigLIP 2 text pp (here the fixture's sizes override the registered variant)."""
    params = str(tmp_path / "siglip2_b16_naflex.npz")
    shutil.copy(g.params, params)
    kwargs = {k: g.model_kwargs[k] for k in ("image", "text", "out_dim")}
    out = tmp_path / "by_name"
    convert_cli(params, str(out), "--model-config", json.dumps(kwargs), "--tokenizer", gemma_spm)
    model = AutoModel.from_pretrained(str(out)).eval()
    assert type(model) is BvSiglipModel and model.config.image_model == NAFLEX
    processor = AutoProcessor.from_pretrained(str(out))
    sp_pad = processor.tokenizer.pad_token_id
    assert sp_pad == 0, "siglip2 preset pads with the Gemma <pad> piece (id 0 here), not SigLIP's 1"
    card = open(out / "README.md").read()
    assert "gs://big_vision/siglip2/siglip2_b16_naflex.npz" in card
    with torch.no_grad():
        err = max_abs_err(model(**g.two_tower_inputs(naflex=True)).logits_per_image, g.outputs["derived/siglip_logits"])
    assert err <= TOL


# ---------------------------------------------------------------------------------------------------------
# Errors and variants
# ---------------------------------------------------------------------------------------------------------


def test_target_transformers_says_why_not(g, tmp_path):
    params = rewrite_npz(g.params, str(tmp_path / "nob.npz"), lambda a: {k: v for k, v in a.items() if k != "b"})
    kwargs = {k: v for k, v in g.model_kwargs.items() if k != "bias_init"}
    with pytest.raises(CheckpointError) as e:
        convert_checkpoint(params, FAMILY, kwargs, target="transformers")
    assert "\n" not in str(e.value) and "Siglip2Model cannot represent" in str(e.value) and "no bias" in str(e.value)
    model = convert_checkpoint(params, FAMILY, kwargs)  # softmax-trained: our BvTwoTowerModel
    assert type(model) is BvTwoTowerModel and model.config.model_type == "bv_two_towers"
    with pytest.raises(CheckpointError, match="nposemb=8"):
        convert_checkpoint(g.params, FAMILY, {**g.model_kwargs, "image": {**g.model_kwargs["image"], "nposemb": 8}})
    with pytest.raises(CheckpointError, match="--target applies to proj.image_text.two_towers"):
        from big_vision_hf.conversion.api import convert_to_folder

        convert_to_folder(Golden("naflex_vit").params, str(tmp_path / "x"), model_name=NAFLEX, target="transformers")


def test_naflex_inputs_to_a_vit_tower_are_refused():
    config = BvSiglipConfig(
        vision_config=dict(hidden_size=32, num_hidden_layers=1, intermediate_size=64, num_attention_heads=2,
                           patch_size=8, image_size=16),
        text_config=dict(vocab_size=50, hidden_size=32, num_hidden_layers=1, intermediate_size=64,
                         num_attention_heads=2, max_position_embeddings=4))
    model = BvSiglipModel(config).eval()
    with pytest.raises(ValueError, match="NaFlex image inputs"):
        model(pixel_values=torch.zeros(1, 3, 16, 16), spatial_shapes=torch.tensor([[2, 2]]))


# ---------------------------------------------------------------------------------------------------------
# Registry: the public SigLIP / SigLIP 2 checkpoints
# ---------------------------------------------------------------------------------------------------------

# Image tower sizes in the SigLIP 2 paper (ViT-B 86M, L 303M, So400m 400M, g 1B): +-10%.
_TOWER_PARAMS = {"B": 86e6, "L": 303e6, "So400m": 400e6, "g-opt": 1.1e9}


def _two_tower_entries():
    return [e for e in ZOO.values() if e.model_name == FAMILY]


def test_registry_lists_every_siglip_and_siglip2_checkpoint():
    names = {e.name for e in _two_tower_entries()}
    assert len(names) == 10 + 17, sorted(names)  # SigLIP_demo.ipynb: 10; README_siglip2.md: 15 + 2 NaFlex
    for e in _two_tower_entries():
        assert f"{e.name}:img" in ZOO and ZOO[f"{e.name}:img"].url == e.url + ":img"
        assert e.tokenizer_url.startswith("gs://") and e.text_preset in ("siglip", "siglip2")
    assert find_entry("siglip2_b16_256.npz").name == "SigLIP2 B/16 256"
    assert find_entry("/ckpts/siglip2_b16_256.npz:img").name == "SigLIP2 B/16 256:img"
    assert find_entry("siglip2_so400m16_naflex.npz", NAFLEX).name == "SigLIP2 So400m/16 NaFlex:img"
    assert ZOO["SigLIP So400m/14 224"].text_length == 16 and ZOO["SigLIP2 So400m/14 224"].text_length == 64


_SHAPES = os.path.join(os.path.dirname(__file__), "fixtures", "siglip_registry_shapes", "shapes.json")


@pytest.mark.parametrize("name", [e.name for e in ZOO.values() if e.model_name == FAMILY])
@pytest.mark.parametrize("target", ["auto", "transformers"])
def test_registered_siglip_config_converts_big_vision_tree_on_meta_device(name, target):
    """The registered config, checked by the converter against the parameter tree big_vision builds from it
    (names and shapes from ``jax.eval_shape``, ``fixtures/siglip_registry_shapes``), gives a model (meta device,
    no weights) that every array fits: auto = SiglipModel (exact) / our NaFlex class; transformers = SiglipModel /
    Siglip2Model."""
    from transformers.initialization import no_init_weights

    from big_vision_hf.conversion.checkpoint import LazyArray
    from big_vision_hf.conversion.families import family_named
    from big_vision_hf.conversion.mapping import check_fits

    e = ZOO[name]
    tree = json.load(open(_SHAPES))[name]
    params = {k: LazyArray(tuple(v), "float32", lambda: None, "shapes.json", k) for k, v in tree.items()}
    built = family_named(FAMILY).build(params, e.model_config, image_size=e.image_size, target=target)
    cls, config, mapped = built.model_class, built.config, built.mapped
    naflex = e.model_config["image_model"] == NAFLEX
    expected = {("auto", False): "SiglipModel", ("auto", True): "BvSiglipModel",
                ("transformers", False): "SiglipModel", ("transformers", True): "Siglip2Model"}[target, naflex]
    assert cls.__name__ == expected
    with torch.device("meta"), no_init_weights():
        model = cls(config)
    check_fits(mapped, model)  # every array has its parameter, with its shape
    assert config.text_config.max_position_embeddings == e.text_length
    vocab = 256_000 if name.startswith("SigLIP2") else 250_000 if "i18n" in name else 32_000
    assert config.text_config.vocab_size == vocab
    size = e.model_config["image"]["variant"].split("/")[0]
    n_img = sum(v.numel() for k, v in model.state_dict().items() if k.startswith("vision_model."))
    assert abs(n_img / _TOWER_PARAMS[size] - 1) < 0.1, f"{name}: image tower {n_img / 1e6:.0f}M parameters"


_CHILD = """
from transformers import AutoImageProcessor, AutoModel
model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
with torch.no_grad():
    logits = model(**{k: torch.from_numpy(v) for k, v in inputs.items()}).logits_per_image.numpy()
outputs, remote = {"logits": logits}, {"model": model, "processor": processor}
"""


def test_trust_remote_code_without_package(g, folders, tmp_path):
    inputs = {k: v.numpy() for k, v in g.two_tower_inputs(naflex=True).items()}
    child = run_without_package(tmp_path, folders["bv"], _CHILD, inputs)
    err = float(np.abs(child["logits"] - g.outputs["derived/siglip_logits"]).max())
    assert err <= TOL, f"remote-code logits max abs error {err:.2e}"
