"""CapPa (``proj.cappa.cappa``): parity with the original big_vision model through the user path, both decoding
modes, the processor, the folder (remote code, pipeline), bad inputs, and fine-tuning (captioning; LocCa-style boxes).

Fixtures made by the ORIGINAL code: ``cappa`` / ``cappa_scan`` (the refharness goldens: teacher-forced logits and
the ViT's outputs, loop and scan layouts); ``cappa_decoding`` (big_vision's own cached greedy decode, its parallel
prediction forward and bf16-rounded-parameter logits on the ``cappa`` params) and ``cappa_variant`` (scan with
``decoder_bias``, no mask token, sincos2d posembs, separate decoder sizes, a 32x48 image), both made by
``fixtures/cappa_decoding/make_cappa_decoding.py``.
"""

from __future__ import annotations

import io
import json
import random

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModel, AutoModelForImageTextToText, AutoProcessor, Trainer, TrainingArguments
from transformers.utils import logging as hf_logging

import big_vision_hf  # noqa: F401  registers the Auto classes
from big_vision_hf.configuration.configuration_bv_cappa import BvCapPaConfig
from big_vision_hf.conversion import CheckpointError, convert_checkpoint
from big_vision_hf.modeling.modeling_bv_cappa import BvCapPaForConditionalGeneration, BvCapPaModel, shift_right
from big_vision_hf.modeling.modeling_bv_vit import BvViTModel
from big_vision_hf.processing.image_processing_bv import BvImageProcessor
from big_vision_hf.processing.processing_bv_cappa import (
    BvCapPaProcessor,
    box_to_text,
    cappa_tokenizer,
    text_to_boxes,
)
from conftest import (
    Golden,
    assert_max_abs_errors,
    bfloat16_void,
    convert_cli,
    max_abs_err,
    params_prefixed,
    rewrite_npz,
    run_without_package,
)

TOL = 1e-4
FAMILY = "proj.cappa.cappa"
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread (conftest)


def _convert(tmp_path, g: Golden, params: str | None = None, *extra: str):
    out = tmp_path / "converted"
    convert_cli(params or g.params, str(out), "--model-config", json.dumps(g.model_kwargs), *extra)
    return out


def _inputs(g: Golden):
    return g.image_nchw(), torch.from_numpy(g.inputs["text"]).long()


@pytest.fixture(scope="module")
def folder(tmp_path_factory, spm_file):
    """The golden `cappa` converted with the CLI (family detected), with a tokenizer (the processor)."""
    g = Golden("cappa")
    out = tmp_path_factory.mktemp("cappa") / "converted"
    convert_cli(g.params, str(out), "--model-config", json.dumps(g.model_kwargs), "--tokenizer", spm_file)
    return out


@pytest.fixture(scope="module")
def model(folder):
    return AutoModelForImageTextToText.from_pretrained(str(folder)).eval()


# ---------------------------------------------------------------------------------------------------------
# Teacher-forced parity: npz -> CLI -> folder -> from_pretrained, every layout
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, layout", [
    ("cappa", None), ("cappa_scan", None), ("cappa_variant", None),
    ("cappa", params_prefixed), ("cappa_scan", params_prefixed),
])
def test_cappa_parity_cli_folder_from_pretrained(tmp_path, name, layout):
    g = Golden(name)
    params = rewrite_npz(g.params, str(tmp_path / "layout.npz"), layout) if layout else None
    folder = _convert(tmp_path, g, params)
    model = AutoModelForImageTextToText.from_pretrained(str(folder)).eval()
    assert isinstance(model, BvCapPaForConditionalGeneration) and model.config.bv_model_name == FAMILY
    image, text = _inputs(g)
    base_model = AutoModel.from_pretrained(str(folder)).eval()
    assert isinstance(base_model, BvCapPaModel)
    with torch.no_grad():
        out = model(pixel_values=image, labels=text)
        base = base_model(pixel_values=image, decoder_input_ids=shift_right(text))
    encoded = g.outputs.get("encoder_out/encoded", g.outputs.get("encoded"))
    report = {
        "logits": max_abs_err(out.logits, g.outputs["logits"]),
        "encoded": max_abs_err(out.encoder_last_hidden_state, encoded),
        "AutoModel -> lm_head": max_abs_err(model.lm_head(base.last_hidden_state), g.outputs["logits"]),
    }
    assert_max_abs_errors(f"{name}{' ' + layout.__name__ if layout else ''}", report, TOL)


@pytest.mark.parametrize("name, fixture", [("cappa", "cappa_decoding"), ("cappa_variant", "cappa_variant")])
def test_cappa_parity_bfloat16_checkpoint(tmp_path, name, fixture):
    """A bf16 checkpoint (``params/`` prefix too) against big_vision run with the bf16-rounded parameters."""
    g, ref = Golden(name), Golden(fixture)
    params = rewrite_npz(g.params, str(tmp_path / "bf16.npz"), lambda a: params_prefixed(bfloat16_void(a)))
    model = AutoModelForImageTextToText.from_pretrained(str(_convert(tmp_path, g, params))).eval()
    assert model.dtype == torch.float32
    image, text = _inputs(g)
    with torch.no_grad():
        logits = model(pixel_values=image, labels=text).logits
    assert max_abs_err(logits, g.outputs["logits"]) > 1e-3  # really went through bf16
    assert_max_abs_errors(f"{name} bf16", {"logits": max_abs_err(logits, ref.outputs["bf16_params_logits"])}, TOL)


def test_cappa_image_encoder_alone_into_vit(tmp_path):
    """``file.npz:encoder`` is a plain big_vision ViT (``vit.Model``, gap pool, no head): the ViT classes."""
    g = Golden("cappa")
    out = tmp_path / "encoder"
    convert_cli(f"{g.params}:encoder", str(out), "--model-name", "vit")
    vit = AutoModel.from_pretrained(str(out)).eval()
    assert isinstance(vit, BvViTModel) and vit.config.pool_type == "gap"
    with torch.no_grad():
        o = vit(g.image_nchw())
    report = {"encoded": max_abs_err(o.last_hidden_state, g.outputs["encoder_out/encoded"]),
              "pre_logits": max_abs_err(o.pooler_output, g.outputs["encoder_out/pre_logits"])}
    assert_max_abs_errors("cappa:encoder -> vit", report, TOL)


@pytest.mark.parametrize("fixture", ["cappa", "cappa_variant"])
def test_cappa_every_parameter_matters(fixture):
    """Each tensor of the converted model, perturbed, changes the logits (the goldens are random everywhere;
    ``cappa_variant`` adds the decoder biases). The key biases are exempt: they add the same ``q . b`` to every score
    of a query, which softmax ignores."""
    g = Golden(fixture)
    model = convert_checkpoint(g.params, FAMILY, g.model_kwargs).eval()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    image, text = _inputs(g)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        ref = model(pixel_values=image, labels=text).logits
        for name, p in model.named_parameters():
            if name.endswith("k_proj.bias"):
                continue
            noise = 0.5 * torch.randn(p.shape, generator=generator)  # random: a constant shift can cancel in a LN
            if name == "model.decoder.embed_tokens.weight":  # only the rows fed (the mask row: the parallel test)
                p[shift_right(text).flatten()] += noise[shift_right(text).flatten()]
            else:
                p += noise
            changed = (model(pixel_values=image, labels=text).logits - ref).abs().max().item()
            p.copy_(original[name])
            assert changed > 1e-4, f"{fixture}: {name}"


# ---------------------------------------------------------------------------------------------------------
# Decoding: big_vision's cached greedy decode, uncached argmax, beam search, parallel prediction
# ---------------------------------------------------------------------------------------------------------


def _uncached_greedy(model, image, steps):
    """Step-by-step argmax, recomputing the whole prefix every step (no cache)."""
    ids = torch.zeros(image.shape[0], 1, dtype=torch.long)
    for _ in range(steps):
        logits = model(pixel_values=image, decoder_input_ids=ids, use_cache=False).logits
        ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


@pytest.mark.parametrize("name, fixture", [("cappa", "cappa_decoding"), ("cappa_variant", "cappa_variant")])
def test_cappa_greedy_generate_equals_big_vision_cached_decode(tmp_path, name, fixture):
    g, ref = Golden(name), Golden(fixture)
    model = AutoModelForImageTextToText.from_pretrained(str(_convert(tmp_path, g))).eval()
    image, seq_len = g.image_nchw(), g.model_kwargs["seq_len"]
    assert model.generation_config.max_length == seq_len + 1
    with torch.no_grad():
        out = model.generate(pixel_values=image, eos_token_id=None, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)
        uncached = _uncached_greedy(model, image, seq_len)
    assert out.sequences.shape == (image.shape[0], seq_len + 1) and (out.sequences[:, 0] == 0).all()
    np.testing.assert_array_equal(out.sequences[:, 1:].numpy(), ref.outputs["greedy_tokens"])
    assert torch.equal(out.sequences, uncached)
    report = {"greedy step logits": max_abs_err(torch.stack(out.logits, 1), ref.outputs["greedy_logits"])}
    assert_max_abs_errors(f"{name} cached decode", report, TOL)


def test_cappa_prompted_generate_equals_uncached_decode(model):
    """A multi-token prompt (LocCa's task prefix) is prefilled under the causal mask, then decoded with the cache."""
    image = Golden("cappa").image_nchw()
    prompt = torch.tensor([[0, 17, 42, 9]] * 2)
    with torch.no_grad():
        cached = model.generate(pixel_values=image, decoder_input_ids=prompt, eos_token_id=None)
        ids = prompt
        for _ in range(cached.shape[1] - prompt.shape[1]):
            logits = model(pixel_values=image, decoder_input_ids=ids, use_cache=False).logits
            ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert cached.shape[1] == model.config.max_position_embeddings + 1 and torch.equal(cached, ids)


def test_cappa_attention_implementations_and_checkpointing_agree(folder):
    g = Golden("cappa")
    image, text = _inputs(g)
    eager = AutoModelForImageTextToText.from_pretrained(str(folder), attn_implementation="eager").eval()
    sdpa = AutoModelForImageTextToText.from_pretrained(str(folder), attn_implementation="sdpa").eval()
    with torch.no_grad():
        report = {impl: max_abs_err(m(pixel_values=image, labels=text).logits, g.outputs["logits"])
                  for impl, m in (("eager", eager), ("sdpa", sdpa))}
    assert_max_abs_errors("cappa attention implementations", report, TOL)
    eager.train()
    plain = eager(pixel_values=image, labels=text, parallel=True).loss  # deterministic in train(): parallel
    plain.backward()
    grads = {n: p.grad.clone() for n, p in eager.named_parameters() if p.grad is not None}
    eager.zero_grad()
    eager.activation_checkpointing_enable()
    checkpointed = eager(pixel_values=image, labels=text, parallel=True).loss
    checkpointed.backward()
    assert torch.allclose(plain, checkpointed) and len(grads) > 50
    assert all(torch.allclose(grads[n], p.grad, atol=1e-6) for n, p in eager.named_parameters() if n in grads)


def test_cappa_generate_stops_at_eos_and_respects_the_posemb(model):
    g = Golden("cappa")
    image = g.image_nchw()
    with torch.no_grad():
        free = model.generate(pixel_values=image, eos_token_id=None)
        eos = int(free[0, 3])  # pretend the 3rd generated token is EOS
        stopped = model.generate(pixel_values=image, eos_token_id=eos, pad_token_id=0)
    assert stopped.shape[1] <= free.shape[1] and stopped[0, 3] == eos and (stopped[0, 4:] == 0).all()
    with pytest.raises(ValueError, match="positions"):
        model.generate(pixel_values=image, max_new_tokens=20, eos_token_id=None)


def test_cappa_beam_search_cached_equals_uncached_and_scores(model):
    g = Golden("cappa")
    image = g.image_nchw()
    kwargs = dict(pixel_values=image, num_beams=3, num_return_sequences=3, eos_token_id=None, length_penalty=0.0,
                  output_scores=True, return_dict_in_generate=True, do_sample=False)
    with torch.no_grad():
        cached = model.generate(**kwargs)
        uncached = model.generate(**kwargs, use_cache=False)
        greedy = model.generate(pixel_values=image, eos_token_id=None)
        seqs = cached.sequences
        logp = model(pixel_values=image.repeat_interleave(3, 0), decoder_input_ids=seqs[:, :-1],
                     use_cache=False).logits.log_softmax(-1)
        scores = logp.gather(-1, seqs[:, 1:, None])[..., 0].sum(-1)
        greedy_logp = model(pixel_values=image, decoder_input_ids=greedy[:, :-1], use_cache=False).logits
        greedy_score = greedy_logp.log_softmax(-1).gather(-1, greedy[:, 1:, None])[..., 0].sum(-1)
    assert torch.equal(cached.sequences, uncached.sequences)
    torch.testing.assert_close(cached.sequences_scores, scores, atol=1e-4, rtol=0)
    assert (scores.view(2, 3)[:, 0] >= greedy_score - 1e-5).all()  # the best beam is at least greedy's


def test_cappa_parallel_prediction_matches_big_vision(model):
    g, ref = Golden("cappa"), Golden("cappa_decoding")
    image, text = _inputs(g)
    with torch.no_grad():
        logits = model(pixel_values=image, labels=text, parallel=True).logits
        no_labels = model(pixel_values=image, parallel=True).logits  # seq_len mask tokens
        tokens = model.generate_parallel(image)
    report = {"parallel_logits": max_abs_err(logits, ref.outputs["parallel_logits"]),
              "parallel_logits (no labels)": max_abs_err(no_labels, ref.outputs["parallel_logits"])}
    assert_max_abs_errors("cappa parallel prediction", report, TOL)
    argmax = torch.from_numpy(ref.outputs["parallel_logits"]).argmax(-1)
    eos_seen = (argmax == 1).long().cumsum(1) - (argmax == 1).long() > 0
    assert torch.equal(tokens, argmax.masked_fill(eos_seen, 0))


def test_cappa_masked_prediction_training_as_big_vision(model):
    """train(): masked_pred_prob of the examples read the UNSHIFTED labels with int(masking_ratio * T) mask tokens
    and attend without a causal mask; with prob = ratio = 1 that is the parallel forward exactly."""
    g, ref = Golden("cappa"), Golden("cappa_decoding")
    image, text = _inputs(g)
    config = model.config
    trainee = BvCapPaForConditionalGeneration(BvCapPaConfig(**{**config.to_dict(), "masked_pred_prob": 1.0,
                                                                "masking_ratio": 1.0}))
    trainee.load_state_dict(model.state_dict())
    trainee.train()
    with torch.no_grad():
        logits = trainee(pixel_values=image, labels=text).logits
    assert_max_abs_errors("cappa train() all-masked", {"logits": max_abs_err(logits, ref.outputs["parallel_logits"])},
                          TOL)
    trainee.config.masked_pred_prob, trainee.config.masking_ratio = 0.5, 0.5
    torch.manual_seed(0)
    labels = torch.randint(2, 100, (400, 10))
    inputs, rows = trainee.decoder_inputs_from_labels(labels)
    assert 120 < int(rows.sum()) < 280  # ~half the examples
    masked = inputs[rows] == config.vocab_size
    assert (masked.sum(1) == 5).all()  # int(0.5 * 10) per masked example
    assert torch.equal(inputs[rows][~masked], labels[rows][~masked])  # the rest: unshifted targets
    assert torch.equal(inputs[~rows], shift_right(labels[~rows]))
    trainee.eval()
    assert torch.equal(trainee.decoder_inputs_from_labels(labels)[0], shift_right(labels))  # eval: teacher forcing


def test_cappa_loss_is_big_vision_weighted_softmax_xent(model):
    """generative trainer: weights = labels != 0 (x label_masks), per-example normalised, batch mean."""
    g = Golden("cappa")
    image, text = _inputs(g)
    logits = g.outputs["logits"].astype(np.float64)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, g.inputs["text"][..., None].astype(np.int64), -1)[..., 0]
    w = (g.inputs["text"] != 0).astype(np.float64)
    expected = float(((nll * w).sum(1) / w.sum(1)).mean())
    masks = torch.ones_like(text, dtype=torch.float32)
    masks[:, :3] = 0
    w2 = w * masks.numpy()
    expected_masked = float(((nll * w2).sum(1) / w2.sum(1)).mean())
    with torch.no_grad():
        loss = model(pixel_values=image, labels=text).loss.item()
        ignore = model(pixel_values=image, labels=text.masked_fill(text == 0, -100)).loss.item()  # -100 = pad
        masked = model(pixel_values=image, labels=text, label_masks=masks).loss.item()
    assert abs(loss - expected) < 1e-4 and abs(ignore - expected) < 1e-4 and abs(masked - expected_masked) < 1e-4


# ---------------------------------------------------------------------------------------------------------
# Text pp, processor, folder, pipeline, remote code
# ---------------------------------------------------------------------------------------------------------

_WORDS = "a photo of the red blue green square cat dog on in with two aref gcap cap".split()


@pytest.fixture(scope="module")
def spm_file(tmp_path_factory) -> str:
    """A tiny SentencePiece model laid out like c4_en (pad 0, EOS 1, unk 2, no BOS), " 0".." 9" as pieces (one token
    per box coordinate), 128 pieces (the golden model's vocabulary)."""
    import sentencepiece as spm

    rng = random.Random(1)
    other = ["".join(rng.choice("bcdfghklmnprstvz") + rng.choice("aeiou") for _ in range(rng.randint(1, 4)))
             for _ in range(300)]
    sentences = [" ".join(rng.choice(_WORDS if rng.random() < 0.6 else other) for _ in range(rng.randint(2, 10)))
                 for _ in range(3000)]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences), model_writer=buf, vocab_size=128,
                                   model_type="unigram", minloglevel=2, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   user_defined_symbols=[f"\u2581{i}" for i in range(10)])
    path = tmp_path_factory.mktemp("spm") / "c4_like.model"
    path.write_bytes(buf.getvalue())
    return str(path)


def _big_vision_tokenize(sp, text: str, max_len: int) -> list[int]:
    """big_vision ``tokenize(max_len, eos="sticky", pad_value="<pad>")``: tf.strings.lower (ASCII), EncodeAsIds +
    EOS, keep ``max_len - 1`` tokens + EOS when too long, else pad with the <pad> id."""
    text = "".join(chr(ord(c) + 32) if "A" <= c <= "Z" else c for c in text)
    ids = sp.EncodeAsIds(text) + [sp.eos_id()]
    pad = sp.PieceToId("<pad>")
    return ids[: max_len - 1] + ids[-1:] if len(ids) >= max_len else ids + [pad] * (max_len - len(ids))


def test_cappa_processor_text_pp_and_prompts(spm_file):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=spm_file)
    processor = BvCapPaProcessor(BvImageProcessor(size={"height": 32, "width": 32}), cappa_tokenizer(spm_file, 10))
    assert processor.tokenizer.pad_token_id == 0 and processor.tokenizer.eos_token_id == 1
    captions = ["A photo of a Cat.", "", "a red square on the green dog with two cats in a photo of a cat"]
    image = Image.new("RGB", (40, 30), (255, 0, 0))
    batch = processor(images=[image] * 3, suffix=captions, return_tensors="pt")
    assert batch["labels"].tolist() == [_big_vision_tokenize(sp, c, 10) for c in captions]  # CapPa's text pp exactly
    assert batch["label_masks"].eq(1).all() and batch["pixel_values"].shape == (3, 3, 32, 32)
    # LocCa-style prompt: a prefix of the decoder input, masked out of the loss.
    target = "2 3 4 5 a red square"
    prompted = processor(images=image, text="aref red", suffix=target, return_tensors="pt")
    prompt_ids = sp.EncodeAsIds("aref red")
    ids = prompt_ids + sp.EncodeAsIds(target) + [1]
    assert len(ids) > 10 and prompted["labels"][0].tolist() == ids[:9] + [1]  # sticky EOS on prompt + target
    assert prompted["label_masks"][0].tolist() == [0.0] * len(prompt_ids) + [1.0] * (10 - len(prompt_ids))
    gen = processor(images=[image, image], text="aref red", return_tensors="pt")
    assert gen["decoder_input_ids"].tolist() == [[0] + prompt_ids] * 2
    assert processor(images=image, text="", return_tensors="pt")["decoder_input_ids"].tolist() == [[0]]
    with pytest.raises(ValueError, match="cannot be batched"):
        processor(images=[image, image], text=["aref red", "gcap 0 1 2 3"])
    assert text_to_boxes(box_to_text((0.0, 0.25, 0.5, 1.0), num_bins=5), num_bins=5) == [(0.0, 0.25, 0.5, 1.0)]
    assert box_to_text((0.0, 0.25, 0.5, 1.0), num_bins=5) == "0 1 2 4"


def test_cappa_folder_pipeline_and_processor(folder, model):
    """``--tokenizer`` gives the folder its processor; ``pipeline("image-to-text")`` captions with ``generate``."""
    from transformers import pipeline

    processor = AutoProcessor.from_pretrained(str(folder))
    assert isinstance(processor, BvCapPaProcessor) and processor.text_length == 10
    readme = (folder / "README.md").read_text()
    assert "pipeline_tag: image-text-to-text" in readme and "generate" in readme
    image = Image.fromarray((np.random.default_rng(0).uniform(size=(48, 40, 3)) * 255).astype(np.uint8))
    with torch.no_grad():
        ids = model.generate(**processor(images=image, text="", return_tensors="pt"))
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # transformers 5.25 logs the image-to-text redirect with a broken format string
    try:
        captioner = pipeline("image-to-text", model=str(folder), trust_remote_code=False)
    finally:
        hf_logging.set_verbosity(verbosity)
    out = captioner(image, text="")
    assert out[0]["generated_text"] == processor.batch_decode(ids, skip_special_tokens=True)[0]


def test_cappa_folder_loads_without_the_package(tmp_path, folder, model):
    g = Golden("cappa")
    image, text = _inputs(g)
    body = """
    from transformers import AutoModelForImageTextToText, AutoProcessor
    model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    image = torch.from_numpy(inputs["image"])
    with torch.no_grad():
        logits = model(pixel_values=image, labels=torch.from_numpy(inputs["text"])).logits
        ids = model.generate(pixel_values=image, eos_token_id=None)
    labels = processor(suffix=["a photo of a cat"], text="")["labels"]
    from PIL import Image
    from transformers import pipeline
    captioner = pipeline("image-to-text", model=folder, trust_remote_code=True)
    caption = captioner(Image.fromarray(inputs["pil"]), text="")[0]["generated_text"]
    outputs = {"logits": logits.numpy(), "ids": ids.numpy(), "labels": np.asarray(labels), "caption": caption}
    remote = {"model": model, "processor": processor, "tokenizer": processor.tokenizer, "pipeline": captioner.model}
    """
    pil = (np.random.default_rng(0).uniform(size=(40, 48, 3)) * 255).astype(np.uint8)
    got = run_without_package(tmp_path, folder, body, {"image": image.numpy(), "text": text.numpy(), "pil": pil})
    processor = AutoProcessor.from_pretrained(str(folder))
    with torch.no_grad():
        ids = model.generate(pixel_values=image, eos_token_id=None)
        caption_ids = model.generate(**processor(images=Image.fromarray(pil), text="", return_tensors="pt"))
    assert str(got["caption"]) == processor.batch_decode(caption_ids, skip_special_tokens=True)[0]
    assert_max_abs_errors("cappa remote code", {"logits": max_abs_err(torch.from_numpy(got["logits"]),
                                                                       g.outputs["logits"])}, TOL)
    np.testing.assert_array_equal(got["ids"], ids.numpy())
    np.testing.assert_array_equal(got["labels"], processor(suffix=["a photo of a cat"], text="")["labels"])


# ---------------------------------------------------------------------------------------------------------
# Bad inputs: one-line CheckpointErrors
# ---------------------------------------------------------------------------------------------------------


def _scan_on_axis0(arrays):
    """A scanned decoder stacked on axis 0 (like the ViT encoder) instead of big_vision's axis 1."""
    return {k: (np.moveaxis(v, 1, 0) if k.startswith("decoder/EncDecBlock/") else v) for k, v in arrays.items()}


@pytest.mark.parametrize("source, layout, kwargs, needle", [
    ("cappa_scan", _scan_on_axis0, None, "axis 1"),
    ("uvim_vtt", None, None, "UViM stage II"),
    ("uvim_vqvae", None, None, "UViM stage I"),
    ("vit_tok", None, None, "plain ViT"),
    ("cappa", None, {"decoder_bias": True}, "decoder_bias=True"),
    ("cappa", None, {"masked_pred_prob": 0.0}, "masked_pred_prob=0.0"),
    ("cappa", None, {"decoder_num_heads": 2}, "num_attention_heads=2"),
    ("cappa", None, {"seq_len": 64}, "max_position_embeddings=64"),
    ("cappa", None, {"dcoder_bias": False}, "unknown big_vision CapPa option 'dcoder_bias'"),
    ("cappa", lambda a: {k: v for k, v in a.items() if "CrossAttn/key" not in k}, None, "encoder_attn.k_proj.weight"),
    ("cappa", lambda a: {**a, "decoder/extra/kernel": np.zeros(3, np.float32)}, None, "decoder/extra/kernel"),
])
def test_cappa_bad_inputs_are_one_line_errors(tmp_path, source, layout, kwargs, needle):
    g = Golden(source)
    params = rewrite_npz(g.params, str(tmp_path / "bad.npz"), layout) if layout else g.params
    with pytest.raises(CheckpointError) as e:
        convert_checkpoint(params, FAMILY, kwargs if kwargs is not None else {})
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_cappa_tokenizer_larger_than_the_vocabulary_is_refused(tmp_path, spm_file):
    from big_vision_hf.conversion.api import convert_to_folder

    g = Golden("cappa_variant")  # 100 tokens; the test SentencePiece model has 128
    with pytest.raises(CheckpointError) as e:
        convert_to_folder(g.params, str(tmp_path / "out"), model_config=g.model_kwargs, tokenizer=spm_file,
                          progress=False)
    assert "128 pieces but the model's vocabulary has 100" in str(e.value) and "\n" not in str(e.value)


def test_cappa_config_from_bv_kwargs_matches_conversion():
    g = Golden("cappa")
    converted = convert_checkpoint(g.params, FAMILY, g.model_kwargs).config
    config = BvCapPaConfig.from_bv_kwargs(g.model_kwargs, image_size=32)
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size",
                "max_position_embeddings", "decoder_bias", "posemb", "masked_pred_prob", "masking_ratio"):
        assert getattr(config, key) == getattr(converted, key), key
    ours, theirs = config.vision_config.to_dict(), converted.vision_config.to_dict()
    assert {k: v for k, v in ours.items() if k != "transformers_version"} == \
        {k: v for k, v in theirs.items() if k != "transformers_version"}
    assert isinstance(BvCapPaModel(config).get_encoder(), BvViTModel)


# ---------------------------------------------------------------------------------------------------------
# Fine-tuning with Trainer: CapPa captioning and a LocCa-style box task
# ---------------------------------------------------------------------------------------------------------

COLORS = {"red": (230, 30, 30), "blue": (30, 30, 230), "green": (30, 200, 30)}


def _square_image(cell: tuple[int, int], color, other=None, grid: int = 4, size: int = 32) -> Image.Image:
    """A gray image with a coloured square filling one cell of a ``grid x grid`` layout (and maybe a second one)."""
    pixels = np.full((size, size, 3), 110, np.uint8)
    step = size // grid
    for (r, c), rgb in [(cell, color)] + ([other] if other else []):
        pixels[r * step:(r + 1) * step, c * step:(c + 1) * step] = rgb
    return Image.fromarray(pixels)


class _Rows(torch.utils.data.Dataset):
    def __init__(self, batch):
        self.batch = batch

    def __len__(self):
        return len(self.batch["labels"])

    def __getitem__(self, i):
        return {k: v[i] for k, v in self.batch.items()}


def _train(model, batch, tmp_path, steps: int, lr: float, batch_size: int = 16):
    args = TrainingArguments(output_dir=str(tmp_path / "trainer"), max_steps=steps,
                             per_device_train_batch_size=batch_size, learning_rate=lr, lr_scheduler_type="constant",
                             logging_steps=steps // 5, save_strategy="no", report_to=[], use_cpu=True, seed=0,
                             dataloader_num_workers=0, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=_Rows(batch))
    trainer.train()
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def test_cappa_trainer_captioning_loss_goes_down(tmp_path, folder, spm_file):
    """Fine-tune the converted golden model with Trainer on synthetic captions (the colour of a square)."""
    processor = AutoProcessor.from_pretrained(str(folder))
    model = AutoModelForImageTextToText.from_pretrained(str(folder))
    rng = random.Random(0)
    names = [rng.choice(list(COLORS)) for _ in range(32)]
    images = [_square_image((rng.randrange(4), rng.randrange(4)), COLORS[n]) for n in names]
    batch = processor(images=images, suffix=[f"a {n} square" for n in names], return_tensors="pt")
    assert model.config.masked_pred_prob == 0.75  # CapPa's training: 3/4 of the examples parallel-predicted
    losses = _train(model, dict(batch), tmp_path, steps=40, lr=2e-3)
    assert losses[-1] < 0.5 * losses[0], losses


def test_locca_box_task_fine_tuning(tmp_path, spm_file):
    """LocCa's referring-expression task on a CapPa trained with Trainer: images with a red and a blue square on a
    3x3 grid, prompt ``"aref <colour>"``, target the square's box as text (``box_to_text``: ``"y0 x0 y1 x1"``,
    4 bins); afterwards greedy `generate` from the prompt reads the right box back (chance: 1 in 9)."""
    torch.manual_seed(0)
    processor = BvCapPaProcessor(BvImageProcessor(size={"height": 24, "width": 24}), cappa_tokenizer(spm_file, 8))
    config = BvCapPaConfig.from_bv_kwargs(dict(num_heads=4, num_layers=1, mlp_dim=64, emb_dim=32, vocab_size=128,
                                               seq_len=8, patches=(8, 8), decoder_num_layers=1), image_size=24)
    model = BvCapPaForConditionalGeneration(config)
    rng = random.Random(0)
    cells = [(r, c) for r in range(3) for c in range(3)]
    images, prompts, boxes = [], [], []
    for _ in range(64):
        (a, b), (name_a, name_b) = rng.sample(cells, 2), rng.sample(["red", "blue"], 2)
        images.append(_square_image(a, COLORS[name_a], (b, COLORS[name_b]), grid=3, size=24))
        prompts.append(f"aref {name_a}")
        boxes.append((a[0] / 3, a[1] / 3, (a[0] + 1) / 3, (a[1] + 1) / 3))
    targets = [box_to_text(box, num_bins=4) for box in boxes]
    batch = processor(images=images, text=prompts, suffix=targets, return_tensors="pt")
    assert batch["label_masks"][0].tolist() == [0, 0] + [1] * 6  # the prompt is not trained on
    losses = _train(model, dict(batch), tmp_path, steps=400, lr=1e-3, batch_size=32)
    assert losses[-1] < 0.1 * losses[0], losses

    model.eval()
    inputs = processor(images=images[:32], text=prompts[:32], return_tensors="pt")  # prompts of equal length
    with torch.no_grad():
        ids = model.generate(**inputs)
    texts = processor.batch_decode(ids[:, inputs["decoder_input_ids"].shape[1]:], skip_special_tokens=True)
    found = [text_to_boxes(text, num_bins=4) for text in texts]
    accuracy = np.mean([bool(f) and np.allclose(f[0], box) for f, box in zip(found, boxes)])
    assert accuracy >= 0.6, (accuracy, texts[:8])
