"""UViM (``proj.uvim.vit`` stage I VQ-VAE, ``proj.uvim.vtt`` stage II): parity with the original big_vision code
through the user path, generation, the task helpers and metrics, the folders, bad inputs, and Trainer fine-tuning.

Fixtures made by the ORIGINAL code: the refharness goldens ``uvim_vqvae`` (``params/`` + ``state/`` layout) and
``uvim_vtt``; ``uvim_variants/`` (``make_uvim_variants.py``): two more VQ-VAE configs (resize vs learned bottleneck,
sincos vs learned posembs, encoder/decoder context, a depth and a colour target, ``decode`` from codes), one run
with ``quantize=False`` and with ``zero_decoder_seq=True``, a sincos VTT, a ``zero_decoder_seq`` VTT, big_vision's
cached greedy decode (``uvim/decode.py`` as ``train.py`` calls it), the two-stage panoptic ``predict_fn``, the goldens
with bf16-rounded parameters, and the pp / evaluator ops.

Path: npz -> ``big-vision-hf convert`` (in-process CLI) -> folder -> ``AutoModel*.from_pretrained`` -> forward.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoModelForImageTextToText, Trainer, TrainingArguments
from transformers.utils import logging as hf_logging

import big_vision_hf  # noqa: F401  registers the Auto classes
from big_vision_hf.configuration.configuration_bv_uvim import (
    BvUViMVQVAEConfig,
    BvUViMVTTConfig,
    bv_vqvae_kwargs_to_config,
    bv_vtt_kwargs_to_config,
)
from big_vision_hf.conversion import CheckpointError, convert_checkpoint
from big_vision_hf.conversion.checkpoint import read_checkpoint
from big_vision_hf.conversion.families import detect_family
from big_vision_hf.conversion.zoo import ZOO, find_entry
from big_vision_hf.modeling.modeling_bv_uvim import (
    BvUViMVQVAEModel,
    BvUViMVTTForConditionalGeneration,
    BvUViMVTTModel,
    shift_right,
)
from big_vision_hf.modeling.modeling_bv_vit import BvViTModel
from big_vision_hf.processing import uvim_metrics, uvim_tasks
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
STAGE_I, STAGE_II = "proj.uvim.vit", "proj.uvim.vtt"
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread (conftest)


def _unprefixed(arrays):
    """``params/x`` -> ``x`` (the tree at the top level), ``state/`` kept."""
    return {k[len("params/"):] if k.startswith("params/") else k: v for k, v in arrays.items()}


def _convert(tmp_path, params: str, g: Golden, auto=AutoModel, name: str = "converted"):
    out = tmp_path / name
    convert_cli(params, str(out), "--model-config", json.dumps(g.model_kwargs))
    return auto.from_pretrained(str(out)).eval(), out


def _noise(tensor: torch.Tensor) -> torch.Tensor:
    """Random noise of the tensor's scale (a constant shift can be invisible: LayerNorm removes it)."""
    generator = torch.Generator().manual_seed(tensor.numel())
    return torch.randn(tensor.shape, generator=generator) * (0.5 * tensor.abs().mean() + 0.1)


def _vqvae_inputs(g: Golden):
    x = {k[2:]: torch.from_numpy(v) for k, v in g.inputs.items() if k.startswith("x/")}
    return x, g.image_nchw("ctx")


def _vqvae_errors(model, g: Golden, prefix: str = "") -> dict[str, float]:
    x, ctx = _vqvae_inputs(g)
    with torch.no_grad():
        out = model(inputs=x, pixel_values=ctx)
    assert out.code.dtype == torch.long
    np.testing.assert_array_equal(out.code.numpy(), g.outputs[prefix + "code"])  # codes identical
    errors = {f"logits/{k}": max_abs_err(v, g.outputs[f"{prefix}logits/{k}"]) for k, v in out.logits.items()}
    errors["bottleneck"] = max_abs_err(out.bottleneck, g.outputs[prefix + "bottleneck"])
    errors["bottleneck_q"] = max_abs_err(out.bottleneck_q, g.outputs[prefix + "bottleneck_q"])
    errors.update({f"stem/{k}": max_abs_err(v, g.outputs[f"{prefix}stem/{k}"])
                   for k, v in out.target_embeddings.items()})
    return errors


# ---------------------------------------------------------------------------------------------------------
# Stage I: the VQ-VAE
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["params+state", "unprefixed", "bf16"])
def test_vqvae_parity_through_cli(tmp_path, layout):
    """Golden ``uvim_vqvae`` (``params/`` + ``state/``, as big_vision saves it), the tree without the prefix, and a
    bf16 file (against big_vision run with the bf16-rounded parameters and codebook)."""
    g = Golden("uvim_vqvae")
    params = {"params+state": lambda a: a, "unprefixed": _unprefixed, "bf16": bfloat16_void}[layout]
    model, folder = _convert(tmp_path, rewrite_npz(g.params, str(tmp_path / "p.npz"), params), g)
    assert isinstance(model, BvUViMVQVAEModel) and model.dtype == torch.float32
    config = json.loads((folder / "config.json").read_text())
    assert config["bv_model_name"] == STAGE_I and config["auto_map"]["AutoModel"] == "modeling_bv_uvim.BvUViMVQVAEModel"
    if layout == "bf16":
        ref = Golden("uvim_variants/bf16")
        ref.inputs = g.inputs
        ref.outputs = {k[len("uvim_vqvae/"):]: v for k, v in ref.outputs.items() if k.startswith("uvim_vqvae/")}
        x, ctx = _vqvae_inputs(g)
        with torch.no_grad():
            assert max_abs_err(model(inputs=x, pixel_values=ctx).logits["semantics"],
                               g.outputs["logits/semantics"]) > 1e-3  # really went through bf16
        g = ref
    assert_max_abs_errors(f"uvim_vqvae {layout}", _vqvae_errors(model, g), TOL)


@pytest.mark.parametrize("name", ["vqvae_depth", "vqvae_learned"])
def test_vqvae_variants_parity(tmp_path, name):
    """A depth VQ-VAE (6x6 patches resized to 4x4 codes, sincos posembs, decoder context only, ``codeword_dim``
    None, ``decode`` from given codes incl. -1) and a colour one (learned bottleneck matrices, encoder context only,
    saved without the ``params/`` prefix)."""
    g = Golden(f"uvim_variants/{name}")
    model, _ = _convert(tmp_path, g.params, g)
    errors = _vqvae_errors(model, g)
    if "codes" in g.inputs:
        with torch.no_grad():
            decoded = model.decode(torch.from_numpy(g.inputs["codes"]), pixel_values=g.image_nchw("ctx"))
        errors.update({f"decoded/{k}": max_abs_err(v, g.outputs[f"decoded/{k}"]) for k, v in decoded.items()})
    assert_max_abs_errors(name, errors, TOL)


@pytest.mark.parametrize("variant", ["noquant", "zero_seq"])
def test_vqvae_flags_parity(tmp_path, variant):
    """big_vision's stage I flags on one random VQ-VAE (colour target, encoder and decoder context):
    ``quantize=False`` (the decoder gets the unquantised bottleneck; codes still computed) and
    ``zero_decoder_seq=True`` (the decoder sees zeros: only its stem bias, posembs and the context), through the CLI,
    and ``decode`` from given codes (incl. -1)."""
    g = Golden("uvim_variants/vqvae_flags")
    g.config["model_kwargs"] = {**g.model_kwargs, **g.config["variants"][variant]}
    model, folder = _convert(tmp_path, g.params, g)
    for key, value in g.config["variants"][variant].items():
        assert json.loads((folder / "config.json").read_text())[key] == value
    errors = _vqvae_errors(model, g, f"{variant}/")
    with torch.no_grad():
        decoded = model.decode(torch.from_numpy(g.inputs["codes"]), pixel_values=g.image_nchw("ctx"))
    errors.update({f"decoded/{k}": max_abs_err(v, g.outputs[f"{variant}/decoded/{k}"]) for k, v in decoded.items()})
    assert_max_abs_errors(f"vqvae_flags {variant}", errors, TOL)


def test_vqvae_old_module_names(tmp_path):
    """``uvim/vit.py load``: pre-Linen names and the old ``Encoder``/``Decoder`` modules give the same model."""
    g = Golden("uvim_vqvae")

    def old(arrays):
        out = {}
        for k, v in _unprefixed(arrays).items():
            k = k.replace("encoder/", "Encoder/", 1) if k.startswith("encoder/") else k
            out[k.replace("decoder/", "Decoder/", 1) if k.startswith("decoder/") else k] = v
        return out

    model = convert_checkpoint(rewrite_npz(g.params, str(tmp_path / "old.npz"), old), STAGE_I, g.model_kwargs)
    assert_max_abs_errors("uvim_vqvae old names", _vqvae_errors(model, g), TOL)


def test_reader_keeps_the_state_collection(tmp_path):
    """``params/`` is stripped, ``state/`` kept beside it (the VQ codebook), an optimizer state still dropped."""
    g = Golden("uvim_vqvae")
    path = rewrite_npz(g.params, str(tmp_path / "full.npz"),
                       lambda a: {**a, "opt/0/mu/encoder_head/kernel": np.zeros((48, 32), np.float32)})
    names = set(read_checkpoint(path))
    assert {"state/dictionary", "state/counts", "encoder_head/kernel"} <= names
    assert not any(n.startswith(("params/", "opt/")) for n in names)


def test_vqvae_every_parameter_matters():
    """Each tensor of the converted VQ-VAE, perturbed, changes its outputs (the fixtures are random everywhere).
    Exempt: attention key biases (softmax ignores a per-query constant) and ``counts``, which only scale whole
    codewords before big_vision's L2 normalisation (only their sign could matter)."""
    for name in ("uvim_vqvae", "uvim_variants/vqvae_depth", "uvim_variants/vqvae_learned"):
        g = Golden(name)
        model = convert_checkpoint(g.params, STAGE_I, g.model_kwargs).eval()
        x, ctx = _vqvae_inputs(g)

        def run():
            with torch.no_grad():
                out = model(inputs=x, pixel_values=ctx)
            return torch.cat([out.bottleneck.flatten(), *[v.flatten() for v in out.logits.values()]])

        base, state = run(), {k: v.clone() for k, v in model.state_dict().items()}
        ignored = [k for k in state if k.endswith("k_proj.bias") or k == "counts"]
        for key in state:
            if key in ignored:
                continue
            model.state_dict()[key].add_(_noise(state[key]))
            assert not torch.allclose(run(), base, atol=1e-6), f"{name}: {key} has no effect"
            model.state_dict()[key].copy_(state[key])


# ---------------------------------------------------------------------------------------------------------
# Stage II: the VTT
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["as_saved", "params-prefix", "bf16"])
def test_vtt_parity_through_cli(tmp_path, layout):
    """Golden ``uvim_vtt``: teacher-forced logits (``labels`` shifted right with 0) and the image tokens."""
    g = Golden("uvim_vtt")
    params = {"as_saved": lambda a: a, "params-prefix": params_prefixed,
              "bf16": lambda a: params_prefixed(bfloat16_void(a))}[layout]
    model, folder = _convert(tmp_path, rewrite_npz(g.params, str(tmp_path / "p.npz"), params), g,
                             AutoModelForImageTextToText)
    assert isinstance(model, BvUViMVTTForConditionalGeneration)
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForImageTextToText"] == "modeling_bv_uvim.BvUViMVTTForConditionalGeneration"
    assert "UViMPipeline" in (folder / "README.md").read_text()  # the family's card usage
    image, text = g.image_nchw(), torch.from_numpy(g.inputs["text"]).long()
    with torch.no_grad():
        out = model(pixel_values=image, labels=text)
    expected = g.outputs["logits"]
    if layout == "bf16":
        assert max_abs_err(out.logits, expected) > 1e-3  # really went through bf16
        expected = Golden("uvim_variants/bf16").outputs["uvim_vtt/logits"]
    errors = {"logits": max_abs_err(out.logits, expected)}
    if layout != "bf16":
        errors["encoded"] = max_abs_err(out.encoder_last_hidden_state, g.outputs["encoded"])
    assert_max_abs_errors(f"uvim_vtt {layout}", errors, TOL)
    # the base model (AutoModel) from the same folder: the decoder's states under the LogitsDense
    base = AutoModel.from_pretrained(str(folder)).eval()
    assert isinstance(base, BvUViMVTTModel)
    with torch.no_grad():
        hidden = base(image, decoder_input_ids=shift_right(text)).last_hidden_state
    torch.testing.assert_close(model.lm_head(hidden), out.logits)


@pytest.mark.parametrize("name", ["vtt_sincos", "vtt_zero_seq"])
def test_vtt_variants_parity(tmp_path, name):
    """sincos2d posembs; ``zero_decoder_seq=True`` (the decoder's token embeddings zeroed)."""
    g = Golden(f"uvim_variants/{name}")
    model, _ = _convert(tmp_path, g.params, g, AutoModelForImageTextToText)
    with torch.no_grad():
        out = model(pixel_values=g.image_nchw(), labels=torch.from_numpy(g.inputs["text"]).long())
    assert_max_abs_errors(name, {"logits": max_abs_err(out.logits, g.outputs["logits"]),
                                 "encoded": max_abs_err(out.encoder_last_hidden_state, g.outputs["encoded"])}, TOL)


def _uncached_greedy(model, image, length):
    """Step by step, the whole prefix re-run each time (no cache), argmax of the last position."""
    tokens = torch.zeros(image.shape[0], 1, dtype=torch.long)
    with torch.no_grad():
        encoded = model.get_encoder()(image)
        for _ in range(length):
            logits = model(encoder_outputs=encoded, decoder_input_ids=tokens, use_cache=False).logits
            tokens = torch.cat([tokens, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return tokens


@pytest.mark.parametrize("name, params", [("vtt_greedy", "uvim_vtt"), ("vtt_sincos", "uvim_variants/vtt_sincos"),
                                          ("vtt_zero_seq", "uvim_variants/vtt_zero_seq")])
def test_vtt_greedy_generate(name, params):
    """``generate()`` (KV cache) = big_vision's cached greedy decode (``temperature_sampling(temperature=1e-7,
    eos_token=-1)``) = a step-by-step uncached argmax decode; the cached step logits = the teacher-forced ones."""
    g, p = Golden(f"uvim_variants/{name}"), Golden(params)
    model = convert_checkpoint(p.params, STAGE_II, p.model_kwargs).eval()
    image = g.image_nchw()
    out = model.generate(pixel_values=image, output_logits=True, return_dict_in_generate=True)
    tokens = out.sequences
    length = model.config.max_position_embeddings
    assert tokens.shape == (2, 1 + length) and (tokens[:, 0] == 0).all()
    np.testing.assert_array_equal(tokens[:, 1:].numpy(), g.outputs["greedy/tokens"])
    np.testing.assert_array_equal(tokens.numpy(), _uncached_greedy(model, image, length).numpy())
    with torch.no_grad():
        forced = model(pixel_values=image, labels=tokens[:, 1:]).logits
    cached = torch.stack(out.logits, dim=1)
    errors = {"cached vs teacher-forced": max_abs_err(cached, forced.numpy())}
    if "greedy/teacher_forced_logits" in g.outputs:
        errors["teacher-forced vs big_vision"] = max_abs_err(forced, g.outputs["greedy/teacher_forced_logits"])
    assert_max_abs_errors(f"{name} greedy", errors, TOL)


def _tiny_vtt(vocab=80, length=6, seed=0):
    torch.manual_seed(seed)
    config = BvUViMVTTConfig(
        vision_config={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
                       "patch_size": 8, "image_size": 16, "posemb": "learn"},
        vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=length, posemb="learn")
    model = BvUViMVTTForConditionalGeneration(config).eval()
    with torch.no_grad():  # LogitsDense is zero-initialised (big_vision): make the logits non-trivial
        model.lm_head.weight.normal_(0, 0.5)
    return model


def test_vtt_sampling_options():
    """big_vision's ``temperature_sampling`` options through ``generate``: no top-k unless asked (transformers would
    default to 50), ``top_k=K`` keeps K candidates, ``top_k=1`` and ``temperature=1e-7`` are greedy."""
    model = _tiny_vtt()
    image = torch.randn(3, 3, 16, 16)
    greedy = model.generate(pixel_values=image)
    torch.manual_seed(0)
    full = model.generate(pixel_values=image, do_sample=True, output_scores=True, return_dict_in_generate=True)
    assert all(torch.isfinite(s).all() for s in full.scores)  # 80 candidates: no top-50 cut
    top3 = model.generate(pixel_values=image, do_sample=True, top_k=3, output_scores=True,
                          return_dict_in_generate=True)
    assert all((torch.isfinite(s).sum(-1) == 3).all() for s in top3.scores)
    np.testing.assert_array_equal(model.generate(pixel_values=image, do_sample=True, top_k=1).numpy(), greedy.numpy())
    cold = model.generate(pixel_values=image, do_sample=True, temperature=1e-7)
    np.testing.assert_array_equal(cold.numpy(), greedy.numpy())
    torch.manual_seed(1)
    a = model.generate(pixel_values=image, do_sample=True, temperature=2.0)
    torch.manual_seed(1)
    np.testing.assert_array_equal(model.generate(pixel_values=image, do_sample=True, temperature=2.0).numpy(),
                                  a.numpy())


def test_vtt_every_parameter_matters():
    g = Golden("uvim_vtt")
    model = convert_checkpoint(g.params, STAGE_II, g.model_kwargs).eval()
    image, text = g.image_nchw(), torch.from_numpy(g.inputs["text"]).long()

    def run():
        with torch.no_grad():
            return model(pixel_values=image, labels=text).logits

    base, state = run(), {k: v.clone() for k, v in model.state_dict().items()}
    for key in state:
        if key.endswith("k_proj.bias"):  # softmax ignores a per-query constant
            continue
        model.state_dict()[key].add_(_noise(state[key]))
        assert not torch.allclose(run(), base, atol=1e-6), f"{key} has no effect"
        model.state_dict()[key].copy_(state[key])


def test_vtt_encoder_is_a_vit():
    """The image encoder is big_vision's plain ViT (``vit.Encoder`` + ``EmbedPatches``): our `BvViTModel`, which a
    ViT checkpoint initialises as ``vtt.load(init_files={"encoder": ...})`` does."""
    g = Golden("uvim_vtt")
    model = convert_checkpoint(g.params, STAGE_II, g.model_kwargs).eval()
    encoder = model.get_encoder()
    assert isinstance(encoder, BvViTModel) and encoder.config.pool_type == "none"
    with torch.no_grad():
        encoded = encoder(g.image_nchw()).last_hidden_state
    assert max_abs_err(encoded, g.outputs["encoded"]) <= TOL


def test_vtt_trainer_loss_goes_down(tmp_path):
    """Fine-tune stage II with ``Trainer`` on synthetic data: the codes are a function of the image (which quadrant
    is bright), as stage II learns image -> guide codes."""
    model = _tiny_vtt(vocab=9, length=4, seed=1)
    model.train()
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(64):
        quadrant = int(rng.integers(4))
        image = np.full((3, 16, 16), -1.0, np.float32)
        image[:, (quadrant // 2) * 8:(quadrant // 2 + 1) * 8, (quadrant % 2) * 8:(quadrant % 2 + 1) * 8] = 1.0
        codes = np.array([quadrant + 1, 8 - quadrant, (quadrant * 3) % 8 + 1, 5])  # tokens = codes + 1, never 0
        rows.append({"pixel_values": torch.from_numpy(image), "labels": torch.from_numpy(codes)})
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=40,
                             learning_rate=1e-3, logging_steps=5, report_to=[], save_strategy="no",
                             remove_unused_columns=False, use_cpu=True, disable_tqdm=True, seed=0)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        trainer = Trainer(model=model, args=args, train_dataset=rows)
        trainer.train()
    finally:
        hf_logging.set_verbosity(verbosity)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses[-1] < 0.3 * losses[0], losses
    model.eval()
    batch = torch.stack([r["pixel_values"] for r in rows[:8]])
    predicted = model.generate(pixel_values=batch)[:, 1:]
    assert (predicted == torch.stack([r["labels"] for r in rows[:8]])).float().mean() > 0.5


# ---------------------------------------------------------------------------------------------------------
# Both stages: the tasks, the pipelines, the metrics
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def panoptic_stages():
    vqvae, vtt = Golden("uvim_vqvae"), Golden("uvim_variants/vtt_sincos")
    return (convert_checkpoint(vqvae.params, STAGE_I, vqvae.model_kwargs).eval(),
            convert_checkpoint(vtt.params, STAGE_II, vtt.model_kwargs).eval())


def test_panoptic_pipeline_matches_big_vision_predict_fn(panoptic_stages):
    """``train.py predict_fn``: greedy codes -> ``code - 1`` -> VQ-VAE decode with the image -> panoptic map; and
    ``encode_labels`` (stage II targets) of label maps."""
    stage1, stage2 = panoptic_stages
    g = Golden("uvim_variants/panoptic_pipeline")
    pipe = uvim_tasks.UViMPipeline.for_models(stage1, stage2)
    assert isinstance(pipe, uvim_tasks.UViMPanopticPipeline)
    image = g.image_nchw()
    codes = pipe.generate_codes(image)
    np.testing.assert_array_equal(codes.numpy() + 1, g.outputs["tokens"])
    panoptic = np.stack([o["panoptic"] for o in pipe.postprocess(pipe.decode(codes, image))])
    np.testing.assert_array_equal(panoptic, g.outputs["panoptic"])
    inputs = uvim_tasks.panoptic_inputs(g.inputs["labels"], stage1.config)
    np.testing.assert_array_equal(uvim_tasks.stage2_labels(stage1, inputs, image).numpy(), g.outputs["encode_labels"])


def test_pipeline_on_images(panoptic_stages):
    """Images of any size in, maps at each image's size out (``jax.image.resize`` nearest, as the evaluators)."""
    stage1, stage2 = panoptic_stages
    pipe = uvim_tasks.UViMPipeline.for_models(stage1, stage2)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40, 50, 3), dtype=np.uint8), rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)]
    out = pipe(images)
    assert [o["panoptic"].shape for o in out] == [(40, 50, 2), (32, 32, 2)]
    assert out[1]["codes"].shape == (stage1.config.code_len,)
    small = pipe(images[1], resize_to_input=False)[0]
    np.testing.assert_array_equal(small["panoptic"], out[1]["panoptic"])  # 32 px is the models' resolution
    with pytest.raises(ValueError, match="depth VQ-VAE"):
        uvim_tasks.UViMDepthPipeline(stage1, stage2)


def test_depth_and_color_task_ops_match_big_vision():
    """``depth_task`` / ``colorization_task`` ``input_pp`` and ``predict_outputs`` on the fixtures' maps."""
    g = Golden("uvim_variants/vqvae_depth")
    config = BvUViMVQVAEConfig(**bv_vqvae_kwargs_to_config(g.model_kwargs))
    inputs = uvim_tasks.depth_inputs(g.inputs["depth_map"], config, g.config["min_depth"], g.config["max_depth"])
    np.testing.assert_array_equal(inputs["depth"].numpy(), g.inputs["x/depth"])
    depth = uvim_tasks.depth_from_logits({"depth": torch.from_numpy(g.outputs["logits/depth"])}, config)
    np.testing.assert_array_equal(depth.numpy(), g.outputs["predict/depth"])
    g = Golden("uvim_variants/vqvae_learned")
    config = BvUViMVQVAEConfig(**bv_vqvae_kwargs_to_config(g.model_kwargs))
    np.testing.assert_array_equal(uvim_tasks.color_inputs(g.inputs["color_image"], config)["color"].numpy(),
                                  g.inputs["x/color"])
    color = uvim_tasks.color_from_logits({"color": torch.from_numpy(g.outputs["logits/color"])}, config)
    np.testing.assert_array_equal(color.numpy(), g.outputs["predict/color"])
    # the patch layout round-trips
    x = torch.arange(2 * 32 * 32 * 3).reshape(2, 32, 32, 3)
    torch.testing.assert_close(uvim_tasks.from_patches(uvim_tasks.to_patches(x, (8, 8)), (4, 4), (8, 8)), x)


def test_image_ops_and_metrics_match_big_vision():
    """``rgb_to_grayscale_to_rgb`` (TF), ``jax.image.resize`` nearest, the NYU depth metrics and PSNR."""
    g = Golden("uvim_variants/ops")
    np.testing.assert_array_equal(uvim_tasks.rgb_to_grayscale_to_rgb(g.inputs["rgb"]), g.outputs["gray"])
    np.testing.assert_array_equal(np.stack([uvim_tasks.resize_nearest(m, (13, 5)) for m in g.inputs["labels"]]),
                                  g.outputs["nearest_13x5"])
    metrics = uvim_metrics.depth_metrics(g.inputs["depth_pred"], g.inputs["depth_gt"])
    for key, value in metrics.items():
        assert value == pytest.approx(float(g.outputs[f"depth/{key}"]), rel=1e-6), key
    np.testing.assert_allclose(uvim_metrics.psnr(g.inputs["psnr_a"], g.inputs["psnr_b"]), g.outputs["psnr"],
                               rtol=1e-5)


def test_panoptic_quality():
    """panopticapi's PQ on UViM's two-channel maps, on hand-computed cases."""
    target = np.zeros((1, 4, 4, 2), np.int64)
    target[0, :, :2] = (1, 0)  # a thing: class 1, instance 0 (8 px)
    target[0, :, 2:] = (81, 0)  # stuff: class 81 (8 px)
    perfect = uvim_metrics.panoptic_quality(target, target)
    assert perfect["All_pq"] == perfect["All_sq"] == perfect["All_rq"] == 1.0 and perfect["All_n"] == 2
    pred = target.copy()
    pred[0, 0, :2] = (0, 0)  # 2 px of the thing predicted void: they stay in the union (IoU 6/8)
    pred[0, :, 2:, 1] = [[3, 4]] * 4  # stuff instance ids are ignored: still one segment
    scores = uvim_metrics.panoptic_quality(pred, target)
    assert scores["All_rq"] == 1.0 and scores["All_pq"] == pytest.approx((6 / 8 + 1.0) / 2)
    assert scores["Things_pq"] == pytest.approx(6 / 8) and scores["Stuff_pq"] == 1.0
    pred = target.copy()
    pred[0, :, 0] = (1, 7)  # the thing split in two instances of 4 px: no match (IoU 1/2), 1 FN + 2 FP
    scores = uvim_metrics.panoptic_quality(pred, target)
    assert scores["Things_pq"] == 0.0 and scores["Things_rq"] == 0.0
    void_target = target.copy()
    void_target[0, :, 2:] = (0, 0)  # ground-truth void: a prediction there is neither a match nor a FP
    scores = uvim_metrics.panoptic_quality(target, void_target)
    assert scores["All_pq"] == 1.0 and scores["All_n"] == 1
    crowd = np.zeros((1, 4, 4), bool)
    crowd[0, :, :2] = True  # the thing is a crowd region: ignored, and so is a prediction on it
    assert uvim_metrics.panoptic_quality(target, target, crowd=crowd)["Things_n"] == 0
    with pytest.raises(ValueError, match="unknown semantic classes"):
        uvim_metrics.panoptic_quality(np.full((1, 2, 2, 2), 200), target[:, :2, :2])


# ---------------------------------------------------------------------------------------------------------
# Folders: remote code, zoo, model cards
# ---------------------------------------------------------------------------------------------------------


def test_folders_load_without_the_package(tmp_path):
    """Both converted folders load with ``trust_remote_code=True`` where big_vision_hf cannot be imported."""
    vq, vt = Golden("uvim_vqvae"), Golden("uvim_vtt")
    _, vq_folder = _convert(tmp_path, vq.params, vq, name="stage1")
    vtt, vt_folder = _convert(tmp_path, vt.params, vt, AutoModelForImageTextToText, name="stage2")
    body = f"""
from transformers import AutoModel, AutoModelForImageTextToText
vq = AutoModel.from_pretrained({str(vq_folder)!r}, trust_remote_code=True).eval()
vt = AutoModelForImageTextToText.from_pretrained({str(vt_folder)!r}, trust_remote_code=True).eval()
x = {{"semantics": torch.from_numpy(inputs["semantics"]), "instances": torch.from_numpy(inputs["instances"])}}
ctx = torch.from_numpy(inputs["ctx"])
with torch.no_grad():
    out = vq(inputs=x, pixel_values=ctx)
    logits = vt(pixel_values=torch.from_numpy(inputs["image"]), labels=torch.from_numpy(inputs["text"])).logits
tokens = vt.generate(pixel_values=torch.from_numpy(inputs["image"]))
outputs = {{"code": out.code, "semantics": out.logits["semantics"], "vtt_logits": logits, "tokens": tokens}}
remote = {{"vq": vq, "vt": vt}}
"""
    x, ctx = _vqvae_inputs(vq)
    got = run_without_package(tmp_path, tmp_path, body, {
        "semantics": x["semantics"].numpy(), "instances": x["instances"].numpy(), "ctx": ctx.numpy(),
        "image": vt.image_nchw().numpy(), "text": vt.inputs["text"].astype(np.int64)})
    np.testing.assert_array_equal(got["code"], vq.outputs["code"])
    np.testing.assert_array_equal(got["tokens"], vtt.generate(pixel_values=vt.image_nchw()).numpy())
    assert_max_abs_errors("uvim remote code", {
        "vqvae logits": max_abs_err(torch.from_numpy(got["semantics"]), vq.outputs["logits/semantics"]),
        "vtt logits": max_abs_err(torch.from_numpy(got["vtt_logits"]), vt.outputs["logits"])}, TOL)


def test_zoo_entries():
    """Every public UViM checkpoint: found by its file name, its big_vision config translates into a valid model
    (checked on the meta device, with the sizes of the paper's models)."""
    entries = [e for e in ZOO.values() if e.model_name in (STAGE_I, STAGE_II)]
    assert len(entries) == 6
    for e in entries:
        assert find_entry(e.filename) is e and e.url.startswith("gs://big_vision/uvim/") and e.image_size == 512
        with torch.device("meta"):
            if e.model_name == STAGE_I:
                model = BvUViMVQVAEModel(BvUViMVQVAEConfig(**bv_vqvae_kwargs_to_config(e.model_config)))
                assert model.config.task in e.name and model.config.code_len == 256
            else:
                model = BvUViMVTTForConditionalGeneration(BvUViMVTTConfig(**bv_vtt_kwargs_to_config(e.model_config)))
                assert model.config.vocab_size == 4097 and model.config.vision_config.grid_size == (32, 32)
        assert sum(p.numel() for p in model.parameters()) > 100e6


# ---------------------------------------------------------------------------------------------------------
# Bad inputs: one-line errors
# ---------------------------------------------------------------------------------------------------------


def _one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message, message
    return message


def test_stage_confusions_and_detection(tmp_path):
    vq, vt = Golden("uvim_vqvae"), Golden("uvim_vtt")
    assert detect_family(read_checkpoint(vq.params)) == STAGE_I
    assert detect_family(read_checkpoint(vt.params)) == STAGE_II
    with pytest.raises(CheckpointError) as e:
        convert_checkpoint(vq.params, STAGE_II, {})
    assert "stage I" in _one_line(e) and "--model-name proj.uvim.vit" in str(e.value)
    with pytest.raises(CheckpointError) as e:
        convert_checkpoint(vt.params, STAGE_I, {})
    assert "stage II" in _one_line(e) and "--model-name proj.uvim.vtt" in str(e.value)


def test_vqvae_without_state_or_code_len(tmp_path, capsys):
    g = Golden("uvim_vqvae")
    no_state = rewrite_npz(g.params, str(tmp_path / "no_state.npz"),
                           lambda a: {k: v for k, v in a.items() if not k.startswith("state/")})
    from big_vision_hf.cli import main

    assert main(["convert", no_state, str(tmp_path / "out"), "--model-config", json.dumps(g.model_kwargs),
                 "--quiet"]) == 2
    message = capsys.readouterr().err.strip()
    assert "\n" not in message and "state/dictionary" in message and not (tmp_path / "out").exists()
    with pytest.raises(CheckpointError) as e:  # bottleneck_resize: code_len is in no array
        convert_checkpoint(g.params, STAGE_I, {})
    assert "code_len" in _one_line(e)
    with pytest.raises(CheckpointError) as e:
        convert_checkpoint(g.params, STAGE_I, {**g.model_kwargs, "width": 64})
    assert "hidden_size=64" in _one_line(e)
    with pytest.raises(CheckpointError) as e:
        convert_checkpoint(g.params, STAGE_I, {**g.model_kwargs, "no_such_option": 1})
    assert "no_such_option" in _one_line(e)


def test_model_input_errors():
    g = Golden("uvim_vqvae")
    model = convert_checkpoint(g.params, STAGE_I, g.model_kwargs).eval()
    x, ctx = _vqvae_inputs(g)
    with pytest.raises(ValueError, match="pixel_values"):
        model(inputs=x)
    with pytest.raises(ValueError, match="targets"):
        model(inputs={"semantics": x["semantics"]}, pixel_values=ctx)
    with pytest.raises(ValueError, match=r"\[-16, 16\)"):
        model.decode(torch.full((2, 4), 16), pixel_values=ctx)
    with pytest.raises(ValueError, match="exactly one"):
        model.decode(pixel_values=ctx)
    vtt = _tiny_vtt(length=4)
    with pytest.raises(ValueError, match="4 positions"):
        vtt(pixel_values=torch.zeros(1, 3, 16, 16), labels=torch.ones(1, 5, dtype=torch.long))
