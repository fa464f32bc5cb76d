"""Jet (``proj.jet.jet``): parity with the original big_vision code through the user path, and the flow's contract.

Golden fixture ``jet`` (``../shared/golden/jet``, big_vision's own ``Model.forward`` / ``Model.inverse``): 6 couplings
(channels, channels, spatial; spatial projections checkerboard and vstripes-inv), ps=4, 16x16 images, random
parameters. Path: npz -> ``big-vision-hf convert`` (in-process CLI) -> folder -> ``AutoModel.from_pretrained`` ->
forward / inverse.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from transformers import AutoModel, Trainer, TrainingArguments

import big_vision_hf  # noqa: F401  registers the Auto classes
from big_vision_hf import BvJetConfig, BvJetModel
from big_vision_hf.conversion import CheckpointError, convert_checkpoint
from big_vision_hf.conversion.api import detect_family
from big_vision_hf.conversion.checkpoint import read_checkpoint
from big_vision_hf.modeling.modeling_bv_jet import spatial_coupling_masks
from conftest import (
    Golden,
    assert_max_abs_errors,
    convert_cli,
    max_abs_err,
    params_prefixed,
    rewrite_npz,
    run_without_package,
)

TOL = 1e-4
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster on a loaded machine


@pytest.fixture(scope="module")
def g() -> Golden:
    return Golden("jet")


def _nchw(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a).permute(0, 3, 1, 2).contiguous()


def _nhwc(t: torch.Tensor) -> np.ndarray:
    return t.detach().permute(0, 2, 3, 1).float().numpy()


def _errors(model, g: Golden) -> dict[str, float]:
    with torch.no_grad():
        out = model(_nchw(g.inputs["image"]))
        x, logdet = model.inverse(_nchw(g.outputs["forward/z"]))
    return {
        "z": max_abs_err(out.z.permute(0, 2, 3, 1), g.outputs["forward/z"]),
        "logdet": max_abs_err(out.logdet, g.outputs["forward/logdet"]),
        "inverse_x": max_abs_err(x.permute(0, 2, 3, 1), g.outputs["inverse/x"]),
        "inverse_logdet": max_abs_err(logdet, g.outputs["inverse/logdet"]),
    }


def _convert_and_load(g: Golden, params: str, folder) -> BvJetModel:
    convert_cli(params, str(folder), "--model-name", "proj.jet.jet", "--model-config", json.dumps(g.model_kwargs))
    return AutoModel.from_pretrained(str(folder)).eval()


def test_jet_parity_through_cli(g, tmp_path):
    folder = tmp_path / "jet"
    model = _convert_and_load(g, g.params, folder)
    assert isinstance(model, BvJetModel)
    config = json.load(open(folder / "config.json"))
    assert config["model_type"] == "bv_jet" and config["bv_model_name"] == "proj.jet.jet"
    assert config["auto_map"]["AutoModel"] == "modeling_bv_jet.BvJetModel"
    assert "model.inverse(out.z)" in (folder / "README.md").read_text()  # the card shows the flow's own usage
    assert (folder / "preprocessor_config.json").exists()
    assert_max_abs_errors("jet fp32", _errors(model, g), TOL)


def test_jet_detected_from_its_arrays(g):
    assert detect_family(read_checkpoint(g.params)) == "proj.jet.jet"


def test_jet_params_prefixed_layout(g, tmp_path):
    params = rewrite_npz(g.params, str(tmp_path / "prefixed.npz"), params_prefixed)
    assert_max_abs_errors("jet params/", _errors(_convert_and_load(g, params, tmp_path / "out"), g), TOL)


def test_jet_bfloat16_checkpoint(g, tmp_path):
    """A bf16 checkpoint (``jet_bf16``: the golden params stored as bfloat16 V2, as big_vision writes them) against
    big_vision's outputs for that very file; the 0/1 permutations survive bf16 exactly."""
    g16 = Golden("jet_bf16")
    model = _convert_and_load(g16, g16.params, tmp_path / "out")
    ref = torch.from_numpy(np.load(g.params)["couplings/dnn/init_proj/kernel"][2].T.copy())
    ours = model.couplings[2].dnn.init_proj.weight.detach()
    assert ours.dtype == torch.float32 and torch.equal(ours, ref.bfloat16().float()) and not torch.equal(ours, ref)
    assert np.array_equal(model.channel_coupling_masks.numpy(), np.load(g.params)["channel_coupling_masks-FREEZE_ME"])
    assert_max_abs_errors("jet bf16 checkpoint", _errors(model, g16), TOL)


def test_jet_bfloat16_model_runs(g):
    """``torch_dtype=bfloat16`` weights: permutations stay exact, log-determinants are accumulated in float32."""
    model = convert_checkpoint(g.params, "proj.jet.jet", g.model_kwargs, dtype=torch.bfloat16)
    with torch.no_grad():
        out = model(_nchw(g.inputs["image"]).bfloat16())
    assert out.z.dtype == torch.bfloat16 and out.logdet.dtype == torch.float32
    assert max_abs_err(out.z.permute(0, 2, 3, 1), g.outputs["forward/z"]) < 0.25
    assert max_abs_err(out.logdet, g.outputs["forward/logdet"]) < 2.0


def test_every_parameter_and_mask_matters(g):
    """Perturbing any tensor (parameters and the frozen permutations) changes the output: none is ignored. (The key
    bias is exempt: it adds ``q . b`` to a whole softmax row, which softmax ignores, in big_vision too.)"""
    model = convert_checkpoint(g.params, "proj.jet.jet", g.model_kwargs)
    x = _nchw(g.inputs["image"])
    with torch.no_grad():
        ref = model(x)
        for name, tensor in model.state_dict().items():
            if name.endswith("k_proj.bias"):
                continue
            saved = tensor.clone()
            if "coupling_masks" in name:  # swap two columns of one coupling's permutation (a zero placeholder
                layer = int(torch.nonzero(tensor.flatten(1).any(1))[0])  # matrix would stay a no-op)
                tensor[layer] = tensor[layer][:, torch.tensor([1, 0, *range(2, tensor.shape[-1])])]
            else:
                tensor.add_(0.05 * torch.randn_like(tensor))
            out = model(x)
            tensor.copy_(saved)
            changed = (out.z - ref.z).abs().max() + (out.logdet - ref.logdet).abs().max()
            assert changed > 1e-5, f"perturbing {name} does not change the output"


def test_bits_per_dim_is_big_vision_formula(g):
    """``_bits_per_dim`` of big_vision's jet trainer on the golden ``z``/``logdet`` (no dequantisation noise)."""
    model = convert_checkpoint(g.params, "proj.jet.jet", g.model_kwargs).eval()
    z, logdet = g.outputs["forward/z"].astype(np.float64), g.outputs["forward/logdet"].astype(np.float64)
    dims = np.prod(z.shape[1:])
    nll = (0.5 * z**2 + 0.5 * np.log(2 * np.pi) + np.log(127.5)).reshape(len(z), -1).sum(1)
    expected = (nll - logdet) / (np.log(2) * dims)
    with torch.no_grad():
        out = model(_nchw(g.inputs["image"]))
        bits = model.bits_per_dim(_nchw(g.inputs["image"]), dequantize=False)
        ll = model.log_likelihood(_nchw(g.inputs["image"]), dequantize=False)
    assert np.abs(bits.numpy() - expected).max() < 1e-5
    assert abs(out.loss.item() - expected.mean()) < 1e-5
    assert np.abs(ll.numpy() + expected * np.log(2) * dims).max() < 1e-2


def test_dequantization_noise(g):
    """Training mode (and ``dequantize=True``) adds U[0, 1/127.5) noise, reproducibly with a generator; eval mode
    is deterministic."""
    model = convert_checkpoint(g.params, "proj.jet.jet", g.model_kwargs)
    x = _nchw(g.inputs["image"])
    with torch.no_grad():
        plain = model.eval()(x).z
        assert torch.equal(plain, model(x).z)
        a = model(x, dequantize=True, generator=torch.Generator().manual_seed(1))
        b = model.train()(x, generator=torch.Generator().manual_seed(1))
        model.eval()
        noise, _ = model.inverse(a.z)
    assert torch.equal(a.z, b.z) and not torch.equal(a.z, plain)
    delta = noise - x
    assert delta.min() > -1e-4 and delta.max() < 1 / 127.5 + 1e-4 and delta.mean() > 0.2 / 127.5


def test_inverse_roundtrip_and_logdet_symmetry(g):
    model = convert_checkpoint(g.params, "proj.jet.jet", g.model_kwargs).eval()
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        out = model(x, return_loss=False)
        back, logdet = model.inverse(out.z)
    assert out.loss is None and out.bits_per_dim is None
    assert (back - x).abs().max() < 1e-4 and (logdet + out.logdet).abs().max() < 1e-3


@pytest.mark.parametrize("proj", ["checkerboard", "checkerboard-inv", "vstripes", "vstripes-inv", "hstripes",
                                  "hstripes-inv"])
def test_fresh_spatial_masks_are_big_vision_permutations(proj):
    """``get_spatial_coupling_init``: a permutation whose first half is the conditioning tokens (a 4x4 grid here)."""
    config = BvJetConfig(num_couplings=1, kinds=["spatial"], spatial_coupling_projs=[proj], image_size=16,
                         patch_size=4, hidden_size=8, num_attention_heads=2)
    w = spatial_coupling_masks(config)[0]
    assert torch.equal(w.sum(0), torch.ones(16)) and torch.equal(w.sum(1), torch.ones(16))
    first = w[:, :8].argmax(0).tolist()  # tokens (row-major on the 4x4 grid) that condition the others
    rows, cols = [t // 4 for t in first], [t % 4 for t in first]
    parity = {"checkerboard": [(r + c) % 2 for r, c in zip(rows, cols)], "vstripes": [c % 2 for c in cols],
              "hstripes": [r % 2 for r in rows]}[proj.removesuffix("-inv")]
    assert set(parity) == ({1} if proj.endswith("-inv") else {0})


def test_fresh_model_matches_golden_spatial_masks(g):
    """A freshly initialised model draws exactly big_vision's spatial permutations (checkerboard, vstripes-inv)."""
    config = convert_checkpoint(g.params, "proj.jet.jet", g.model_kwargs).config
    fresh = BvJetModel(config)
    assert torch.equal(fresh.spatial_coupling_masks, torch.from_numpy(np.load(g.params)[
        "spatial_coupling_masks-FREEZE_ME"]))
    channel = fresh.channel_coupling_masks
    assert torch.equal(channel.sum(-1)[[0, 1, 3, 4]], torch.ones(4, 48)) and not channel[[2, 5]].any()


def test_jet_clear_errors(g, tmp_path):
    kwargs = g.model_kwargs
    with pytest.raises(CheckpointError, match="kinds"):
        convert_checkpoint(g.params, "proj.jet.jet", {**kwargs, "kinds": ["channels", "spatial"]})
    with pytest.raises(CheckpointError, match="ps=3"):
        convert_checkpoint(g.params, "proj.jet.jet", {**kwargs, "ps": 3})
    with pytest.raises(CheckpointError, match="emb_dim|hidden_size"):
        convert_checkpoint(g.params, "proj.jet.jet", {**kwargs, "emb_dim": 64})
    with pytest.raises(CheckpointError, match="unknown big_vision proj.jet.jet option"):
        convert_checkpoint(g.params, "proj.jet.jet", {**kwargs, "width": 64})
    ctx = rewrite_npz(g.params, str(tmp_path / "ctx.npz"), lambda a: {
        **a, "couplings/dnn/MultiHeadDotProductAttention_0/query/kernel": np.zeros((6, 32, 2, 16), np.float32)})
    with pytest.raises(CheckpointError, match="class-conditional"):
        convert_checkpoint(ctx, "proj.jet.jet", kwargs)
    model = convert_checkpoint(g.params, "proj.jet.jet", kwargs)
    with pytest.raises(ValueError, match=r"\[batch, 3, 16, 16\]"):
        model(torch.zeros(1, 3, 32, 32))


_CHILD = """
from transformers import AutoModel
model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
with torch.no_grad():
    out = model(torch.from_numpy(inputs["image"]))
    x, logdet = model.inverse(out.z)
outputs, remote = {"z": out.z.numpy(), "logdet": out.logdet.numpy(), "x": x.numpy()}, {"model": model}
"""


def test_jet_folder_loads_as_remote_code(g, tmp_path):
    folder = tmp_path / "jet"
    convert_cli(g.params, str(folder), "--model-name", "proj.jet.jet", "--model-config", json.dumps(g.model_kwargs))
    child = run_without_package(tmp_path, folder, _CHILD, {"image": _nchw(g.inputs["image"]).numpy()})
    assert np.abs(child["z"].transpose(0, 2, 3, 1) - g.outputs["forward/z"]).max() <= TOL
    assert np.abs(child["logdet"] - g.outputs["forward/logdet"]).max() <= TOL
    assert np.abs(child["x"].transpose(0, 2, 3, 1) - g.inputs["image"]).max() <= TOL


class _Images(torch.utils.data.Dataset):
    """8-bit images in [-1, 1] with structure a flow can learn quickly (smooth gradients plus a little noise)."""

    def __init__(self, n=16, seed=0):
        rng = np.random.default_rng(seed)
        ramp = np.linspace(-1, 1, 16, dtype=np.float32)
        base = ramp[None, :, None] * ramp[None, None, :] * rng.uniform(0.5, 1, (n, 1, 1))[:, None]
        pixels = np.round((np.repeat(base, 3, axis=1) + rng.normal(0, 0.05, (n, 3, 16, 16)) + 1) * 127.5)
        self.x = torch.from_numpy(np.clip(pixels, 0, 255) / 127.5 - 1).float()

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"pixel_values": self.x[i]}


def test_trainer_reduces_bits_per_dim(g, tmp_path):
    """The converted flow trains with ``Trainer``: its loss is the bits per dimension (dequantised in training)."""
    folder = tmp_path / "jet"
    model = _convert_and_load(g, g.params, folder)
    ds = _Images()
    batch = torch.stack([ds[i]["pixel_values"] for i in range(len(ds))])
    before = model.eval().bits_per_dim(batch, generator=torch.Generator().manual_seed(0)).mean().item()
    args = TrainingArguments(output_dir=str(tmp_path / "run"), per_device_train_batch_size=8, num_train_epochs=8,
                             learning_rate=1e-3, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
                             seed=0, dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, train_dataset=ds, eval_dataset=ds)
    trainer.train()
    after = model.eval().bits_per_dim(batch, generator=torch.Generator().manual_seed(0)).mean().item()
    assert math.isfinite(after) and after < before - 0.5, (before, after)
    assert trainer.evaluate()["eval_loss"] == pytest.approx(after, abs=0.05)  # eval loss = bits per dim
    # The permutations are buffers: training leaves them alone.
    assert torch.equal(model.channel_coupling_masks, torch.from_numpy(np.load(g.params)[
        "channel_coupling_masks-FREEZE_ME"]))
