"""FlexiViT: parity with the original big_vision code at three patch sizes, the PI-resize invariant, reloading.

The fixture's outputs come from the ORIGINAL ``big_vision.models.proj.flexi.vit`` (commit 0127fb6) on random
parameters (stored patch 12, posemb 4x4, 48px), called with ``seqhw`` 4, 6 and 3 (patch 12, 8 and 16: kernel
kept, downsampled, upsampled; posemb kept, upsampled, downsampled with antialias). Our model is converted,
saved, reloaded through the Auto classes and compared (fp32, <= 1e-4).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F
from transformers import AutoModel, AutoModelForImageClassification

import big_vision_hf  # noqa: F401  registers the Auto classes
from big_vision_hf import BvFlexiViTConfig, BvFlexiViTForImageClassification, BvFlexiViTModel
from big_vision_hf.conversion import CheckpointError, convert_checkpoint
from big_vision_hf.modeling.modeling_bv_flexivit import resample_patchemb
from conftest import Golden, max_abs_err

TOL = 1e-4


@pytest.fixture(scope="module")
def g() -> Golden:
    return Golden("flexi_vit")


@pytest.fixture(scope="module")
def reloaded(g, tmp_path_factory):
    """(in-memory converted model, the same after save_pretrained + AutoModelForImageClassification)."""
    model = convert_checkpoint(g.params, "proj.flexi.vit", g.model_kwargs)
    folder = tmp_path_factory.mktemp("flexi") / "converted"
    model.save_pretrained(folder)
    return model, AutoModelForImageClassification.from_pretrained(str(folder)).eval(), folder


def _calls(g: Golden):
    return list(zip(g.config["apply_kwargs"], g.config["outputs_prefix_per_call"]))


def _errors(model, g: Golden, seqhw: int, prefix: str) -> dict[str, float]:
    x = g.image_nchw()
    with torch.no_grad():
        out = model(x, seqhw=seqhw, output_2d=True)
        base = model.vit(x, seqhw=seqhw, output_hidden_states=True)
        patch = model.vit.embeddings.patch_size_for(tuple(x.shape[-2:]), seqhw=seqhw)
        kernel = model.vit.embeddings.resampled_kernel(patch).permute(2, 3, 1, 0)  # OIHW -> big_vision HWIO
    pairs = {
        "logits": out.logits,
        "logits_2d": out.logits_2d,
        "pre_logits": out.pooler_output,
        "encoded": base.last_hidden_state,
        "with_posemb": base.hidden_states[0][:, 1:],  # tok pool: [cls] is prepended after the posemb
        "resampled_embedding_kernel": kernel,
    }
    return {name: max_abs_err(t, g.outputs[prefix + name]) for name, t in pairs.items()}


def test_flexivit_parity_after_save_and_reload(g, reloaded):
    _, model, _ = reloaded
    assert isinstance(model, BvFlexiViTForImageClassification)
    assert model.config.patch_size == [12, 12] and model.config.posemb_size == [4, 4]
    report, worst = [], (0.0, "")
    for kwargs, prefix in _calls(g):
        errors = _errors(model, g, kwargs["seqhw"], prefix)
        report.append(f"seqhw={kwargs['seqhw']}: " + ", ".join(f"{k}={v:.1e}" for k, v in errors.items()))
        name = max(errors, key=errors.get)
        worst = max(worst, (errors[name], prefix + name))
    print("flexi_vit max abs error:\n  " + "\n  ".join(report))
    assert worst[0] <= TOL, f"{worst[1]} max abs error {worst[0]:.2e} > {TOL}\n" + "\n".join(report)


def test_flexivit_patch_size_and_seqhw_agree(g, reloaded):
    """``patch_size=p`` equals ``seqhw=48 // p``; ``config.seqhw`` is the default; both at once is an error."""
    _, model, _ = reloaded
    x = g.image_nchw()
    with torch.no_grad():
        for seqhw, patch in ((4, 12), (6, 8), (3, (16, 16))):
            torch.testing.assert_close(model(x, patch_size=patch).logits, model(x, seqhw=seqhw).logits, rtol=0, atol=0)
        native = model(x).logits  # default: the stored patch size (12)
        err = max_abs_err(native, g.outputs["seqhw4/logits"])
        assert err <= TOL, f"default patch size: logits max abs error {err:.2e} > {TOL}"
        model.config.seqhw = [6, 6]
        try:
            err = max_abs_err(model(x).logits, g.outputs["seqhw6/logits"])
        finally:
            model.config.seqhw = None
        assert err <= TOL, f"config.seqhw=6: logits max abs error {err:.2e} > {TOL}"
        with pytest.raises(ValueError, match="not both"):
            model(x, patch_size=8, seqhw=6)
        with pytest.raises(ValueError, match="does not fit"):
            model(x, patch_size=64)


def test_flexivit_meta_reload_equals_in_memory(g, reloaded):
    """from_pretrained (built on the meta device) computes exactly what the converted in-memory model does."""
    memory, model, folder = reloaded
    x = g.image_nchw()
    with torch.no_grad():
        for patch in (12, 8, 16, (6, 9)):
            a, b = memory(x, patch_size=patch, output_2d=True), model(x, patch_size=patch, output_2d=True)
            torch.testing.assert_close(b.logits, a.logits, rtol=0, atol=0)
            torch.testing.assert_close(b.logits_2d, a.logits_2d, rtol=0, atol=0)
        base = AutoModel.from_pretrained(str(folder)).eval()  # the backbone of the same folder
        assert isinstance(base, BvFlexiViTModel)
        err = max_abs_err(base(x, seqhw=3).pooler_output, g.outputs["seqhw3/pre_logits"])
    assert err <= TOL, f"AutoModel seqhw=3 pre_logits max abs error {err:.2e} > {TOL}"


def test_flexivit_sincos_posemb_after_meta_reload(tmp_path):
    """A sincos2d posemb is a buffer computed at posemb_size (recomputed after meta loading), then resized."""
    config = BvFlexiViTConfig.from_variant(
        "mu", patch_size=8, posemb_size=(3, 4), image_size=(24, 32), posemb="sincos2d", pool_type="map", num_labels=3
    )
    torch.manual_seed(0)
    model = BvFlexiViTForImageClassification(config).eval()
    model.save_pretrained(tmp_path / "sincos")
    loaded = AutoModelForImageClassification.from_pretrained(str(tmp_path / "sincos")).eval()
    x = torch.randn(2, 3, 24, 32)
    with torch.no_grad():
        for patch in (8, 4, (12, 16)):
            torch.testing.assert_close(loaded(x, patch_size=patch).logits, model(x, patch_size=patch).logits,
                                       rtol=0, atol=0)


def _bilinear(x: torch.Tensor, hw) -> torch.Tensor:
    """``tf.image.resize(x, hw, "bilinear")`` (TF2: half-pixel centres, no antialias), NCHW."""
    return F.interpolate(x, size=tuple(hw), mode="bilinear", align_corners=False, antialias=False)


def _check_patch_emb_resize(old_shape, new_shape, n_patches=20):
    """big_vision flexi vit_test: a bilinearly resized patch embeds as before with the PI-resized kernel."""
    out_ch, in_ch, *old_hw = old_shape
    new_hw = new_shape[2:]
    gen = torch.Generator().manual_seed(0)
    patches = torch.randn(n_patches, in_ch, *old_hw, generator=gen, dtype=torch.float64)
    kernel = torch.randn(*old_shape, generator=gen, dtype=torch.float64)
    old = F.conv2d(patches, kernel, stride=tuple(old_hw))
    resampled = resample_patchemb(kernel, new_hw)
    assert tuple(resampled.shape) == tuple(new_shape) and resampled.dtype == kernel.dtype
    new = F.conv2d(_bilinear(patches, new_hw), resampled, stride=tuple(new_hw))
    assert old.shape == new.shape
    np.testing.assert_allclose(new.numpy(), old.numpy(), rtol=1e-1, atol=1e-4,  # vit_test.py's tolerances
                               err_msg=f"{old_shape} -> {new_shape}")


def test_resample_patchemb_preserves_embedding_square():
    sizes = [16, 15, 12, 10, 8, 5]  # a subset of vit_test.py's grid (48 ... 5), to stay fast
    for s in sizes:
        for t in sizes:
            if s <= t:  # upsampling the patch (big_vision: downsampling cannot be exact)
                _check_patch_emb_resize((16, 3, s, s), (16, 3, t, t))


def test_resample_patchemb_preserves_embedding_rectangular_and_channels():
    _check_patch_emb_resize((16, 3, 8, 10), (16, 3, 10, 12))
    _check_patch_emb_resize((16, 3, 8, 6), (16, 3, 9, 15))
    _check_patch_emb_resize((16, 3, 8, 6), (16, 3, 15, 9))
    for c in (1, 3, 10):
        _check_patch_emb_resize((16, c, 8, 10), (16, c, 10, 12))


def test_resample_patchemb_downsampling_shape_and_dtype():
    for t in (4, 5, 6, 7):
        for dtype in (torch.float32, torch.bfloat16):
            kernel = torch.randn(16, 3, 8, 8).to(dtype)
            out = resample_patchemb(kernel, (t, t))
            assert tuple(out.shape) == (16, 3, t, t) and out.dtype == dtype


def test_flexivit_trains_through_the_resized_kernel(g, reloaded):
    memory, _, _ = reloaded
    model = BvFlexiViTForImageClassification(memory.config)
    model.load_state_dict(memory.state_dict())
    model.train()
    loss = model(g.image_nchw(), labels=torch.tensor([1, 2]), patch_size=16).loss
    loss.backward()
    grad = model.vit.embeddings.patch_embedding.weight.grad
    assert grad is not None and grad.abs().sum() > 0


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"posemb_size": [3, 3]}, "16 positions"),
        ({"patch_size": [16, 16]}, "patch_size"),
        ({"rep_size": True}, "rep_size"),
        ({"scan": True}, "unknown big_vision FlexiViT option"),
    ],
)
def test_flexivit_converter_rejects_mismatched_kwargs(g, kwargs, match):
    with pytest.raises(CheckpointError, match=match):
        convert_checkpoint(g.params, "proj.flexi.vit", {**g.model_kwargs, **kwargs})


def test_flexivit_remote_code_is_flat():
    """The exported code is the FlexiViT files plus the ViT ones they reuse, with sibling imports only."""
    from big_vision_hf.conversion.export import remote_code_files

    files = remote_code_files("big_vision_hf.modeling.modeling_bv_flexivit",
                              "big_vision_hf.configuration.configuration_bv_flexivit")
    assert sorted(files) == ["configuration_bv_flexivit.py", "configuration_bv_vit.py", "loading.py",
                             "modeling_bv_flexivit.py", "modeling_bv_vit.py"]
    assert not any("from .." in source for source in files.values())


@pytest.mark.parametrize("shape", [(12, 1), (2, 1), (1, 64), (3, 7), (16, 16)])
def test_posemb_resize_is_jax_resize_on_every_grid(shape):
    """flexi ``jax.image.resize(pe, ..., "linear")``: references made with jax (``fixtures/naflex_posemb_resize``),
    1-wide grids included, where torch's ``F.interpolate(antialias=True)`` is wrong."""
    import os

    from big_vision_hf.modeling.modeling_bv_flexivit import resize_posemb

    ref = np.load(os.path.join(os.path.dirname(__file__), "fixtures", "naflex_posemb_resize", "posemb_resize.npz"))
    posemb = torch.from_numpy(ref["posemb_4x4"]).reshape(1, 16, -1)
    ours = resize_posemb(posemb, (4, 4), shape).reshape(*shape, -1)
    err = float(np.abs(ours.numpy() - ref[f"posemb_4x4_to_{shape[0]}x{shape[1]}"]).max())
    assert err <= 1e-6, f"{shape}: {err:.2e}"
