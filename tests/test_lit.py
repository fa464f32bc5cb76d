"""LiT (two towers with big_vision's BERT text tower) parity with the ORIGINAL big_vision + flaxformer code.

npz -> `big-vision-hf convert --model-name proj.image_text.two_towers --model-config '{"text_model":
"proj.flaxformer.bert", ...}'` -> folder -> `AutoModel.from_pretrained` -> forward, compared with what big_vision's
``two_towers`` with ``proj.flaxformer.bert`` (flaxformer ``BertEncoder``) produced for the same random parameters
(fp32, <= 1e-4). Fixture ``lit_bert`` (``tests/fixtures/lit_bert/make_fixture.py``): ViT tok-pool image tower with an
image head, tiny BERT text tower with a head, softmax-trained (no ``b``), text ids from big_vision's own
``bert_tokenize`` op on a tiny ``vocab.txt``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoProcessor, AutoTokenizer, pipeline

import big_vision_hf  # noqa: F401  registers the Auto classes
from big_vision_hf.cli import main as cli_main
from big_vision_hf.conversion.api import convert_checkpoint, detect_family
from big_vision_hf.conversion.checkpoint import CheckpointError, read_checkpoint
from big_vision_hf.conversion.export import add_text_processor
from big_vision_hf.modeling.modeling_bv_two_towers import BvBertTextTransformer, BvTwoTowerModel
from big_vision_hf.processing.tokenization_bv_bert import BvBertTokenizer
from conftest import Golden, assert_max_abs_errors, convert_cli, max_abs_err, rewrite_npz

TOL = 1e-4
FAMILY = "proj.image_text.two_towers"
NAME = "lit_bert"


def _kwargs(g: Golden, **text) -> dict:
    """The fixture's big_vision config.model; its tiny BERT's flaxformer fields override config="base"."""
    kwargs = g.model_kwargs
    kwargs["text"] = {**kwargs["text"], **g.config["tiny_bert"], **text}
    return kwargs


def _vocab(g: Golden) -> str:
    return f"{g.dir}/{g.config['vocab_file']}"


def _errors(model, g: Golden) -> dict:
    ref = g.outputs
    with torch.no_grad():
        out = model(**g.two_tower_inputs(), output_hidden_states=True)
        image_features = model.get_image_features(g.image_nchw()).pooler_output
    text = out.text_model_output
    valid = g.inputs["text"] != 0  # flaxformer also masks padded queries: compare the positions anything reads
    transformed = text.last_hidden_state.detach().numpy()[valid]
    return {
        "zimg": max_abs_err(out.image_embeds, ref["zimg"]),
        "ztxt": max_abs_err(out.text_embeds, ref["ztxt"]),
        "derived/logits": max_abs_err(out.logits_per_image, ref["derived/logits"]),
        "derived/probs": max_abs_err(out.logits_per_image.softmax(-1), ref["derived/probs"]),
        "img/pre_logits": max_abs_err(out.vision_model_output.pooler_output, ref["img/pre_logits"]),
        "img/logits": max_abs_err(image_features, ref["img/logits"]),
        "txt/transformed": float(np.abs(transformed - ref["txt/transformed"][valid]).max()),
        "txt/pre_logits": max_abs_err(text.pre_logits, ref["txt/pre_logits"]),
        "txt/logits": max_abs_err(text.pooler_output, ref["txt/logits"]),
        "t": max_abs_err(model.logit_scale.exp(), ref["t"]),
    }


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    g = Golden(NAME)
    out = str(tmp_path_factory.mktemp("lit") / "lit")
    convert_cli(g.params, out, "--model-name", FAMILY, "--model-config", json.dumps(_kwargs(g)), "--image-size", "32")
    return out


# ---------------------------------------------------------------------------------------------------------
# Parity
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_lit_cli_folder_parity(folder, attn):
    g = Golden(NAME)
    model = AutoModel.from_pretrained(folder, attn_implementation=attn).eval()
    assert type(model) is BvTwoTowerModel and type(model.text_model) is BvBertTextTransformer
    config = json.load(open(f"{folder}/config.json"))
    assert config["model_type"] == "bv_two_towers" and config["text_model"] == "proj.flaxformer.bert"
    assert config["text_config"]["model_type"] == "bv_bert_text" and model.logit_bias is None  # softmax (LiT)
    assert_max_abs_errors(f"lit_bert -> BvTwoTowerModel [{attn}]", _errors(model, g), TOL)


def test_fixture_has_no_default_valued_parameter():
    """make_golden randomises every parameter (1-D leaves, zero-init heads get N(0, 0.1) noise)."""
    g = Golden(NAME)
    arrays = np.load(g.params)
    for name in arrays:
        a = arrays[name]
        if a.size == 1:  # t: not log(temperature_init)
            assert abs(float(a[0]) - np.log(g.model_kwargs["temperature_init"])) > 1e-3, name
        else:
            assert a.std() > 1e-3 and not np.all(a == a.flat[0]), name  # nothing constant (0, 1)


def test_every_parameter_moves_the_compared_outputs(folder):
    """A parity test that passes with a parameter ignored is impossible: perturbing ANY converted tensor moves
    the outputs compared above by far more than the tolerance. Except the attention KEY biases: ``q . (k + b)``
    shifts every logit of a query row by the same ``q . b``, which softmax ignores, so they are mathematically
    inert (in big_vision too; a port dropping them would be exact)."""
    g = Golden(NAME)
    model = AutoModel.from_pretrained(folder).eval()
    inputs = g.two_tower_inputs()

    def outputs():
        with torch.no_grad():
            out = model(**inputs)
        return torch.cat([out.image_embeds.flatten(), out.text_embeds.flatten(), out.logits_per_image.flatten()])

    base = outputs()
    generator = torch.Generator().manual_seed(0)
    inert = []
    for name, tensor in model.state_dict().items():
        if not tensor.is_floating_point() or name.endswith(("k_proj.bias", "attention.self.key.bias")):
            continue
        original = tensor.clone()
        with torch.no_grad():
            tensor.add_(torch.randn(tensor.shape, generator=generator) * 0.5)
        if float((outputs() - base).abs().max()) <= 10 * TOL:
            inert.append(name)
        with torch.no_grad():
            tensor.copy_(original)
    assert not inert, f"outputs do not depend on {inert}"
    assert len(model.state_dict()) >= len(np.load(g.params))


def test_lit_detected_from_the_arrays_without_model_name(tmp_path):
    """No --model-name and no text_model: the BERT tower is recognised by its `txt/BertEncoder_0/` arrays."""
    g = Golden(NAME)
    assert detect_family(read_checkpoint(g.params)) == FAMILY
    kwargs = {k: v for k, v in _kwargs(g).items() if k not in ("text_model", "image_model")}
    convert_cli(g.params, str(tmp_path / "auto"), "--model-config", json.dumps(kwargs), "--image-size", "32")
    model = AutoModel.from_pretrained(str(tmp_path / "auto")).eval()
    assert model.config.text_model == "proj.flaxformer.bert"
    with torch.no_grad():
        out = model(**g.two_tower_inputs())
    assert_max_abs_errors("lit_bert detected", {
        "ztxt": max_abs_err(out.text_embeds, g.outputs["ztxt"]),
        "derived/logits": max_abs_err(out.logits_per_image, g.outputs["derived/logits"]),
    }, TOL)


def test_padding_length_does_not_change_the_text_embedding():
    """bert.py masks id 0: extra padding (or none) leaves [CLS] unchanged, as in big_vision."""
    g = Golden(NAME)
    model = convert_checkpoint(g.params, FAMILY, _kwargs(g))
    ids = torch.from_numpy(g.inputs["text"]).long()
    with torch.no_grad():
        ref = model.get_text_features(ids).pooler_output
        longer = model.get_text_features(torch.nn.functional.pad(ids, (0, 5))).pooler_output
        short = model.get_text_features(ids[:1, :7]).pooler_output  # text 0 has 7 real tokens
    assert float((longer - ref).abs().max()) < 1e-5 and float((short - ref[:1]).abs().max()) < 1e-5


# ---------------------------------------------------------------------------------------------------------
# Bad inputs: one-line errors
# ---------------------------------------------------------------------------------------------------------


def test_missing_text_tower_is_a_one_line_error(tmp_path, capsys):
    g = Golden(NAME)
    params = rewrite_npz(g.params, str(tmp_path / "p.npz"), lambda a: {k: v for k, v in a.items()
                                                                      if not k.startswith("txt/")})
    rc = cli_main(["convert", params, str(tmp_path / "out"), "--model-name", FAMILY, "--model-config",
                   json.dumps(_kwargs(g)), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err, err
    assert "no text tower 'txt/'" in err, err


@pytest.mark.parametrize("kwargs, needle", [
    ({"text_model": "proj.image_text.text_transformer"}, "text tower is a flaxformer BERT"),
    ({"text": {"config": "base"}}, "text vocab_size=30522 (BERT base) but the checkpoint arrays have 53"),
    ({"text": {"config": "huge"}}, "unknown BERT config 'huge'"),
    ({"text": {"head_zeroinit": False}}, "number of attention heads"),
    ({"text": {"config": "base", "variant": "B"}}, "unknown big_vision proj.flaxformer.bert option"),
    ({"out_dim": [32, 48]}, "text out_dim/num_classes=48"),
])
def test_inconsistent_lit_config_is_a_one_line_error(kwargs, needle):
    g = Golden(NAME)
    with pytest.raises(CheckpointError) as e:
        convert_checkpoint(g.params, FAMILY, {**_kwargs(g), **kwargs})
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_text_transformer_checkpoint_called_bert_is_a_one_line_error():
    g = Golden("siglip")
    with pytest.raises(CheckpointError) as e:
        convert_checkpoint(g.params, FAMILY, {**g.model_kwargs, "text_model": "proj.flaxformer.bert"})
    assert "no txt/BertEncoder_0/ arrays" in str(e.value) and "\n" not in str(e.value), str(e.value)


# ---------------------------------------------------------------------------------------------------------
# Text pp: BvBertTokenizer against big_vision's own bert_tokenize op (ids stored in the fixture)
# ---------------------------------------------------------------------------------------------------------


def test_tokenizer_reproduces_big_vision_bert_tokenize(tmp_path):
    g = Golden(NAME)
    texts, expected = g.config["texts"], g.inputs["pp_text_ids"].tolist()
    tok = BvBertTokenizer.from_vocab(_vocab(g), max_length=g.config["text_len"])
    assert tok(texts)["input_ids"] == expected  # [CLS] first, no [SEP], lowercased, accents stripped, 0-padded
    assert tok(texts, padding=True, return_tensors="pt")["input_ids"].tolist() == expected  # the pipeline's call
    assert tok(texts)["attention_mask"] == (g.inputs["pp_text_ids"] != 0).astype(int).tolist()
    tok.save_pretrained(str(tmp_path / "tok"))
    again = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    assert type(again) is BvBertTokenizer and again(texts)["input_ids"] == expected
    assert len(tok(texts, truncation=False)["input_ids"][2]) > g.config["text_len"]  # truncation=False honoured


def test_wrong_tokenizer_file_is_a_one_line_error(tmp_path, folder):
    g = Golden(NAME)
    binary = tmp_path / "c4_en.model"
    binary.write_bytes(bytes(range(256)) * 4)  # e.g. a SentencePiece model
    not_bert = tmp_path / "words.txt"
    not_bert.write_text("hello\nworld\n")
    for path, needle in ((binary, "not a readable BERT WordPiece vocab.txt"), (not_bert, "no [CLS] line")):
        with pytest.raises(ValueError) as e:
            BvBertTokenizer.from_vocab(str(path))
        assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)
    big = tmp_path / "vocab.txt"
    big.write_text("\n".join(open(_vocab(g)).read().split("\n") + [f"extra{i}" for i in range(10)]))
    with pytest.raises(ValueError) as e:
        add_text_processor(folder, str(big))
    assert "has 63 entries but the text tower embeds 53" in str(e.value) and "\n" not in str(e.value), str(e.value)
    with pytest.raises(ValueError) as e:
        add_text_processor(folder, _vocab(g), preset="siglip")
    assert "use preset 'bert'" in str(e.value) and "\n" not in str(e.value), str(e.value)


# ---------------------------------------------------------------------------------------------------------
# Zero-shot pipeline on the converted folder (softmax, as LiT is trained)
# ---------------------------------------------------------------------------------------------------------


def _image(seed=0):
    from PIL import Image

    return Image.fromarray(np.random.RandomState(seed).randint(0, 255, (40, 50, 3), dtype=np.uint8))


def test_zero_shot_pipeline_softmax(folder):
    g = Golden(NAME)
    processor = add_text_processor(folder, _vocab(g), max_length=g.config["text_len"])
    assert type(processor.tokenizer) is BvBertTokenizer
    loaded = AutoProcessor.from_pretrained(folder)
    assert type(loaded.tokenizer) is BvBertTokenizer and type(loaded.image_processor).__name__ == "BvImageProcessor"
    labels = [g.config["texts"][i] for i in (0, 2, 3)]
    classifier = pipeline("zero-shot-image-classification", model=folder)
    result = classifier(_image(), candidate_labels=labels, hypothesis_template="{}")
    scores = torch.tensor([{r["label"]: r["score"] for r in result}[label] for label in labels])
    model = AutoModel.from_pretrained(folder).eval()
    inputs = loaded(text=labels, images=[_image()], return_tensors="pt")
    assert inputs["input_ids"].tolist() == g.inputs["pp_text_ids"][[0, 2, 3]].tolist()  # big_vision's ids
    with torch.no_grad():
        out = model(**inputs)
    torch.testing.assert_close(scores, out.logits_per_image[0].softmax(-1), rtol=1e-5, atol=1e-7)
    # the text side of what the pipeline scored is big_vision's ztxt
    ztxt = max_abs_err(out.text_embeds, g.outputs["ztxt"][[0, 2, 3]])
    assert_max_abs_errors("lit_bert pipeline ztxt", {"ztxt": ztxt}, TOL)


def test_cli_tokenizer_picks_the_bert_preset(tmp_path):
    """`convert ... --tokenizer vocab.txt` on a LiT checkpoint attaches big_vision's bert_tokenize (the tower's)."""
    from transformers import AutoTokenizer

    g = Golden("lit_bert")
    out = str(tmp_path / "lit")
    convert_cli(g.params, out, "--model-name", FAMILY, "--model-config", json.dumps(_kwargs(g)), "--image-size", "32",
                "--tokenizer", _vocab(g))
    tok = AutoTokenizer.from_pretrained(out)
    assert type(tok) is BvBertTokenizer
