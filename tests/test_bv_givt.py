"""GIVT (``proj.givt.givt``), its VAEs (``proj.givt.cnn``, ``proj.givt.vit``) and adaptor: parity with the original
big_vision code through the user path, the samplers, the pipeline, and the flax msgpack reader.

Fixtures (all from the ORIGINAL code on random parameters): the goldens ``givt_ar`` / ``givt_masked``
(``../shared/golden``; ``givt_masked`` has ``mask_style="concat"``), and ``givt_encdec``, ``givt_adaptor``,
``givt_masked_replace`` (big_vision's default ``mask_style="replace"``), ``givt_vae_cnn`` (a flax msgpack file in the
layout of the public ImageNet VAEs), ``givt_vae_cnn_convdown``, ``givt_vae_vit``, ``givt_vae_vit_rgb``, ``givt_gmm``,
``givt_sampling``, ``givt_msgpack``, ``givt_postprocess`` written by ``fixtures/make_givt_fixtures.py``; the
``params_bf16.npz`` / ``outputs_bf16.npz`` of each are big_vision's outputs from the bfloat16 file.

Path: checkpoint -> ``big-vision-hf convert`` (in-process CLI) -> folder -> ``AutoModel.from_pretrained`` -> forward.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from transformers import AutoModel, Trainer, TrainingArguments

import big_vision_hf  # noqa: F401  registers the Auto classes
from big_vision_hf.configuration.configuration_bv_givt import (
    BvGivtCNNVAEConfig,
    BvGivtConfig,
    BvGivtViTVAEConfig,
    bv_kwargs_to_givt_config,
)
from big_vision_hf.conversion import CheckpointError, convert_checkpoint
from big_vision_hf.conversion.api import detect_family
from big_vision_hf.conversion.checkpoint import bfloat16_to_float32, read_checkpoint
from big_vision_hf.conversion.zoo import ZOO, find_entry
from big_vision_hf.modeling.modeling_bv_givt import (
    BvCFGDensity,
    BvGaussianMixture,
    BvGivtModel,
    BvGivtPipeline,
    apply_mask_schedule,
    panoptic_predictions_from_logits,
    unbin_depth,
)
from big_vision_hf.modeling.modeling_bv_givt_vae import BvGivtCNNVAEModel, BvGivtViTVAEModel
from conftest import (
    FIXTURES,
    Golden,
    assert_max_abs_errors,
    convert_cli,
    max_abs_err,
    params_prefixed,
    rewrite_npz,
    run_without_package,
)

TOL = 1e-4
GIVTS = ("givt_ar", "givt_masked", "givt_masked_replace", "givt_encdec", "givt_adaptor")
VIT_VAES = ("givt_vae_vit", "givt_vae_vit_rgb")
LAYOUTS = ("fp32", "params/", "bf16")
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread (conftest)


def _nchw(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(a)).permute(0, 3, 1, 2).contiguous()


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message and message, message
    return message


def _layout(g: Golden, layout: str, tmp_path) -> tuple[str, dict]:
    """(parameter file, reference outputs) of a fixture in a checkpoint layout."""
    if layout == "fp32":
        return g.params, g.outputs
    if layout == "params/":
        return rewrite_npz(g.params, str(tmp_path / "prefixed.npz"), params_prefixed), g.outputs
    return os.path.join(g.dir, "params_bf16.npz"), dict(np.load(os.path.join(g.dir, "outputs_bf16.npz")))


def _convert(params: str, folder, model_name: str, kwargs: dict):
    convert_cli(params, str(folder), "--model-name", model_name, "--model-config", json.dumps(kwargs))
    return AutoModel.from_pretrained(str(folder)).eval()


# ---------------------------------------------------------------------------------------------------------------
# GIVT parity
# ---------------------------------------------------------------------------------------------------------------


def _givt_kwargs(g: Golden) -> dict:
    kwargs = g.model_kwargs
    if "adaptor_kwargs" in g.config:  # big_vision's config.adaptor.model rides along
        kwargs["adaptor"] = g.config["adaptor_kwargs"]
    return kwargs


def _givt_inputs(g: Golden) -> dict:
    x = g.inputs
    inputs = {"latents": torch.from_numpy(x["sequence"])}
    if "labels" in x:
        inputs["class_labels"] = torch.from_numpy(x["labels"])
    if "input_mask" in x:
        inputs["input_mask"] = torch.from_numpy(x["input_mask"])
    if "image" in x:
        inputs["pixel_values"] = _nchw(x["image"])
    return inputs


def _givt_errors(model: BvGivtModel, g: Golden, reference: dict) -> dict[str, float]:
    with torch.no_grad():
        out = model(**_givt_inputs(g), output_hidden_states=True)
        errors = {"logits": max_abs_err(out.logits, reference["logits"]), "nll": max_abs_err(out.nll, reference["nll"])}
        if "decode_out/pre_logits" in reference:  # big_vision decode(..., return_reps=True)
            errors["pre_logits"] = max_abs_err(out.last_hidden_state.mean(1), reference["decode_out/pre_logits"])
            for i in range(model.config.num_hidden_layers):
                rep = reference[f"decode_out/block{i}_rep"]
                errors[f"block{i}_rep"] = max_abs_err(out.hidden_states[i + 1].mean(1), rep)
        if "adapted" in reference:
            latents = _givt_inputs(g)["latents"]
            errors["adapted"] = max_abs_err(model.adaptor(latents), reference["adapted"])
            errors["inverse"] = max_abs_err(model.adaptor.inverse(latents), reference["inverse"])
        if "encoded" in reference:
            errors["encoded"] = max_abs_err(model.encode_image(_givt_inputs(g)["pixel_values"]), reference["encoded"])
    return errors


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", GIVTS)
def test_givt_parity_through_cli(name, layout, tmp_path):
    g = Golden(name)
    params, reference = _layout(g, layout, tmp_path)
    model = _convert(params, tmp_path / "givt", "proj.givt.givt", _givt_kwargs(g))
    assert isinstance(model, BvGivtModel)
    assert_max_abs_errors(f"{name} {layout}", _givt_errors(model, g, reference), TOL)


def test_givt_folder(tmp_path):
    g = Golden("givt_ar")
    folder = tmp_path / "givt"
    convert_cli(g.params, str(folder), "--model-config", json.dumps(g.model_kwargs))  # detected from the arrays
    config = json.load(open(folder / "config.json"))
    assert config["model_type"] == "bv_givt" and config["bv_model_name"] == "proj.givt.givt"
    assert config["auto_map"]["AutoModel"] == "modeling_bv_givt.BvGivtModel"
    assert {"modeling_bv_givt.py", "modeling_bv_givt_vae.py", "configuration_bv_givt.py"} <= set(os.listdir(folder))
    card = open(folder / "README.md").read()
    assert "pipeline_tag: unconditional-image-generation" in card and "givt.generate(class_labels" in card
    assert not (folder / "preprocessor_config.json").exists()  # class-conditional: no image input


def test_families_detected_from_their_arrays():
    assert detect_family(read_checkpoint(Golden("givt_ar").params)) == "proj.givt.givt"
    assert detect_family(read_checkpoint(Golden("givt_encdec").params)) == "proj.givt.givt"
    assert detect_family(read_checkpoint(os.path.join(FIXTURES, "givt_vae_cnn", "vae_params"))) == "proj.givt.cnn"
    assert detect_family(read_checkpoint(Golden("givt_vae_cnn_convdown").params)) == "proj.givt.cnn"
    assert detect_family(read_checkpoint(Golden("givt_vae_vit").params)) == "proj.givt.vit"


# ---------------------------------------------------------------------------------------------------------------
# VAE parity
# ---------------------------------------------------------------------------------------------------------------


def _vae_errors(model, x: torch.Tensor, latents: np.ndarray, reference: dict, tag: str = "") -> dict[str, float]:
    errors = {}
    with torch.no_grad():
        mean, logvar = model.encode(x)
        errors[f"{tag}mu"] = max_abs_err(mean, reference[f"{tag}mu"])
        errors[f"{tag}logvar"] = max_abs_err(logvar, reference[f"{tag}logvar"])
        for key, z in (("reconstruction", mean), ("decoded", torch.from_numpy(latents))):
            decoded = model.decode(z)
            for name, value in (decoded.items() if isinstance(decoded, dict) else [("", decoded)]):
                ref = f"{tag}{key}/{name}" if name else f"{tag}{key}"
                errors[ref] = max_abs_err(value.permute(0, 2, 3, 1), reference[ref])
    return errors


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", VIT_VAES)
def test_vit_vae_parity_through_cli(name, layout, tmp_path):
    g = Golden(name)
    params, reference = _layout(g, layout, tmp_path)
    model = _convert(params, tmp_path / "vae", "proj.givt.vit", g.model_kwargs)
    assert isinstance(model, BvGivtViTVAEModel)
    assert_max_abs_errors(f"{name} {layout}", _vae_errors(model, _nchw(g.inputs["x"]), g.inputs["latents"], reference),
                          TOL)


def _cnn_fixture() -> Golden:
    g = Golden.__new__(Golden)
    g.name, g.dir = "givt_vae_cnn", os.path.join(FIXTURES, "givt_vae_cnn")
    g.params = os.path.join(g.dir, "vae_params")  # flax msgpack, no extension, as the public files
    g.config = json.load(open(os.path.join(g.dir, "config.json")))
    g.inputs = dict(np.load(os.path.join(g.dir, "inputs.npz")))
    g.outputs = dict(np.load(os.path.join(g.dir, "outputs.npz")))
    return g


def _cnn_npz(g: Golden, path, prefix: str = "", stored: bool = False) -> str:
    """The msgpack's EMA parameters as the ``.npz`` ``cnn.load`` reads without ``malib_ckpt`` (``cnn_encoder/...``),
    float32 (exact: the values are bfloat16) or bfloat16 ``V2`` (``stored``)."""
    arrays = read_checkpoint(g.params)
    np.savez(path, **{prefix + "cnn_" + k[len("ema_params/"):]: (a.load_stored() if stored else a.load())
                      for k, a in arrays.items() if k.startswith("ema_params/")})
    return str(path)


@pytest.mark.parametrize("layout", ["msgpack", "npz", "params/", "bf16"])
def test_cnn_vae_parity_through_cli(layout, tmp_path):
    g = _cnn_fixture()
    params = {"msgpack": g.params, "npz": _cnn_npz(g, tmp_path / "vae.npz"),
              "params/": _cnn_npz(g, tmp_path / "vae.npz", prefix="params/"),
              "bf16": _cnn_npz(g, tmp_path / "vae.npz", stored=True)}[layout]
    # The malib msgpack implies malib_ckpt (the zoo entries also pass it); the npz layouts need it in the config.
    kwargs = {} if layout == "msgpack" else g.model_kwargs
    model = _convert(params, tmp_path / "vae", "proj.givt.cnn", kwargs)
    assert isinstance(model, BvGivtCNNVAEModel) and model.config.malib_ckpt
    x = _nchw(g.inputs["image"])
    errors = _vae_errors(model, x, g.inputs["latents"], g.outputs)
    shuffled = convert_checkpoint(params, "proj.givt.cnn", {**g.model_kwargs, "pixel_shuffle_patch_size": [1, 2]})
    errors.update(_vae_errors(shuffled, x, g.inputs["latents_ps12"], g.outputs, "ps12/"))
    assert_max_abs_errors(f"givt_vae_cnn {layout}", errors, TOL)


@pytest.mark.parametrize("layout", ["bf16", "fp32"])
def test_cnn_vae_conv_downsample_parity(layout, tmp_path):
    g = Golden("givt_vae_cnn_convdown")  # relu, strided-conv downsampling, no malib rescaling; bf16 V2 .npz
    params = g.params if layout == "bf16" else rewrite_npz(
        g.params, str(tmp_path / "f32.npz"), lambda a: {k: bfloat16_to_float32(v) for k, v in a.items()})
    model = _convert(params, tmp_path / "vae", "proj.givt.cnn", g.model_kwargs)
    assert model.config.conv_downsample and not model.config.malib_ckpt
    x = _nchw(g.inputs["image"])
    errors = _vae_errors(model, x, g.inputs["latents"], g.outputs)
    shuffled = convert_checkpoint(params, "proj.givt.cnn", {**g.model_kwargs, "pixel_shuffle_patch_size": [1, 2]})
    errors.update(_vae_errors(shuffled, x, g.inputs["latents_ps12"], g.outputs, "ps12/"))
    assert_max_abs_errors(f"givt_vae_cnn_convdown {layout}", errors, TOL)


def _all_outputs(model, g: Golden) -> torch.Tensor:
    """Every output the parity tests compare, flattened: GIVT's logits, nll (through the adaptor) and image encoding,
    or a VAE's posterior and the decode of the fixture's latents."""
    with torch.no_grad():
        if isinstance(model, BvGivtModel):
            inputs = _givt_inputs(g)
            out = model(**inputs)
            parts = [out.logits, out.nll]
            if "pixel_values" in inputs:
                parts.append(model.encode_image(inputs["pixel_values"]))
        else:
            x = _nchw(g.inputs["x"] if "x" in g.inputs else g.inputs["image"])
            mean, logvar = model.encode(x)
            decoded = model.decode(torch.from_numpy(g.inputs["latents"]))
            parts = [mean, logvar, *(decoded.values() if isinstance(decoded, dict) else [decoded])]
    return torch.cat([p.flatten().float() for p in parts])


@pytest.mark.parametrize("name", [*GIVTS, *VIT_VAES, "givt_vae_cnn_convdown"])
def test_every_parameter_matters(name):
    """Each tensor of the converted model, perturbed, changes an output, so none is ignored and, the fixtures being
    random everywhere, none escapes the parity tests. Exempt: attention key biases (softmax ignores a per-query
    constant) and, in the CNN VAE, the down/upsampling convolutions' biases: the fixture has 32 filters and GroupNorm
    32 groups, so the next GroupNorm removes a per-channel constant (in big_vision too); the fixture cannot see them."""
    g = Golden(name)
    family = {"givt_vae_cnn_convdown": "proj.givt.cnn", **dict.fromkeys(VIT_VAES, "proj.givt.vit")}
    model = convert_checkpoint(g.params, family.get(name, "proj.givt.givt"), _givt_kwargs(g)).eval()
    base, state = _all_outputs(model, g), {k: v.clone() for k, v in model.state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    for key, tensor in state.items():
        if key.endswith(("k_proj.bias", "sample.0.bias")) or not tensor.is_floating_point():
            continue
        noise = torch.randn(tensor.shape, generator=generator) * (0.5 * tensor.abs().mean() + 0.1)
        model.state_dict()[key].add_(noise)
        changed = (_all_outputs(model, g) - base).abs().max().item()
        model.state_dict()[key].copy_(tensor)
        assert changed > 1e-5, f"{name}: perturbing {key} does not change any output"


def test_vae_reparametrize_and_roundtrip():
    model = convert_checkpoint(_cnn_fixture().params)
    x = _nchw(_cnn_fixture().inputs["image"])
    with torch.no_grad():
        out = model(x)
        sampled = model(x, sample_posterior=True, generator=torch.Generator().manual_seed(0))
        again = model(x, sample_posterior=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out.latents, out.latent_mean) and out.reconstruction.shape == x.shape
    assert torch.equal(sampled.latents, again.latents) and not torch.equal(sampled.latents, out.latents)
    assert out.reconstruction.abs().max() <= 1.0  # clipped to [-1, 1]


# ---------------------------------------------------------------------------------------------------------------
# The flax msgpack reader
# ---------------------------------------------------------------------------------------------------------------


def test_msgpack_reader_matches_flax():
    """A state written by flax's serializer (chunked arrays, bf16, nested lists, scalars, strings): every ndarray leaf
    flax reads back, under the same names, exactly; scalars and strings are not arrays."""
    folder = os.path.join(FIXTURES, "givt_msgpack")
    ours = read_checkpoint(os.path.join(folder, "state.msgpack"))
    flax_arrays = dict(np.load(os.path.join(folder, "arrays.npz")))
    # `params/` is a tree prefix for the reader, as for an .npz
    expected = {k[len("params/"):] if k.startswith("params/") else k: v for k, v in flax_arrays.items()
                if k.startswith("params/")}
    assert set(ours) == set(expected)
    for name, array in ours.items():
        ref = expected[name]
        assert array.load_stored().dtype == ref.dtype and np.array_equal(array.load_stored(), ref), name
        assert tuple(array.shape) == ref.shape
    assert ours["bf16"].dtype == "bfloat16" and ours["bf16"].load().dtype == np.float32
    big = ours["big"]  # chunked by flax: rows are read across the chunk boundaries
    assert np.array_equal(big.rows(2, 7).load(), expected["big"][2:7]) and np.array_equal(big.take(8).load(),
                                                                                          expected["big"][8])
    whole = read_checkpoint(os.path.join(folder, "state.msgpack") + ":layers")
    assert set(whole) == {"0", "1"} and whole["1"].dtype == "float64"


def test_msgpack_truncated_and_garbage_are_one_line_errors(tmp_path):
    data = open(os.path.join(FIXTURES, "givt_vae_cnn", "vae_params"), "rb").read()
    for size in (len(data) - 1, len(data) // 2, 40, 3):
        path = tmp_path / f"cut{size}"
        path.write_bytes(data[:size])
        with pytest.raises(CheckpointError) as e:
            read_checkpoint(str(path))
        assert "truncated" in _one_line(e)
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"\x81\xa1a\xc7\x05\x63abcde")  # a map holding an unknown extension type
    with pytest.raises(CheckpointError, match="unknown msgpack extension") as e:
        read_checkpoint(str(garbage))
    _one_line(e)
    trailing = tmp_path / "trailing"
    trailing.write_bytes(data + b"\x00")
    with pytest.raises(CheckpointError, match="after the end") as e:
        read_checkpoint(str(trailing))


def test_msgpack_reads_one_array_at_a_time(monkeypatch):
    """Scanning reads the structure only; loading an array (or a row of it) reads exactly its bytes."""
    from big_vision_hf.conversion import checkpoint

    read = []

    class Counting:
        def __init__(self, path):
            self.f = open(path, "rb", buffering=0)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def seek(self, offset):
            return self.f.seek(offset)

        def readinto(self, buffer):
            n = self.f.readinto(buffer)
            read.append(n)
            return n

    arrays = read_checkpoint(_cnn_fixture().params)
    monkeypatch.setattr(checkpoint, "_open_file", Counting)
    kernel = arrays["ema_params/decoder/ResBlock_0/Conv_0/kernel"]  # [3, 3, 64, 64] bfloat16
    assert kernel.load().shape == (3, 3, 64, 64) and sum(read) == 3 * 3 * 64 * 64 * 2
    read.clear()
    assert kernel.take(1).load().shape == (3, 64, 64) and sum(read) == 3 * 64 * 64 * 2


def test_cli_truncated_msgpack(tmp_path, capsys):
    from big_vision_hf.cli import main

    data = open(os.path.join(FIXTURES, "givt_vae_cnn", "vae_params"), "rb").read()
    path = tmp_path / "vae_params"
    path.write_bytes(data[: len(data) * 2 // 3])
    assert main(["convert", str(path), str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "truncated flax msgpack checkpoint" in err


# ---------------------------------------------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------------------------------------------


def test_vae_given_as_givt_is_one_line_error():
    with pytest.raises(CheckpointError, match="not a GIVT .*looks like a proj.givt.vit") as e:
        convert_checkpoint(Golden("givt_vae_vit").params, "proj.givt.givt")
    _one_line(e)
    with pytest.raises(CheckpointError, match="not a GIVT .*looks like a proj.givt.cnn") as e:
        convert_checkpoint(_cnn_fixture().params, "proj.givt.givt")
    _one_line(e)
    with pytest.raises(CheckpointError, match="not a GIVT CNN VAE") as e:
        convert_checkpoint(Golden("givt_ar").params, "proj.givt.cnn")
    _one_line(e)


def test_config_contradicting_arrays_is_one_line_error():
    g = Golden("givt_ar")
    for bad, pattern in (({"out_dim": 16}, "out_dim=16 but the checkpoint arrays have 8"),
                         ({"style": "masked"}, "seq_len"),
                         ({"drop_labels_probability": 0.0}, "EmbedLabels has 11 rows"),
                         ({"num_mixtures": 3}, "the head has 68 outputs"),
                         ({"per_channel_mixtures": True}, "the head has 68 outputs")):
        with pytest.raises(CheckpointError, match=pattern) as e:
            convert_checkpoint(g.params, "proj.givt.givt", {**g.model_kwargs, **bad})
        _one_line(e)
    with pytest.raises(CheckpointError, match="unknown big_vision proj.givt.givt option 'width'"):
        convert_checkpoint(g.params, "proj.givt.givt", {**g.model_kwargs, "width": 3})
    v = Golden("givt_vae_vit")
    with pytest.raises(CheckpointError, match="inout_specs") as e:
        convert_checkpoint(v.params, "proj.givt.vit", {**v.model_kwargs, "inout_specs": {"depth": [0, 256]}})
    _one_line(e)


def test_latent_width_mismatch_is_one_line_error():
    givt = convert_checkpoint(Golden("givt_ar").params, "proj.givt.givt", Golden("givt_ar").model_kwargs)  # D = 8
    vae = convert_checkpoint(Golden("givt_vae_vit").params, "proj.givt.vit", Golden("givt_vae_vit").model_kwargs)
    with pytest.raises(ValueError, match="latent width is 4 but the GIVT models 8-dimensional") as e:
        BvGivtPipeline(givt, vae)
    _one_line(e)
    with pytest.raises(ValueError, match=r"latents must be \[batch, <= 16, 8\]") as e:
        givt(latents=torch.zeros(2, 16, 4), class_labels=torch.tensor([1, 2]))
    _one_line(e)
    with pytest.raises(ValueError, match=r"\[batch, 4, 4\]") as e:
        vae.decode(torch.zeros(1, 4, 8))
    _one_line(e)
    with pytest.raises(ValueError, match="not a GIVT VAE"):
        BvGivtPipeline(givt, givt)


def test_givt_input_errors():
    g = Golden("givt_masked")
    model = convert_checkpoint(g.params, "proj.givt.givt", g.model_kwargs)
    x = _givt_inputs(g)
    with pytest.raises(ValueError, match="needs input_mask"):
        model(latents=x["latents"], class_labels=x["class_labels"])
    with pytest.raises(ValueError, match=r"class_labels must lie in \[0, 10\)"):
        model(latents=x["latents"], class_labels=torch.tensor([3, 10]), input_mask=x["input_mask"])
    with pytest.raises(ValueError, match="pass class_labels"):
        model.generate(batch_size=2)
    with pytest.raises(ValueError, match="no image encoder"):
        model(**x, pixel_values=torch.zeros(2, 3, 16, 16))
    with pytest.raises(ValueError, match=r"do\(es\) not apply"):
        model.generate(class_labels=[1], temperature=0.9)


# ---------------------------------------------------------------------------------------------------------------
# The mixture head and the samplers
# ---------------------------------------------------------------------------------------------------------------


def _mixture_moments(pdf: BvGaussianMixture) -> tuple[np.ndarray, np.ndarray]:
    """The exact mean and variance per channel of a mixture (float64)."""
    w, loc = pdf.log_weights.double().exp()[..., None], pdf.locs.double()
    if pdf.scale_tril is None:
        var = pdf.scales.double() ** 2
    else:
        tril = pdf.scale_tril.double()
        var = torch.diagonal(tril @ tril.transpose(-1, -2), dim1=-2, dim2=-1)
    mean = (w * loc).sum(-2)
    second = (w * (loc**2 + var)).sum(-2)
    out = mean, second - mean**2
    return tuple((v[..., 0] if pdf.per_channel else v).numpy() for v in out)


def test_gaussian_mixture_matches_distrax():
    """`BvGaussianMixture.from_logits` = big_vision ``get_pdf`` for every head layout and temperature (log_prob),
    and its samples have the mixture's moments (as distrax's samples do)."""
    g = Golden("givt_gmm")
    errors = {}
    for case, spec in g.config["cases"].items():
        head = spec["head"]
        pdf = BvGaussianMixture.from_logits(
            torch.from_numpy(g.inputs[f"{case}/logits"]), num_mixtures=head["num_mixtures"], out_dim=head["out_dim"],
            per_channel_mixtures=head.get("per_channel_mixtures", True), multivariate=head.get("multivariate", False),
            fix_square_plus=head.get("fix_square_plus", False), scale_tol=head.get("scale_tol", 1e-6),
            temperature_scales=spec["temperature_scales"], temperature_probs=spec["temperature_probs"])
        log_prob = pdf.log_prob(torch.from_numpy(g.inputs[f"{case}/x"]))
        reference = g.outputs[f"{case}/log_prob"]
        if case == "multivariate":
            # A triangular solve in float32: values down to -860 here, and jax's own float32 result is 2.7e-4 from
            # the exact (float64) one; both are within float32 resolution: compare relatively.
            relative = np.abs(log_prob.numpy() - reference) / np.maximum(1.0, np.abs(reference))
            assert relative.max() < 1e-6, relative.max()
        else:
            errors[case] = max_abs_err(log_prob, reference)
        n = spec["num_samples"]
        samples = pdf.sample((n,), generator=torch.Generator().manual_seed(0)).double().numpy()
        mean, var = _mixture_moments(pdf)
        ours_mean, ours_var = samples.mean(0), samples.var(0)
        fourth = ((samples - ours_mean) ** 4).mean(0)
        z_mean = np.abs(ours_mean - mean) / np.sqrt(var / n)
        z_var = np.abs(ours_var - var) / np.sqrt(np.maximum(fourth - ours_var**2, 1e-30) / n)
        z_distrax = np.abs(g.outputs[f"{case}/sample_mean"] - mean) / np.sqrt(var / n)
        assert max(z_mean.max(), z_var.max(), z_distrax.max()) < 5, (case, z_mean.max(), z_var.max(), z_distrax.max())
    assert_max_abs_errors("givt_gmm log_prob", errors, TOL)


def _moments_z(ours: torch.Tensor, mean: np.ndarray, var: np.ndarray, n: int) -> tuple[float, float]:
    """Max over (position, channel) of the two-sample z statistics of the means and of the variances (the
    variance's standard error from our samples' fourth moment, for both samples)."""
    ours = ours.double().numpy()
    m, v, k = ours.mean(0), ours.var(0), len(ours)
    fourth = ((ours - m) ** 4).mean(0)
    z_mean = np.abs(m - mean) / np.sqrt(v / k + var / n)
    z_var = np.abs(v - var) / np.sqrt(np.maximum(fourth - v**2, 1e-30) * (1 / k + 1 / n))
    return float(z_mean.max()), float(z_var.max())


@pytest.fixture(scope="module")
def sampling() -> Golden:
    return Golden("givt_sampling")


@pytest.fixture(scope="module")
def givt_models() -> dict[str, BvGivtModel]:
    return {name: convert_checkpoint(Golden(name).params, "proj.givt.givt", _givt_kwargs(Golden(name)))
            for name in GIVTS}


OUR_SAMPLES = 384  # per run (big_vision's moments are over `num_samples`)


def _generate_run(model: BvGivtModel, run: dict, image=None):
    n = OUR_SAMPLES
    if "ar_generation_config" in run:
        bv = run["ar_generation_config"]
        opts = dict(temperature=bv.get("temp"), temperature_probs=bv.get("temp_probs"),
                    cfg_weight=bv.get("cfg_inference_weight"))
    else:
        bv = run["masked_generation_config"]
        opts = dict(num_steps=bv["num_steps"], choice_temperature=bv["choice_temperature"],
                    cfg_weight=bv["cfg_inference_weight"])
    if image is not None:
        return model.generate(pixel_values=image.expand(n, -1, -1, -1), seed=1, **opts)
    return model.generate(class_labels=torch.full((n,), run["label"]), seed=1, **opts)


@pytest.mark.parametrize("run", ["ar", "ar_cfg", "masked", "masked_cfg", "encdec", "adaptor"])
def test_sampler_equal_in_distribution_to_big_vision(run, sampling, givt_models):
    """Per position and channel, the mean and variance of our samples match those of big_vision's sampler
    (``decode.generate`` / ``parallel_decode.decode_masked``, many samples each; guidance by rejection sampling)."""
    spec = sampling.config["runs"][run]
    model = givt_models[spec["model"]]
    image = _nchw(Golden("givt_encdec").inputs["image"][:1]) if run == "encdec" else None
    out = _generate_run(model, spec, image)
    z, z_var = _moments_z(out.latents, sampling.outputs[f"{run}/mean"], sampling.outputs[f"{run}/var"],
                          spec["num_samples"])
    print(f"sampler {run}: max |z| of the means {z:.2f}, of the variances {z_var:.2f}")
    assert z < 5 and z_var < 5, (z, z_var)
    if run.startswith("masked"):  # the MaskGIT schedule: when positions get fixed
        steps = out.uncovered_at_step.double().mean(0).numpy()
        assert np.abs(steps - sampling.outputs[f"{run}/uncover_step_mean"]).max() < 0.3


def test_sampler_statistic_tells_configurations_apart(sampling, givt_models):
    """The moment test has power: big_vision's guided and unguided samples are told apart, and so are ours."""
    outputs, n = sampling.outputs, sampling.config["runs"]["ar"]["num_samples"]
    z = np.abs(outputs["ar/mean"] - outputs["ar_cfg/mean"]) / np.sqrt((outputs["ar/var"] + outputs["ar_cfg/var"]) / n)
    assert z.max() > 8
    ours = _generate_run(givt_models["givt_ar"], sampling.config["runs"]["ar"])
    assert _moments_z(ours.latents, outputs["ar_cfg/mean"], outputs["ar_cfg/var"], n)[0] > 8


def test_first_sampled_token_from_the_logits():
    """The first token is the mixture component drawn with the weights, then ``loc + scale * eps`` (temperature on
    the scales, temp_probs on the mixture logits), computed by hand from the logits of the label token."""
    g = Golden("givt_ar")
    model = convert_checkpoint(g.params, "proj.givt.givt", g.model_kwargs)
    labels = torch.tensor([3, 7, 0])
    out = model.generate(class_labels=labels, seed=5, temperature=0.7, temperature_probs=1.5, output_logits=True)
    with torch.no_grad():
        logits = model(latents=torch.zeros(3, 16, 8), class_labels=labels).logits[:, 0]  # depends on the label only
    m, d = 4, 8
    weights = torch.softmax(logits[:, :m] * 1.5, dim=-1)
    raw = logits[:, m:].reshape(3, m, 2, d)
    locs = raw[:, :, 0]
    scales = torch.clamp((raw[:, :, 1] + torch.sqrt(raw[:, :, 1] ** 2 + 4)) / 2, min=1e-6) * 0.7
    gen = torch.Generator().manual_seed(5)
    component = torch.multinomial(weights, 1, generator=gen)[:, 0]
    eps = torch.randn(3, d, generator=gen)
    rows = torch.arange(3)
    expected = locs[rows, component] + scales[rows, component] * eps
    assert torch.allclose(out.sequences[:, 0], expected, atol=1e-5), (out.sequences[:, 0] - expected).abs().max()
    # and its log-probability: log sum_m w_m N(x; loc_m, scale_m)
    comp = torch.distributions.Normal(locs, scales).log_prob(expected[:, None]).sum(-1)
    assert torch.allclose(out.log_probs[:, 0], torch.logsumexp(torch.log(weights) + comp, -1), atol=1e-4)


def test_cfg_density_is_the_guided_product():
    """Guidance draws from ``p_c^(1+w) / p_u^w`` per channel: for Gaussians the normalised density is the Gaussian of
    precision ``(1+w)/s_c^2 - w/s_u^2``; where big_vision's envelope covers it (conditional and unconditional
    predictions close, as a trained model's are) the rejection sampler's moments match it. (Far apart, big_vision's
    envelope -- the peak ratio at ``loc_c`` -- does not bound the density and its samples are biased; ours are the
    same, see `test_sampler_equal_in_distribution_to_big_vision`.)"""
    torch.manual_seed(0)
    logits_c = torch.randn(1, 64, 9) * 0.5
    logits_u = logits_c + 0.1 * torch.randn(1, 64, 9)
    kw = dict(num_mixtures=1, out_dim=4, per_channel_mixtures=False, fix_square_plus=True)
    pdf_c, pdf_u = BvGaussianMixture.from_logits(logits_c, **kw), BvGaussianMixture.from_logits(logits_u, **kw)
    w = 0.4
    cfg = BvCFGDensity(pdf_c, pdf_u, w)
    x = torch.randn(1, 64, 4)
    manual = (1 + w) * torch.distributions.Normal(cfg.loc_c, cfg.scale_c).log_prob(x) - w * torch.distributions.Normal(
        cfg.loc_u, cfg.scale_u).log_prob(x)
    assert torch.allclose(cfg.log_prob(x), manual, atol=1e-5)
    precision = (1 + w) / cfg.scale_c**2 - w / cfg.scale_u**2
    mean = ((1 + w) * cfg.loc_c / cfg.scale_c**2 - w * cfg.loc_u / cfg.scale_u**2) / precision
    n = 400  # independent draws of every entry, at once
    repeat = lambda pdf: BvGaussianMixture(pdf.log_weights.expand(n, 64, 1), pdf.locs.expand(n, 64, 1, 4),  # noqa: E731
                                           pdf.scales.expand(n, 64, 1, 4))
    many = BvCFGDensity(repeat(pdf_c), repeat(pdf_u), w)
    samples = many.sample(generator=torch.Generator().manual_seed(0))
    z = (samples.mean(0) - mean[0]) / torch.sqrt(1 / precision[0] / n)
    assert z.abs().max() < 5 and float(many.acceptance) > 0.99 and cfg.acceptance is None


def test_cfg_envelope_is_big_visions_grid_maximum():
    """big_vision's envelope factor is the maximum of the guided density over ``loc_c + linspace(-10, 10, 1001)``;
    ours evaluates the quadratic's grid points next to its vertex only: the same maximum."""
    torch.manual_seed(1)
    kw = dict(num_mixtures=3, out_dim=8, per_channel_mixtures=False)
    for scale, w in ((0.5, 0.4), (3.0, 3.0)):
        logits_c, logits_u = torch.randn(8, 16, 51) * scale, torch.randn(8, 16, 51) * scale
        cfg = BvCFGDensity(BvGaussianMixture.from_logits(logits_c, **kw), BvGaussianMixture.from_logits(logits_u, **kw),
                           w, generator=torch.Generator().manual_seed(0))
        grid = torch.stack([cfg.prob(cfg.loc_c + t) for t in torch.linspace(-10, 10, 1001)]).amax(0)
        grid = grid * np.sqrt(2 * np.pi) * cfg.simple_scale  # / simple.prob(loc_c)
        finite = torch.isfinite(grid) & (grid > 0)
        assert torch.equal(torch.isinf(grid), torch.isinf(cfg.fac))
        assert ((cfg.fac - grid).abs() / grid)[finite].max() < 1e-4


def test_kv_cached_logits_equal_the_uncached_forward(givt_models):
    """The logits each token was sampled from (KV cache, one token at a time) equal the teacher-forced forward on the
    sampled sequence, for plain, guided, beam-searched, image-conditional and adaptor models."""
    errors = {}
    ar, encdec, adapt = givt_models["givt_ar"], givt_models["givt_encdec"], givt_models["givt_adaptor"]
    labels = torch.tensor([1, 5, 9])
    with torch.no_grad():
        for tag, model, kwargs, forward in (
            ("ar", ar, dict(class_labels=labels, temperature=0.9), dict(class_labels=labels)),
            ("ar_cfg", ar, dict(class_labels=labels, cfg_weight=0.5), dict(class_labels=labels)),
            ("ar_beams", ar, dict(class_labels=labels, beam_size=3, fan_size=2), dict(class_labels=labels)),
            ("ar_rand_top_k", ar, dict(class_labels=labels, beam_size=2, fan_size=3, rand_top_k=True),
             dict(class_labels=labels)),
            ("encdec", encdec, dict(pixel_values=_givt_inputs(Golden("givt_encdec"))["pixel_values"]),
             dict(pixel_values=_givt_inputs(Golden("givt_encdec"))["pixel_values"])),
            ("adaptor", adapt, dict(class_labels=torch.tensor([0, 4])), dict(class_labels=torch.tensor([0, 4]))),
        ):
            out = model.generate(seed=3, output_logits=True, **kwargs)
            teacher = model(latents=out.latents, **forward).logits
            errors[tag] = float((out.logits - teacher).abs().max())
    assert_max_abs_errors("givt KV cache vs forward", errors, 1e-5)


def test_seeded_sampling_is_reproducible(givt_models):
    for name, kwargs in (("givt_ar", dict(class_labels=[1, 2], cfg_weight=0.4)),
                         ("givt_masked", dict(class_labels=[1, 2], cfg_weight=0.3, num_steps=4)),
                         ("givt_encdec", dict(pixel_values=_givt_inputs(Golden("givt_encdec"))["pixel_values"]))):
        model = givt_models[name]
        a, b = model.generate(seed=11, **kwargs), model.generate(seed=11, **kwargs)
        c = model.generate(generator=torch.Generator().manual_seed(12), **kwargs)
        assert torch.equal(a.latents, b.latents) and not torch.equal(a.latents, c.latents), name


def test_masked_schedule_uncovers_everything(givt_models):
    out = givt_models["givt_masked"].generate(class_labels=[3, 4], num_steps=5, choice_temperature=2.0, seed=0)
    steps = out.uncovered_at_step
    assert steps.min() >= 0 and steps.max() == 4  # every position fixed, the last ones at the last step
    counts = [(steps == s).sum(1) for s in range(5)]
    # cosine schedule: after step s, floor(16 * cos(pi/2 (s+1)/5)) positions remain masked
    remaining = [int(np.floor(16 * apply_mask_schedule((s + 1) / 5, "cosine").item())) for s in range(5)]
    assert [int(16 - sum(c[0] for c in counts[: s + 1])) for s in range(5)] == remaining


# ---------------------------------------------------------------------------------------------------------------
# Pipeline, post-processing, remote code, Trainer, zoo
# ---------------------------------------------------------------------------------------------------------------


def _tiny_pair(encoder: bool = False):
    torch.manual_seed(0)
    if encoder:
        vit = {"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64, "image_size": 16,
               "patch_size": 4, "pool_type": "none", "num_hidden_layers": 1}
        vae = BvGivtViTVAEModel(BvGivtViTVAEConfig(
            encoder_config={**vit, "num_channels": 8}, decoder_config=vit, codeword_dim=4, code_len=4,
            bottleneck_resize=True, inout_specs={"semantics": (0, 5), "instances": (1, 3)}))
        givt = BvGivtModel(BvGivtConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                        intermediate_size=64, num_classes=None, seq_len=4, out_dim=4, num_mixtures=1,
                                        encoder_config={"num_hidden_layers": 1, "image_size": 16, "patch_size": 4}))
        return givt, vae
    vae = BvGivtCNNVAEModel(BvGivtCNNVAEConfig(filters=32, num_res_blocks=1, channel_multipliers=[1, 2],
                                               codeword_dim=4, code_len=16))
    givt = BvGivtModel(BvGivtConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                    num_classes=10, seq_len=16, out_dim=4, per_channel_mixtures=False,
                                    drop_labels_probability=0.1, ar_generation_config={"temp": 0.9}))
    return givt, vae


def test_pipeline_class_label_to_image(tmp_path):
    givt, vae = _tiny_pair()
    givt.save_pretrained(tmp_path / "givt")
    vae.save_pretrained(tmp_path / "vae")
    pipe = BvGivtPipeline.from_pretrained(str(tmp_path / "givt"), str(tmp_path / "vae"))
    out = pipe([1, 2, 3], seed=0, cfg_weight=0.4, progress=False)
    assert len(out.images) == 3 and out.images[0].size == (8, 8) and out.latents.shape == (3, 16, 4)
    again = pipe([1, 2, 3], seed=0, cfg_weight=0.4, progress=False, output_type="pt")
    assert torch.allclose(again.images, vae.decode(out.latents)) and again.images.abs().max() <= 1
    assert pipe([1], seed=0, output_type="np", progress=False).images.shape == (1, 8, 8, 3)
    with pytest.raises(ValueError, match="not a GIVT folder"):
        BvGivtPipeline.from_pretrained(str(tmp_path / "vae"), str(tmp_path / "givt"))


def test_pipeline_image_to_panoptic():
    givt, vae = _tiny_pair(encoder=True)
    pipe = BvGivtPipeline(givt, vae)
    out = pipe(pixel_values=torch.rand(2, 3, 16, 16) * 2 - 1, seed=0, progress=False)
    assert out.predictions.shape == (2, 16, 16, 2) and out.predictions.dtype == torch.long
    decoded = vae.decode(out.latents)
    ref = panoptic_predictions_from_logits(decoded["semantics"].permute(0, 2, 3, 1),
                                           decoded["instances"].permute(0, 2, 3, 1))
    assert torch.equal(out.predictions, ref)


def test_pipeline_images_to_depth_from_folders(tmp_path):
    """A converted image-conditional GIVT folder carries big_vision's ``pp_predict`` (``resize`` + ``value_range``):
    PIL images in, depth maps out (``unbin_depth`` of the decoded bins)."""
    from PIL import Image

    g = Golden("givt_encdec")  # seq_len 6, out_dim 4, 16x8 images
    convert_cli(g.params, str(tmp_path / "givt"), "--model-config", json.dumps(g.model_kwargs))
    assert "resize((16, 8))" in open(tmp_path / "givt" / "README.md").read()
    vit = {"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64, "image_size": [16, 8],
           "patch_size": 4, "pool_type": "none", "num_hidden_layers": 1}
    torch.manual_seed(0)
    BvGivtViTVAEModel(BvGivtViTVAEConfig(encoder_config={**vit, "num_channels": 16}, decoder_config=vit,
                                         codeword_dim=4, code_len=6, inout_specs={"depth": (0, 16)})).save_pretrained(
        tmp_path / "vae")
    pipe = BvGivtPipeline.from_pretrained(str(tmp_path / "givt"), str(tmp_path / "vae"))
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)) for _ in range(2)]
    out = pipe(images=images, seed=0, progress=False, min_depth=1.0, max_depth=2.0)
    assert out.predictions.shape == (2, 16, 8) and 1.0 < out.predictions.min() and out.predictions.max() < 2.0
    pixel_values = pipe.image_processor(images, return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (2, 3, 16, 8) and pixel_values.abs().max() <= 1
    same = pipe(pixel_values=pixel_values, seed=0, progress=False, min_depth=1.0, max_depth=2.0)
    assert torch.equal(out.predictions, same.predictions)


def test_postprocessing_matches_big_vision():
    g = Golden("givt_postprocess")
    x = {k: torch.from_numpy(v) for k, v in g.inputs.items()}
    assert np.array_equal(panoptic_predictions_from_logits(x["semantics"], x["instances"]).numpy(),
                          g.outputs["panoptic"])
    assert np.array_equal(panoptic_predictions_from_logits(x["semantics"], x["instances"], 0.1).numpy(),
                          g.outputs["panoptic_min_fraction"])
    assert max_abs_err(unbin_depth(x["depth"], 0.001, 10.0), g.outputs["depth"]) < 1e-6


_CHILD = """
from transformers import AutoModel
givt = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
vae = AutoModel.from_pretrained(folder + "_vae", trust_remote_code=True).eval()
with torch.no_grad():
    out = givt(latents=torch.from_numpy(inputs["latents"]), class_labels=torch.from_numpy(inputs["labels"]))
    sample = givt.generate(class_labels=[1, 2], seed=0, cfg_weight=0.4)
    decoded = vae.decode(torch.from_numpy(inputs["vae_latents"]))
outputs = {"logits": out.logits.numpy(), "nll": out.nll.numpy(), "sample": sample.latents.numpy(),
           "decoded": decoded.numpy()}
remote = {"givt": givt, "vae": vae}
"""


def test_folders_load_as_remote_code(tmp_path):
    g, v = Golden("givt_ar"), _cnn_fixture()
    folder = tmp_path / "givt"
    convert_cli(g.params, str(folder), "--model-config", json.dumps(g.model_kwargs))
    convert_cli(v.params, str(tmp_path / "givt_vae"))
    assert "bv_givt_cnn_vae" in open(tmp_path / "givt_vae" / "config.json").read()
    card = open(tmp_path / "givt_vae" / "README.md").read()
    assert "vae.encode(pixel_values)" in card and "ema_params" not in card
    child = run_without_package(tmp_path, folder, _CHILD, {
        "latents": g.inputs["sequence"], "labels": g.inputs["labels"], "vae_latents": v.inputs["latents"]})
    assert np.abs(child["logits"] - g.outputs["logits"]).max() <= TOL
    assert np.abs(child["nll"] - g.outputs["nll"]).max() <= TOL
    assert np.abs(child["decoded"].transpose(0, 2, 3, 1) - v.outputs["decoded"]).max() <= TOL
    local = AutoModel.from_pretrained(str(folder)).generate(class_labels=[1, 2], seed=0, cfg_weight=0.4)
    assert np.allclose(child["sample"], local.latents.numpy(), atol=1e-5)  # same seed, same samples


class _Latents(torch.utils.data.Dataset):
    """Latent sequences whose tokens depend on the class (a GIVT can learn that quickly)."""

    def __init__(self, n=32, seed=0):
        rng = np.random.default_rng(seed)
        self.labels = rng.integers(0, 10, n)
        centers = rng.normal(size=(10, 1, 8)).astype(np.float32) * 2
        self.latents = centers[self.labels] + 0.3 * rng.normal(size=(n, 16, 8)).astype(np.float32)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"latents": torch.from_numpy(self.latents[i]), "class_labels": torch.tensor(self.labels[i])}


def test_trainer_reduces_the_nll(tmp_path):
    """The converted GIVT trains with ``Trainer``: its loss is big_vision's NLL (with label dropout for guidance drawn
    in training mode, as big_vision's trainer does)."""
    g = Golden("givt_ar")
    model = convert_checkpoint(g.params, "proj.givt.givt", g.model_kwargs)
    ds = _Latents()
    batch = {"latents": torch.from_numpy(ds.latents), "class_labels": torch.from_numpy(ds.labels)}

    def nll():
        with torch.no_grad():
            return model.eval()(**batch).loss.item()

    before = nll()
    args = TrainingArguments(output_dir=str(tmp_path / "run"), per_device_train_batch_size=16, num_train_epochs=6,
                             learning_rate=3e-3, logging_steps=5, save_strategy="no", report_to=[], use_cpu=True,
                             seed=0, dataloader_num_workers=0)
    Trainer(model=model, args=args, train_dataset=ds).train()
    after = nll()
    assert after < before - 1.0, (before, after)


def test_masked_training_steps_reduce_the_nll():
    """A MaskGIT GIVT in training mode draws big_vision's training masks itself; its loss (the NLL of the masked
    tokens) trains it."""
    g = Golden("givt_masked")
    model = convert_checkpoint(g.params, "proj.givt.givt", g.model_kwargs)
    ds = _Latents()
    batch = {"latents": torch.from_numpy(ds.latents), "class_labels": torch.from_numpy(ds.labels)}
    full_mask = torch.ones(len(ds), 16, dtype=torch.bool)
    with torch.no_grad():
        before = model.eval()(**batch, input_mask=full_mask).loss.item()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    model.train()
    for _ in range(12):
        loss = model(**batch).loss  # no input_mask: drawn by the training schedule
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = model.eval()(**batch, input_mask=full_mask).loss.item()
    assert after < before - 1.0, (before, after)


def test_zoo_entry_recognised_by_file_name(tmp_path, capsys):
    """A file named like a public VAE gets its zoo entry (family and config) without flags: here the entry's
    full-size config meets the tiny fixture's arrays."""
    from big_vision_hf.cli import main

    path = tmp_path / "vae_imagenet_2012_beta_5e-5_params"
    path.write_bytes(open(_cnn_fixture().params, "rb").read())
    assert main(["convert", str(path), str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "proj.givt.cnn config says filters=128 but the checkpoint arrays have 32" in err


def test_zoo_entries_for_every_public_checkpoint():
    names = {name for name, entry in ZOO.items() if entry.model_name.startswith("proj.givt.")}
    assert names == {
        "GIVT VAE ImageNet beta=1e-5", "GIVT VAE ImageNet beta=2.5e-5", "GIVT VAE ImageNet beta=5e-5",
        "GIVT VAE ImageNet beta=1e-4", "GIVT VAE ImageNet beta=2e-4", "GIVT-Causal ImageNet 256",
        "GIVT-MaskGIT ImageNet 256", "GIVT-MaskGIT ImageNet 512", "GIVT VAE COCO panoptic", "GIVT COCO panoptic",
        "GIVT VAE NYU depth", "GIVT NYU depth"}
    assert find_entry("vae_imagenet_2012_beta_2p5e-5_params").name == "GIVT VAE ImageNet beta=2.5e-5"
    for name in names:
        entry = ZOO[name]
        if entry.model_name == "proj.givt.givt":
            config = BvGivtConfig(**bv_kwargs_to_givt_config(entry.model_config))
            assert config.hidden_size == 1024 and config.fix_square_plus
            if config.encoder_config is None:  # ImageNet: 16-d tokens, 16 mixtures, 1000 classes + CFG
                assert config.out_dim == 16 and config.num_logits == 16 + 2 * 16 * 16
                assert config.label_vocab_size == 1001 + 3 * (config.style == "masked")
                assert config.seq_len == (entry.image_size // 16) ** 2
            else:  # UViM-style: ViT-L/16 encoder at 512 px, one Gaussian per channel, beams
                assert config.encoder_config.num_hidden_layers == 24 and config.encoder_config.image_size == [512, 512]
                assert config.label_vocab_size == 1 and config.ar_generation_config["beam_size"] > 1


def test_masked_style_training_inputs():
    """In training mode a MaskGIT model draws big_vision's training masks (at least min_masking_rate masked)."""
    g = Golden("givt_masked")
    model = convert_checkpoint(g.params, "proj.givt.givt", g.model_kwargs).train()
    torch.manual_seed(0)
    mask, drop = model._training_inputs(4096, 16, torch.zeros(4096), None, None, "cpu")
    # keep ~ U(0, 1 - 0.3), masked fraction cos(pi/2 keep) >= cos(0.35 pi) = 0.45: at least 8 of 16 tokens
    assert mask.shape == (4096, 16) and mask.sum(1).min() >= 8 and mask.sum(1).max() == 16
    assert abs(drop.float().mean().item() - 0.1) < 0.02
