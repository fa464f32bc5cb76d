"""big_vision PaliGemma 1/2 -> transformers' PaliGemmaForConditionalGeneration, through the user path.

Fixtures (``fixtures/paligemma``, ``paligemma2``, ``paligemma2_qnorm``) hold tiny checkpoints and the outputs of
big_vision's own ``proj.paligemma.paligemma.Model`` (commit 0127fb6, float32): Gemma with one kv head; Gemma 2
with GQA, head_dim != width/heads, post-norms and soft-caps small enough to bend the logits; Gemma 2 with
``query_pre_attn_norm="rsqrt_emb_per_head"``. Their tiny Gemma variants are not in big_vision's table, so the
variant's full config goes in ``llm.variant``.

The model is called as big_vision's trainer does: ``text = text_full[:, :-1]`` after the image tokens, and
``token_type_ids`` from ``mask_ar`` (0 = image + prefix, bidirectional; 1 = suffix, causal).
"""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
import torch
from safetensors import safe_open
from transformers import PaliGemmaForConditionalGeneration

from big_vision_hf.cli import main
from big_vision_hf.conversion import (
    CheckpointError,
    convert_checkpoint,
    convert_to_folder,
    detect_family,
    read_checkpoint,
)
from big_vision_hf.conversion.checkpoint import LazyArray
from big_vision_hf.conversion.convert_paligemma import (
    GEMMA_VARIANTS,
    NAME,
    build_paligemma,
    gemma_text_config,
    gemma_variant_config,
    paligemma_param_shapes,
)
from big_vision_hf.conversion.mapping import check_fits
from conftest import Golden, convert_cli, max_abs_err, rewrite_npz

FIXTURES = ["paligemma", "paligemma2", "paligemma2_qnorm"]
TOL = 1e-4  # float32


def model_config(g: Golden) -> dict:
    """The fixture's big_vision ``config.model``, with the tiny variant's full config as ``llm.variant``."""
    kw = g.model_kwargs
    kw["llm"] = {**kw["llm"], "variant": g.config["gemma_variant_config"]}
    return kw


def inputs(g: Golden, model, b: slice = slice(None)) -> dict:
    """``<image>`` x n + ``text``, with ``token_type_ids`` = ``mask_ar`` (0 on the image tokens)."""
    n_img = model.config.text_config.num_image_tokens
    text = torch.from_numpy(g.inputs["text"][b]).long()
    mask_ar = torch.from_numpy(g.inputs["mask_ar"][b]).long()
    return dict(
        input_ids=torch.cat([torch.full((len(text), n_img), model.config.image_token_index), text], 1),
        token_type_ids=torch.cat([torch.zeros(len(text), n_img, dtype=torch.long), mask_ar], 1),
        pixel_values=g.image_nchw()[b],
    )


@pytest.fixture(scope="module", params=FIXTURES)
def converted(request, tmp_path_factory):
    """(golden, folder) converted by `big-vision-hf convert` with a forced multi-shard layout."""
    g = Golden(request.param)
    out = str(tmp_path_factory.mktemp(request.param))
    convert_cli(g.params, out, "--model-name", NAME, "--model-config", json.dumps(model_config(g)),
                "--max-shard-size", "200KB")
    return g, out


def test_paligemma_cli_folder_matches_big_vision(converted):
    g, out = converted
    assert os.path.exists(os.path.join(out, "model.safetensors.index.json")), "expected a sharded folder"
    gemma2 = g.config["gemma_variant_config"].get("post_norms", False)
    # Gemma 2 soft-caps attention logits: sdpa is refused; Gemma 1 keeps the prefix-LM mask with sdpa too.
    for impl in ("eager",) if gemma2 else ("eager", "sdpa"):
        model, info = PaliGemmaForConditionalGeneration.from_pretrained(out, attn_implementation=impl,
                                                                        output_loading_info=True)
        assert not any(info.values()), f"loading left keys behind: {info}"
        model.eval()
        n_img = model.config.text_config.num_image_tokens
        with torch.no_grad():
            x = inputs(g, model)
            logits = model(**x).logits
            base = model.model(**x)
        errors = {
            "text_logits": max_abs_err(logits[:, n_img:], g.outputs["text_logits"]),
            "llm/logits_pre_norm": max_abs_err(logits, g.outputs["llm/logits_pre_norm"]),
            "llm/pre_logits": max_abs_err(base.last_hidden_state, g.outputs["llm/pre_logits"]),
            "img/zimg": max_abs_err(base.image_hidden_states, g.outputs["img/zimg"]),
        }
        assert max(errors.values()) <= TOL, f"{g.name} ({impl}): max abs errors {errors} (tolerance {TOL})"
        assert torch.equal(logits[:, n_img:].argmax(-1), torch.from_numpy(g.outputs["text_tokens"]).long())
    if gemma2:
        with pytest.raises(ValueError, match="scaled_dot_product_attention"):
            PaliGemmaForConditionalGeneration.from_pretrained(out, attn_implementation="sdpa")


@pytest.mark.parametrize("name", ["paligemma", "paligemma2"])
def test_paligemma_greedy_generation_cached_equals_uncached(name, tmp_path):
    """``generate`` (prefix-LM prefill + KV cache) = argmax of full uncached forwards, step by step; its first token
    is big_vision's (``text_tokens`` at the separator: the prefix cannot see the suffix in either)."""
    g = Golden(name)
    out = str(tmp_path / "folder")
    convert_cli(g.params, out, "--model-config", json.dumps(model_config(g)))  # family detected from the arrays
    model = PaliGemmaForConditionalGeneration.from_pretrained(out, attn_implementation="eager").eval()
    n_img, steps = model.config.text_config.num_image_tokens, 6
    for b in range(2):
        sep = int(np.flatnonzero(g.inputs["mask_ar_full"][b])[0]) - 1  # last prefix token ("\n")
        prompt = inputs(g, model, slice(b, b + 1))
        prompt = {k: v[:, : n_img + sep + 1] if k != "pixel_values" else v for k, v in prompt.items()}
        with torch.no_grad():
            gen = model.generate(**prompt, max_new_tokens=steps, do_sample=False, eos_token_id=None,
                                 output_scores=True, return_dict_in_generate=True)
            new = gen.sequences[0, prompt["input_ids"].shape[1]:]
            ids, tti = prompt["input_ids"], prompt["token_type_ids"]
            for step in range(steps):
                logits = model(input_ids=ids, token_type_ids=tti, pixel_values=prompt["pixel_values"],
                               use_cache=False).logits[:, -1]
                err = (logits - gen.scores[step]).abs().max().item()
                assert err <= TOL, f"{name}[{b}] step {step}: cached vs uncached logits differ by {err:.2e}"
                token = logits.argmax(-1, keepdim=True)
                assert token.item() == new[step].item(), f"{name}[{b}] step {step}: {token.item()} vs {new[step]}"
                ids, tti = torch.cat([ids, token], 1), torch.cat([tti, torch.ones_like(token)], 1)
        assert new[0].item() == g.outputs["text_tokens"][b, sep], f"{name}[{b}]: first token differs from big_vision"


def test_paligemma2_final_softcap_option():
    """Default: big_vision's ``text_logits`` (no final soft-cap); ``apply_final_logits_softcap``: ``llm/logits``."""
    g = Golden("paligemma2")
    model = convert_checkpoint(g.params, NAME, model_config(g), apply_final_logits_softcap=True)
    assert model.config.text_config.final_logit_softcapping == g.config["gemma_variant_config"]["final_logits_softcap"]
    model.config.text_config._attn_implementation = "eager"
    with torch.no_grad():
        logits = model(**inputs(g, model)).logits
    err = max_abs_err(logits, g.outputs["llm/logits"])
    assert err <= TOL, f"capped logits vs big_vision llm/logits: {err:.2e}"
    uncapped = g.outputs["llm/logits_pre_norm"]
    assert np.abs(uncapped - g.outputs["llm/logits"]).max() > 0.5, "the fixture's cap should bend the logits"


def test_streamed_folder_equals_save_pretrained(tmp_path):
    """The streamed writer gives what ``save_pretrained`` of the in-memory conversion gives: names, index,
    config, generation config and every tensor."""
    g = Golden("paligemma2")
    kw = model_config(g)
    ref = convert_checkpoint(g.params, NAME, kw)
    ref.config.bv_model_config = kw
    ref.save_pretrained(tmp_path / "ref", max_shard_size="200KB")
    convert_to_folder(g.params, str(tmp_path / "ours"), NAME, kw, max_shard_size="200KB")

    def load(folder):
        index = json.load(open(folder / "model.safetensors.index.json"))
        tensors = {}
        for file in set(index["weight_map"].values()):
            with safe_open(str(folder / file), "pt") as f:
                assert f.metadata() == {"format": "pt"}
                tensors.update({k: f.get_tensor(k) for k in f.keys()})
        return index, tensors

    (ref_index, ref_tensors), (index, tensors) = load(tmp_path / "ref"), load(tmp_path / "ours")
    assert index["metadata"] == ref_index["metadata"]
    assert set(index["weight_map"]) == set(ref_index["weight_map"]) == set(ref_tensors)
    assert all(re.fullmatch(r"model-\d{5}-of-\d{5}\.safetensors", f) for f in index["weight_map"].values())
    for name, tensor in ref_tensors.items():
        assert tensors[name].dtype == tensor.dtype and torch.equal(tensors[name], tensor), name
    for file in ("config.json", "generation_config.json"):
        assert json.load(open(tmp_path / "ours" / file)) == json.load(open(tmp_path / "ref" / file)), file


def _count_reads(monkeypatch) -> dict[str, list[tuple[int, int]]]:
    """Records every data read of the checkpoint reader: ``{member: [(first element, element count), ...]}``."""
    from big_vision_hf.conversion import checkpoint

    reads: dict[str, list[tuple[int, int]]] = {}
    original = checkpoint._read_block

    def counting(m, start, shape):
        reads.setdefault(m.member, []).append((start, int(np.prod(shape, dtype=np.int64))))
        return original(m, start, shape)

    monkeypatch.setattr(checkpoint, "_read_block", counting)
    return reads


def _check_layer_by_layer(reads: dict, params: str) -> None:
    """Every byte of every member read exactly once, and no read of a stacked member larger than one layer."""
    arrays = np.load(params)
    assert set(reads) == {m + ".npy" for m in arrays.files}
    for name in arrays.files:
        shape, spans = arrays[name].shape, sorted(reads[name + ".npy"])
        assert [s for s, _ in spans] == [0] + list(np.cumsum([n for _, n in spans])[:-1]), f"{name}: {spans}"
        assert sum(n for _, n in spans) == int(np.prod(shape)), f"{name}: {spans}"
        if "llm/layers/" in name or "encoderblock/" in name:  # scan-stacked: depth on axis 0
            assert max(n for _, n in spans) <= int(np.prod(shape[1:])), f"{name} {shape}: {spans}"


def test_streaming_reads_layer_by_layer(tmp_path, monkeypatch):
    """The streamed writer reads every npz member's bytes exactly once, a stacked array one layer (a fused einsum
    one part) at a time, and a row-wise tensor (the embedding) in row chunks; the result is unchanged."""
    from big_vision_hf.conversion import export

    g = Golden("paligemma")
    expected = convert_checkpoint(g.params, NAME, model_config(g)).state_dict()
    reads = _count_reads(monkeypatch)
    monkeypatch.setattr(export, "_WRITE_CHUNK_BYTES", 4096)
    convert_to_folder(g.params, str(tmp_path / "out"), NAME, model_config(g), max_shard_size="100KB")
    _check_layer_by_layer(reads, g.params)
    gating = np.load(g.params)["llm/layers/mlp/gating_einsum"].shape
    assert len(reads["llm/layers/mlp/gating_einsum.npy"]) == gating[0] * 2  # one read per layer and part
    assert len(reads["llm/embedder/input_embedding.npy"]) > 1  # chunked
    model = PaliGemmaForConditionalGeneration.from_pretrained(str(tmp_path / "out"))
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, expected[name]), name


def test_transposed_gating_einsum_reads_layer_by_layer(tmp_path, monkeypatch):
    """A ``gating_einsum`` stored ``[L, 2, F, D]`` (big_vision ``transpose_gating_einsum``) converts to the same
    weights, still read one layer part at a time."""
    g = Golden("paligemma2")
    expected = convert_checkpoint(g.params, NAME, model_config(g)).state_dict()
    key = "llm/layers/mlp/gating_einsum"
    src = rewrite_npz(g.params, str(tmp_path / "t.npz"),
                      lambda a: {**a, key: np.ascontiguousarray(np.swapaxes(a[key], -1, -2))})
    reads = _count_reads(monkeypatch)
    convert_to_folder(src, str(tmp_path / "out"), NAME, model_config(g), max_shard_size="100KB")
    _check_layer_by_layer(reads, src)
    model = PaliGemmaForConditionalGeneration.from_pretrained(str(tmp_path / "out"))
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, expected[name]), name


@pytest.mark.parametrize("storage", ["bfloat16", "float16"])
def test_half_precision_checkpoints(storage, tmp_path):
    """``.bf16.npz`` (bfloat16 stored as numpy void ``V2``) and ``.f16.npz`` convert exactly, to float32 weights
    or to the checkpoint's own dtype."""
    g = Golden("paligemma2")
    half = getattr(torch, storage)

    def to_half(arrays):
        if storage == "float16":
            return {k: v.astype(np.float16) for k, v in arrays.items()}
        return {k: torch.from_numpy(v).to(half).view(torch.int16).numpy().view("V2") for k, v in arrays.items()}

    src = rewrite_npz(g.params, str(tmp_path / f"pt.{storage}.npz"), to_half)
    assert read_checkpoint(src)["llm/embedder/input_embedding"].dtype == storage
    expected = {k: v.to(half) for k, v in convert_checkpoint(g.params, NAME, model_config(g)).state_dict().items()}
    for dtype in ("float32", storage):
        out = str(tmp_path / dtype)
        convert_cli(src, out, "--model-name", NAME, "--model-config", json.dumps(model_config(g)), "--dtype", dtype)
        model = PaliGemmaForConditionalGeneration.from_pretrained(out, dtype="auto")
        assert model.dtype == getattr(torch, dtype)
        for name, tensor in model.state_dict().items():
            assert torch.equal(tensor.to(half), expected[name]), f"{storage} -> {dtype}: {name}"
        with torch.no_grad():
            logits = model.float()(**inputs(g, model)).logits[:, 16:]
        err = max_abs_err(logits, g.outputs["text_logits"])
        assert err < 0.1, f"{storage} weights: text_logits off by {err:.3f}"


def test_truncated_npz_one_line_error(tmp_path, capsys):
    g = Golden("paligemma")
    data = open(g.params, "rb").read()
    bad = tmp_path / "pt_224.npz"
    bad.write_bytes(data[: len(data) // 3])
    for extra in ([], ["--model-name", NAME, "--model-config", json.dumps(model_config(g))]):
        rc = main(["convert", str(bad), str(tmp_path / "out"), "--quiet", *extra])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and "\n" not in err and err.startswith("big-vision-hf convert: error: "), err
        assert "pt_224.npz" in err and "truncated" in err, err


def test_detected_from_structure():
    assert detect_family(read_checkpoint(Golden("paligemma").params)) == NAME


@pytest.mark.parametrize(
    "llm, match",
    [
        ({"variant": "gemma_tiny"}, "unknown Gemma variant 'gemma_tiny'"),
        ({"variant": "gemma_2b"}, "width=2048 but the checkpoint arrays have 64"),
        ({"variant": {"width": 64, "flash": True}}, "unknown big_vision Gemma option"),
    ],
)
def test_config_errors_are_one_line(llm, match):
    g = Golden("paligemma")
    kw = {**g.model_kwargs, "llm": {**g.model_kwargs["llm"], **llm}}
    with pytest.raises(CheckpointError, match=match) as e:
        convert_checkpoint(g.params, NAME, kw)
    assert "\n" not in str(e.value)


def test_pad_vocab_to_multiple_of():
    """The Hub layout (257,152 -> 257,216): ``<image>`` + padding rows set to the mean embedding row."""
    g = Golden("paligemma")
    plain = convert_checkpoint(g.params, NAME, model_config(g))
    padded = convert_checkpoint(g.params, NAME, model_config(g), pad_vocab_to_multiple_of=64)
    rows = plain.config.text_config.vocab_size
    assert (rows, padded.config.text_config.vocab_size, padded.config.image_token_index) == (320, 384, 320)
    emb = padded.get_input_embeddings().weight
    assert torch.equal(emb[:rows], plain.get_input_embeddings().weight)
    assert torch.allclose(emb[rows:], emb[:rows].mean(0, keepdim=True).expand(384 - rows, -1), atol=1e-7)
    with torch.no_grad():
        a, b = plain(**inputs(g, plain)).logits, padded(**inputs(g, padded)).logits
    assert torch.equal(a, b[..., :rows])


@pytest.mark.parametrize(("variant", "res"), [("gemma_2b", 224), ("gemma2_2b", 448), ("gemma2_9b", 224),
                                              ("gemma2_27b", 896)])
def test_real_variants_fit_transformers(variant, res):
    """The real PaliGemma 3B / PaliGemma 2 3B, 10B, 28B trees (shapes only) fit the model built on ``meta``."""
    shapes = paligemma_param_shapes(variant, res)
    params = {k: LazyArray(s, "float32", lambda: None, k, k) for k, s in shapes.items()}
    kw = {"img": {"variant": "So400m/14", "pool_type": "none", "scan": True},
          "llm": {"variant": variant, "vocab_size": 257_152}}
    built = build_paligemma(params, kw)
    cls, config, mapped = built.model_class, built.config, built.mapped
    with torch.device("meta"):
        model = cls(config)
    check_fits(mapped, model)
    text = config.text_config
    assert (config.image_token_index, text.vocab_size, text.num_image_tokens) == (257_152, 257_152, (res // 14) ** 2)
    if variant.startswith("gemma2"):
        # 27B: query_pre_attn_norm="rsqrt_emb_per_head" -> 4608 / 32 = 144 (as the Hub's PaliGemma 2 28B configs).
        assert text.query_pre_attn_scalar == (144 if variant == "gemma2_27b" else 256)
        assert (text.attn_logit_softcapping, text.final_logit_softcapping, text.sliding_window) == (50.0, None, None)


def test_variant_table_transcribes_big_vision():
    """``gemma.get_config`` fields (commit 0127fb6), and the kwargs gemma_bv overrides."""
    assert GEMMA_VARIANTS["gemma_2b"] == dict(width=2048, depth=18, mlp_dim=16_384, num_heads=8, num_kv_heads=1,
                                              head_dim=256)
    cfg = gemma_variant_config({"variant": "gemma2_2b", "vocab_size": 257_152, "final_logits_softcap": 0.0,
                                "dropout": 0.1, "scan": True})
    assert (cfg["vocab_size"], cfg["final_logits_softcap"], cfg["attn_logits_softcap"], cfg["post_norms"]) == (
        257_152, 0.0, 50.0, True)
    assert gemma_text_config({**cfg, "depth": 26}, apply_final_logits_softcap=True)["final_logit_softcapping"] is None


def test_processor_hook(tmp_path):
    """With the SentencePiece file, the folder gets big_vision's PaliGemma processor."""
    import io

    import sentencepiece as spm

    from big_vision_hf.conversion.convert_paligemma import save_paligemma_processor
    from big_vision_hf.processing.processing_paligemma import BvPaliGemmaProcessor
    from big_vision_hf.processing.tokenization_paligemma import LOC_TOKENS, SEG_TOKENS

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(["caption en", "a cat on a mat", "answer en what is it?"] * 20), model_writer=buf,
        vocab_size=1152 + 256 + 60, model_type="bpe", pad_id=0, eos_id=1, bos_id=2, unk_id=3, bos_piece="<bos>",
        eos_piece="<eos>", user_defined_symbols=["\n"] + LOC_TOKENS + SEG_TOKENS, byte_fallback=True,
        hard_vocab_limit=False, minloglevel=2)
    (tmp_path / "tokenizer.model").write_bytes(buf.getvalue())
    rows = len(spm.SentencePieceProcessor(model_proto=buf.getvalue()))
    shapes = paligemma_param_shapes({"width": 16, "depth": 1, "mlp_dim": 32, "num_heads": 2, "num_kv_heads": 1,
                                     "head_dim": 8}, 28, "Ti/14", vocab_size=rows)
    params = {k: LazyArray(s, "float32", lambda: None, k, k) for k, s in shapes.items()}
    config = build_paligemma(params, {"llm": {"variant": {"width": 16, "depth": 1, "mlp_dim": 32,
                                                          "num_heads": 2, "num_kv_heads": 1, "head_dim": 8},
                                              "vocab_size": rows}}).config
    save_paligemma_processor(str(tmp_path / "out"), config, str(tmp_path / "tokenizer.model"))
    processor = BvPaliGemmaProcessor.from_pretrained(str(tmp_path / "out"))
    assert processor.image_seq_length == 4 and processor.image_token_id == config.image_token_index == rows

