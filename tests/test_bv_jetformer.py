"""JetFormer (``proj.jetformer.jetformer`` + ``patch_pca`` + the Jet adaptor): parity with the original big_vision code
through the user path, sampling, and the training-time behaviour.

JetFormer has no public weights: the fixtures ``tests/fixtures/jetformer/<case>/`` are made by
``fixtures/jetformer/make_jetformer.py`` from big_vision's own modules with random parameters:

- ``imagenet``: class-conditional (BOI token, 2 vocabulary repeats, tied text logits), skip_pca patches, a
  channels-only Jet adaptor (ps=1), factored-out noise channels, MQA;
- ``image_text``: no BOI, untied text head, per-modality final norms, bidirectional prefix, padded text, both
  orders, multi-head attention (fused qkv einsum), a Jet mixing channel and spatial couplings;
- ``pca_multivariate``: a whitened PCA with ``depth_to_seq=2`` (read from ``pca_init_file``), no adaptor, the
  full-covariance head.

Path: npz -> ``big-vision-hf convert`` (in-process CLI) -> folder -> ``AutoModel.from_pretrained`` -> forward,
``prefill``/``extend`` and the samplers.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from transformers import AutoModel

import big_vision_hf  # noqa: F401  registers the Auto classes
from big_vision_hf import BvJetFormerModel
from big_vision_hf.conversion import CheckpointError, convert_checkpoint
from big_vision_hf.conversion.api import detect_family
from big_vision_hf.conversion.checkpoint import read_checkpoint
from big_vision_hf.modeling.modeling_bv_givt import BvCFGDensity, BvGaussianMixture
from conftest import (
    FIXTURES,
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
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster on a loaded machine
CASES = ["imagenet", "image_text", "pca_multivariate"]


def _golden(case: str) -> Golden:
    return Golden(os.path.join("jetformer", case))


def _kwargs(g: Golden) -> dict:
    """The fixture's big_vision kwargs, with ``pca_init_file`` pointing at the fixture's PCA file."""
    kwargs = g.model_kwargs
    if "pca_init_file" in kwargs.get("patch_pca", {}):
        kwargs["patch_pca"] = {**kwargs["patch_pca"], "pca_init_file": os.path.join(g.dir, "pca.npz")}
    return kwargs


def _convert(g: Golden, params: str, folder) -> BvJetFormerModel:
    convert_cli(params, str(folder), "--model-name", "proj.jetformer.jetformer", "--model-config",
                json.dumps(_kwargs(g)))
    return AutoModel.from_pretrained(str(folder)).eval()


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(a))


def _forward(model: BvJetFormerModel, g: Golden, **kwargs):
    x = g.inputs
    with torch.no_grad():
        return model(_t(x["text"]).long(), pixel_values=g.image_nchw(), text_first_mask=_t(x["text_first_mask"]),
                     text_attention_mask=_t(x["text_mask"]), text_loss_mask=_t(x["text_loss"]), **kwargs)


def _errors(model: BvJetFormerModel, g: Golden, outputs: dict | None = None, full: bool = True) -> dict[str, float]:
    ref = g.outputs if outputs is None else outputs
    out = _forward(model, g, output_hidden_states=full)
    with torch.no_grad():
        tokens, logdet = model.encode_images(g.image_nchw())
        images = model.decode_latents(_t(ref["decode/latents"]))
    errors = {
        "text_logits": max_abs_err(out.text_logits, ref["text_logits"]),
        "image_logits": max_abs_err(out.image_logits, ref["image_logits"]),
        "image_nll": max_abs_err(out.image_nll, ref["loss/nll_image_tokens"]),
        "text_nll": max_abs_err(out.text_nll, ref["loss/nll_text_tokens"]),
        "nll_image": max_abs_err(out.nll_image, ref["loss/nll_image"]),
        "loss": max_abs_err(out.loss, ref["loss/loss"]),
        "adaptor_z": max_abs_err(tokens, ref["adaptor/z"]),
        "adaptor_logdet": max_abs_err(logdet, ref["adaptor/logdet"]),
        "decoded_images": max_abs_err(images.permute(0, 2, 3, 1), ref["decode/images"]),
    }
    if full:
        errors.update({
            "nll_text": max_abs_err(out.nll_text, ref["loss/nll_text"]),
            "logdet": max_abs_err(out.logdet, ref["loss/logdet"]),
            "image_latents": max_abs_err(out.image_latents, ref["image_tokens"]),
            "pre_logits": max_abs_err(out.last_hidden_state, ref["decoder/pre_logits"]),
        })
        for i in range(model.config.num_hidden_layers):
            errors[f"block{i:02}_rep"] = max_abs_err(out.hidden_states[i + 1], ref[f"decoder/block{i:02}_rep"])
    return errors


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict[str, BvJetFormerModel]:
    """Each fixture through the CLI into a folder, loaded back with ``AutoModel``."""
    tmp = tmp_path_factory.mktemp("jetformer")
    return {case: _convert(_golden(case), _golden(case).params, tmp / case) for case in CASES}


@pytest.mark.parametrize("case", CASES)
def test_jetformer_parity_through_cli(converted, case):
    g, model = _golden(case), converted[case]
    assert isinstance(model, BvJetFormerModel) and model.config.bv_model_name == "proj.jetformer.jetformer"
    assert_max_abs_errors(f"jetformer/{case} fp32", _errors(model, g), TOL)
    drop = _forward(model, g, drop_prefix=_t(g.outputs["drop/drop_prefix"]))  # CFG's unconditional embedding
    with torch.no_grad():
        out = _forward(model, g)
        tempered = model.image_distribution(out.image_logits, 0.9, 1.2).log_prob(out.image_latents)
    assert_max_abs_errors(f"jetformer/{case} drop_prefix, temperatures", {
        "drop_text_logits": max_abs_err(drop.text_logits, g.outputs["drop/text_logits"]),
        "drop_image_logits": max_abs_err(drop.image_logits, g.outputs["drop/image_logits"]),
        "tempered_log_prob": max_abs_err(tempered, g.outputs["pdf_t/log_prob"]),
    }, TOL)


def test_jetformer_folder_contents(converted, tmp_path):
    g = _golden("imagenet")
    folder = tmp_path / "imagenet"
    convert_cli(g.params, str(folder), "--model-name", "proj.jetformer.jetformer", "--model-config",
                json.dumps(_kwargs(g)))
    config = json.load(open(folder / "config.json"))
    assert config["model_type"] == "bv_jetformer" and config["jet_config"]["model_type"] == "bv_jet"
    assert config["auto_map"]["AutoModel"] == "modeling_bv_jetformer.BvJetFormerModel"
    for name in ("modeling_bv_jetformer.py", "modeling_bv_jet.py", "modeling_bv_givt.py", "README.md"):
        assert (folder / name).exists(), name
    assert "model.generate_images(" in (folder / "README.md").read_text()
    pp = json.load(open(folder / "preprocessor_config.json"))
    assert pp["resize_mode"] == "resize_small" and pp["resize_method"] == "bicubic" and pp["resize_antialias"]
    assert detect_family(read_checkpoint(g.params)) == "proj.jetformer.jetformer"


def _unscanned(arrays: dict) -> dict:
    """``scan=False`` layout: ``decoder/layers/X [N, ...]`` -> ``decoder/layers/{i}/X``."""
    out = {}
    for k, v in arrays.items():
        if k.startswith("decoder/layers/"):
            for i in range(v.shape[0]):
                out[f"decoder/layers/{i}/{k[len('decoder/layers/'):]}"] = v[i]
        else:
            out[k] = v
    return out


@pytest.mark.parametrize("case,layout", [("imagenet", "params/"), ("image_text", "params/"),
                                         ("image_text", "scan=False"), ("pca_multivariate", "params/")])
def test_jetformer_other_layouts(case, layout, tmp_path):
    g = _golden(case)
    fn = params_prefixed if layout == "params/" else _unscanned
    params = rewrite_npz(g.params, str(tmp_path / "rewritten.npz"), fn)
    assert_max_abs_errors(f"jetformer/{case} {layout}", _errors(_convert(g, params, tmp_path / "out"), g), TOL)


@pytest.mark.parametrize("case", CASES)
def test_jetformer_bfloat16_checkpoint(case, tmp_path):
    """The parameters stored as bfloat16 (big_vision's V2 layout) against big_vision's outputs for those values."""
    g = _golden(case)
    params = rewrite_npz(g.params, str(tmp_path / "bf16.npz"), bfloat16_void)
    model = _convert(g, params, tmp_path / "out")
    ref = torch.from_numpy(np.load(g.params)["EmbedImage/kernel"].T.copy())
    assert torch.equal(model.embed_image.weight, ref.bfloat16().float()) and not torch.equal(model.embed_image.weight,
                                                                                             ref)
    bf16 = dict(np.load(os.path.join(g.dir, "outputs_bf16.npz")))
    assert_max_abs_errors(f"jetformer/{case} bf16", _errors(model, g, bf16, full=False), TOL)


# ---- sampling -------------------------------------------------------------------------------------------------


def _replay_image(model, text, text_mask, tokens, cfg: bool):
    """big_vision's sampled tokens fed back through ``prefill``/``extend``: the heads' inputs at every step."""
    batch = text.shape[0]
    drop = None
    if cfg:  # [x, x_uncond, y, y_uncond]
        text, text_mask, tokens = (a.repeat_interleave(2, 0) for a in (text, text_mask, tokens))
        drop = torch.tensor([False, True]).repeat(batch)
    empty = torch.zeros(text.shape[0], 0, model.config.out_dim)
    x, attn, mask = model.embed_inputs(text.long(), empty, torch.ones(text.shape[0], dtype=torch.bool), text_mask,
                                       drop, shift=False)
    pre, state = model.prefill(x, attn, mask)
    steps = [pre] + [model.extend(model.embed_image(tokens[:, i - 1: i]), state) for i in range(1, tokens.shape[1])]
    pre = torch.cat(steps, 1)
    return pre[::2] if cfg else pre


@pytest.mark.parametrize("case", CASES)
def test_kv_cached_sampling_replays_big_vision(converted, case):
    """predict_fns.sample_image_latents: given big_vision's samples, the KV-cached prelogits at every step and the
    samples' log-probabilities under the tempered distribution are big_vision's."""
    g, model = _golden(case), converted[case]
    out = g.outputs
    with torch.no_grad():
        pre = _replay_image(model, _t(out["sample/text"]), _t(out["sample/text_mask"]), _t(out["sample/out_tokens"]),
                            cfg=False)
        logp = model.image_distribution(model.image_logits(pre), 0.9, 1.2).log_prob(_t(out["sample/out_tokens"]))
    errors = {"prelogits": max_abs_err(pre, out["sample/out_prelogits"]),
              "log_probs": max_abs_err(logp, out["sample/out_logp"])}
    if "sample_cfg/out_tokens" in out:
        with torch.no_grad():
            pre = _replay_image(model, _t(out["sample/text"]), _t(out["sample/text_mask"]),
                                _t(out["sample_cfg/out_tokens"]), cfg=True)
        errors["cfg_prelogits"] = max_abs_err(pre, out["sample_cfg/out_prelogits"])
    assert_max_abs_errors(f"jetformer/{case} sampling replay", errors, TOL)


@pytest.mark.parametrize("case", ["imagenet", "image_text"])
def test_cfg_density_matches_big_vision(converted, case):
    """parallel_decode.CFGDensity on fixed logits: the chosen component's Gaussians, the envelope factor and the
    guided log-density. big_vision drew the component with jax's RNG; it is read back from its ``loc_c``."""
    g, model = _golden(case), converted[case]
    out = g.outputs
    with torch.no_grad():
        logits = _forward(model, g).image_logits
        cond, uncond = (model.image_distribution(logits[i: i + 1, :3], 0.9, 1.0) for i in (0, 1))
        index = (cond.locs - _t(out["cfg/loc_c"])[..., None, :]).abs().amax(-1).argmin(-1)

        def one(pdf):  # the mixture restricted to that component
            pick = index[..., None, None].expand(*index.shape, 1, pdf.locs.shape[-1])
            return BvGaussianMixture(torch.zeros(*index.shape, 1), pdf.locs.gather(-2, pick),
                                     pdf.scales.gather(-2, pick))

        guided = BvCFGDensity(one(cond), one(uncond), float(out["cfg/w"]))
    errors = {k: max_abs_err(getattr(guided, k), out[f"cfg/{k}"])
              for k in ("loc_c", "scale_c", "loc_u", "scale_u", "simple_scale")}
    errors["log_prob"] = max_abs_err(guided.log_prob(_t(out["cfg/points"])), out["cfg/log_prob"])
    fac, ref = guided.fac.numpy(), out["cfg/fac"]  # exp of large log-densities: compare logs (inf where jax has inf)
    assert np.array_equal(np.isinf(fac), np.isinf(ref))
    finite = np.isfinite(ref)
    errors["log_fac"] = float(np.abs(np.log(fac[finite]) - np.log(ref[finite])).max())
    assert_max_abs_errors(f"jetformer/{case} CFG density", errors, 1e-3)


def test_text_sampling_replays_big_vision(converted):
    """predict_fns.sample_text: image prefix, a variable-length prompt (masked tail), then big_vision's tokens."""
    g, model = _golden("image_text"), converted["image_text"]
    out = g.outputs
    latents = _t(out["image_tokens"])
    with torch.no_grad():
        x, attn, mask = model.embed_inputs(_t(g.inputs["text"]).long(), latents, torch.zeros(2, dtype=torch.bool),
                                           _t(out["sample_text/prompt_mask"]), None, shift=False)
        pre, state = model.prefill(x, attn, mask)
        tokens = _t(out["sample_text/out_tokens"]).long()
        steps = [pre] + [model.extend(model.embed_tokens(tokens[:, i - 1: i]), state) for i in range(1, 4)]
        pre = torch.cat(steps, 1)
        logp = torch.log_softmax(model.text_logits(pre), -1).gather(-1, tokens[..., None])[..., 0]
    assert_max_abs_errors("jetformer/image_text text sampling replay", {
        "prelogits": max_abs_err(pre, out["sample_text/out_prelogits"]),
        "log_probs": max_abs_err(logp, out["sample_text/out_logp"])}, TOL)


def test_first_sampling_step_is_the_manual_computation(converted):
    """One step = a component from ``softmax(temperature_probs * logits)``, then ``loc + temperature * scale * eps``,
    drawn from the same generator in that order."""
    model = converted["imagenet"]
    labels = torch.tensor([[3], [7]])
    empty = torch.zeros(2, 0, model.config.out_dim)
    with torch.no_grad():
        x, attn, mask = model.embed_inputs(labels, empty, torch.ones(2, dtype=torch.bool), None, None, shift=False)
        pre, _ = model.prefill(x, attn, mask)
        tokens, logp = model.sample_image_token(pre, 0.7, 1.3, generator=torch.Generator().manual_seed(5))
        logits = model.image_logits(pre)  # [2, 1, M + 2 M d]
        m, d = model.config.num_mixtures, model.config.out_dim
        weights = torch.softmax(1.3 * logits[..., :m], -1)
        locs, raw = logits[..., m:].reshape(2, 1, m, 2, d).unbind(-2)
        scales = torch.clamp((raw + torch.sqrt(raw * raw + 4)) / 2, min=model.config.scale_tol) * 0.7
        gen = torch.Generator().manual_seed(5)
        index = torch.multinomial(weights.reshape(-1, m), 1, generator=gen).reshape(2, 1)
        eps = torch.randn(2, 1, d, generator=gen)
        pick = torch.arange(2)
        expected = locs[pick, 0, index[:, 0]][:, None] + scales[pick, 0, index[:, 0]][:, None] * eps
        comp = -0.5 * ((tokens[..., None, :] - locs) / scales) ** 2 - torch.log(scales) - 0.5 * np.log(2 * np.pi)
        expected_logp = torch.logsumexp(torch.log(weights) + comp.sum(-1), -1)
    assert torch.allclose(tokens, expected, atol=1e-6) and torch.allclose(logp, expected_logp, atol=1e-5)


@pytest.mark.parametrize("case,cfg_weight", [("imagenet", 0.0), ("image_text", 0.0), ("pca_multivariate", 0.0),
                                             ("imagenet", 2.0)])
def test_cached_sampler_matches_uncached_forward(converted, case, cfg_weight):
    """The sampler's KV-cached logits equal a teacher-forced forward pass over the sampled latents; sampling is
    reproducible with a seed."""
    g, model = _golden(case), converted[case]
    text, mask = _t(g.outputs["sample/text"]).long(), _t(g.outputs["sample/text_mask"])
    run = dict(text_attention_mask=mask, num_tokens=5, temperature=0.8, cfg_weight=cfg_weight)
    a = model.generate_image_latents(text, generator=torch.Generator().manual_seed(0), **run)
    b = model.generate_image_latents(text, generator=torch.Generator().manual_seed(0), **run)
    c = model.generate_image_latents(text, generator=torch.Generator().manual_seed(1), **run)
    assert torch.equal(a.sequences, b.sequences) and not torch.equal(a.sequences, c.sequences)
    assert a.sequences.shape == (2, 5, model.config.out_dim) and torch.isfinite(a.log_probs).all()
    with torch.no_grad():
        forced = model(text, image_latents=a.sequences, text_attention_mask=mask)  # eval: text first
        cached = model.image_logits(a.prelogits)
    assert max_abs_err(cached, forced.image_logits.numpy()) < 1e-4


def test_generate_images_and_text(converted):
    model = converted["imagenet"]
    images = model.generate_images(torch.tensor([[1], [2]]), cfg_weight=3.0, generator=torch.Generator().manual_seed(0))
    again = model.generate_images(torch.tensor([[1], [2]]), cfg_weight=3.0, generator=torch.Generator().manual_seed(0))
    assert images.shape == (2, 3, 16, 16) and torch.equal(images, again)
    assert images.min() >= -1 and images.max() <= 1
    g = _golden("image_text")
    text_model = converted["image_text"]
    out = text_model.generate_text(pixel_values=g.image_nchw(), max_new_tokens=3, temperature=0.5,
                                   generator=torch.Generator().manual_seed(0))
    assert out.sequences.shape == (2, 3) and (out.sequences < text_model.config.vocab_size).all()


# ---- training ------------------------------------------------------------------------------------------------


def test_noise_curriculum_and_training_forward(converted):
    """train.py: cosine RGB-noise curriculum, dequantisation, input noise, label drop, random order; reproducible
    with a generator, and the loss back-propagates into the flow."""
    g = _golden("image_text")
    model = convert_checkpoint(g.params, "proj.jetformer.jetformer", _kwargs(g))
    config = model.config
    assert config.noise_scale_at(0.0) == 64.0 and config.noise_scale_at(1.0) == pytest.approx(3.0)
    assert config.noise_scale_at(0.5) == pytest.approx((64 - 3) / 2 + 3)
    model.train()
    text, images = _t(g.inputs["text"]).long(), g.image_nchw()

    def loss(seed):
        torch.manual_seed(seed)  # nn.Dropout draws from torch's global RNG
        return model(text, pixel_values=images, text_attention_mask=_t(g.inputs["text_mask"]),
                     noise_scale=config.noise_scale_at(0.3), generator=torch.Generator().manual_seed(seed)).loss

    first = loss(0)
    assert torch.isfinite(first) and torch.equal(first, loss(0)) and not torch.equal(first, loss(1))
    first.backward()
    assert model.jet.couplings[0].dnn.final_proj.weight.grad.abs().sum() > 0
    assert model.image_head.weight.grad.abs().sum() > 0


def test_every_parameter_matters(converted):
    """Perturbing any tensor changes an output (the key projection's bias excepted: softmax ignores it)."""
    for case in CASES:
        g = _golden(case)
        model = convert_checkpoint(g.params, "proj.jetformer.jetformer", _kwargs(g))
        with torch.no_grad():
            ref = _forward(model, g)
            for name, tensor in model.state_dict().items():
                if name.endswith("k_proj.bias"):
                    continue
                saved = tensor.clone()
                if "coupling_masks" in name:  # swap two columns of a coupling's permutation
                    if not tensor.any():  # the spatial stack of a channels-only flow: placeholders, never used
                        continue
                    layer = int(torch.nonzero(tensor.flatten(1).any(1))[0])
                    tensor[layer] = tensor[layer][:, torch.tensor([1, 0, *range(2, tensor.shape[-1])])]
                else:
                    tensor.add_(0.05 * torch.randn_like(tensor))
                out = _forward(model, g)
                tensor.copy_(saved)
                changed = max(float((getattr(out, k) - getattr(ref, k)).abs().max())
                              for k in ("text_logits", "image_logits", "nll_image", "last_hidden_state"))
                assert changed > 1e-6, f"{case}: perturbing {name} does not change the output"


# ---- errors and remote code ----------------------------------------------------------------------------------


def test_jetformer_clear_errors(tmp_path):
    g = _golden("imagenet")
    kwargs = _kwargs(g)
    with pytest.raises(CheckpointError, match="bos_id"):
        convert_checkpoint(g.params, "proj.jetformer.jetformer", {k: v for k, v in kwargs.items() if k != "bos_id"})
    with pytest.raises(CheckpointError, match="vocab_size"):
        convert_checkpoint(g.params, "proj.jetformer.jetformer", {**kwargs, "vocab_size": 12})
    with pytest.raises(CheckpointError, match="latent_noise_dim"):
        convert_checkpoint(g.params, "proj.jetformer.jetformer", {**kwargs, "latent_noise_dim": 0})
    with pytest.raises(CheckpointError, match="pca_init_file"):
        convert_checkpoint(g.params, "proj.jetformer.jetformer",
                           {**kwargs, "patch_pca": {**kwargs["patch_pca"], "skip_pca": False}})
    with pytest.raises(CheckpointError, match="use_adaptor"):
        convert_checkpoint(g.params, "proj.jetformer.jetformer", {**kwargs, "use_adaptor": False})
    with pytest.raises(CheckpointError, match="kinds"):
        convert_checkpoint(g.params, "proj.jetformer.jetformer",
                           {**kwargs, "adaptor": {**kwargs["adaptor"], "kinds": ["spatial"]}})
    model = convert_checkpoint(g.params, "proj.jetformer.jetformer", kwargs)
    with pytest.raises(ValueError, match="exactly one"):
        model(torch.tensor([[1]]))
    with pytest.raises(ValueError, match=r"\[batch, 3, 16, 16\]"):
        model(torch.tensor([[1]]), pixel_values=torch.zeros(1, 3, 32, 32))


_CHILD = """
from transformers import AutoModel
model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
with torch.no_grad():
    out = model(torch.from_numpy(inputs["text"]).long(), pixel_values=torch.from_numpy(inputs["image"]))
images = model.generate_images(torch.from_numpy(inputs["text"]).long(), cfg_weight=2.0,
                               generator=torch.Generator().manual_seed(0))
outputs = {"image_logits": out.image_logits.numpy(), "loss": out.loss.numpy(), "images": images.numpy()}
remote = {"model": model}
"""


def test_jetformer_folder_loads_as_remote_code(converted, tmp_path):
    g = _golden("imagenet")
    folder = tmp_path / "jetformer"
    convert_cli(g.params, str(folder), "--model-name", "proj.jetformer.jetformer", "--model-config",
                json.dumps(_kwargs(g)))
    child = run_without_package(tmp_path, folder, _CHILD, {"text": g.inputs["text"],
                                                           "image": g.image_nchw().numpy()})
    assert np.abs(child["image_logits"] - g.outputs["image_logits"]).max() <= TOL
    assert abs(float(child["loss"]) - float(g.outputs["loss/loss"])) <= TOL
    local = converted["imagenet"].generate_images(_t(g.inputs["text"]).long(), cfg_weight=2.0,
                                                  generator=torch.Generator().manual_seed(0))
    assert np.array_equal(child["images"], local.numpy())  # same code, same seed
    assert os.path.isdir(FIXTURES)
