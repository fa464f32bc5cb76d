"""ViT parity with the original big_vision code, through the whole user path.

npz -> `big-vision-hf convert` -> folder -> `AutoModelForImageClassification.from_pretrained` -> forward,
compared with outputs the ORIGINAL JAX code produced for the same random parameters (fp32, <= 1e-4).
Every parameter of the fixtures is random (no zeros or ones), so a dropped parameter cannot match.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForImageClassification

import big_vision_hf  # noqa: F401  registers the Auto classes
from conftest import Golden, convert_cli, max_abs_err, rewrite_npz

TOL = 1e-4
VIT_FIXTURES = ["vit_gap_learn", "vit_map_sincos", "vit_tok", "vit_scan"]


def _convert_and_load(tmp_path, g: Golden, params: str | None = None, attn="eager"):
    import json

    image_hw = g.inputs["image"].shape[1:3]
    out = tmp_path / "converted"
    convert_cli(params or g.params, str(out), "--model-name", "vit", "--model-config", json.dumps(g.model_kwargs),
                "--image-size", *map(str, image_hw))
    return AutoModelForImageClassification.from_pretrained(str(out), attn_implementation=attn).eval()


def _check_outputs(model, g: Golden, label: str):
    with torch.no_grad():
        out = model(g.image_nchw(), output_2d=True, output_hidden_states=True)
    ref = g.outputs
    depth = model.config.num_hidden_layers
    pairs = {
        "logits": out.logits,
        "logits_2d": out.logits_2d,
        "pre_logits": out.pooler_output,
    }
    for i in range(depth):
        pairs[f"encoder/block{i:02d}/+mlp"] = out.hidden_states[i + 1]
    errors = {name: max_abs_err(t, ref[name]) for name, t in pairs.items()}
    worst = max(errors, key=errors.get)
    assert errors[worst] <= TOL, f"{label}: {worst} max abs error {errors[worst]:.2e} > {TOL} ({errors})"
    return errors


@pytest.mark.parametrize("name", VIT_FIXTURES)
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_vit_parity_through_cli(tmp_path, name, attn):
    g = Golden(name)
    model = _convert_and_load(tmp_path, g, attn=attn)
    errors = _check_outputs(model, g, f"{name}/{attn}")
    print(f"{name} [{attn}] max abs error: " + ", ".join(f"{k}={v:.1e}" for k, v in errors.items()))


def test_vit_encoded_and_stem_match(tmp_path):
    """Intermediates by big_vision name: with_posemb -> hidden_states[0], encoded -> last_hidden_state."""
    g = Golden("vit_map_sincos")
    model = _convert_and_load(tmp_path, g)
    with torch.no_grad():
        base = model.vit(g.image_nchw(), output_hidden_states=True)
    assert max_abs_err(base.hidden_states[0], g.outputs["with_posemb"]) <= TOL
    assert max_abs_err(base.last_hidden_state, g.outputs["encoded"]) <= TOL


def _to_loop(arrays):
    out = {}
    for k, v in arrays.items():
        if k.startswith("Transformer/encoderblock/"):
            for i in range(v.shape[0]):
                out[k.replace("encoderblock/", f"encoderblock_{i}/")] = v[i]
        else:
            out[k] = v
    return out


def _to_scan(arrays):
    out, stacked = {}, {}
    for k, v in arrays.items():
        if k.startswith("Transformer/encoderblock_"):
            i, rest = k[len("Transformer/encoderblock_"):].split("/", 1)
            stacked.setdefault(rest, {})[int(i)] = v
        else:
            out[k] = v
    for rest, layers in stacked.items():
        out[f"Transformer/encoderblock/{rest}"] = np.stack([layers[i] for i in sorted(layers)])
    return out


def _to_bf16_void(arrays):
    """bfloat16 stored as numpy void V2, as big_vision writes it (round to nearest even)."""
    out = {}
    for k, v in arrays.items():
        u = v.astype(np.float32).view(np.uint32)
        rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
        out[k] = rounded.view(np.dtype("V2"))
    return out


@pytest.mark.parametrize(
    "name,layout",
    [
        ("vit_scan", _to_loop),
        ("vit_tok", _to_scan),
        ("vit_gap_learn", lambda a: {f"params/{k}": v for k, v in a.items()}),
        ("vit_map_sincos", lambda a: {f"opt/target/{k}": v for k, v in _to_scan(a).items()}),
    ],
    ids=["scan->loop", "loop->scan", "params-prefix", "opt-target+scan"],
)
def test_vit_parity_other_layouts(tmp_path, name, layout):
    g = Golden(name)
    params = rewrite_npz(g.params, str(tmp_path / "rewritten.npz"), layout)
    _check_outputs(_convert_and_load(tmp_path, g, params), g, f"{name} rewritten")


def test_vit_bfloat16_checkpoint(tmp_path):
    """bf16 (void V2) is read exactly: the converted weights equal the bf16-rounded fp32 ones."""
    g = Golden("vit_tok")
    params = rewrite_npz(g.params, str(tmp_path / "bf16.npz"), _to_bf16_void)
    model = _convert_and_load(tmp_path, g, params)
    ref = np.load(g.params)["embedding/kernel"].transpose(3, 2, 0, 1)
    ours = model.vit.embeddings.patch_embedding.weight.detach().numpy()
    # bf16 keeps 8 bits of mantissa: relative rounding error <= 2**-9.
    assert np.all(np.abs(ours - ref) <= np.abs(ref) * 2.0**-8 + 1e-30)
    assert not np.array_equal(ours, ref)  # really went through bf16
    with torch.no_grad():
        logits = model(g.image_nchw()).logits
    assert max_abs_err(logits, g.outputs["logits"]) < 0.05  # bf16 weights: close, not exact


def test_vit_old_checkpoint_layouts(tmp_path):
    """fix_old_checkpoints: pre-Linen names, posemb under Transformer/posembed_input, N+1 posemb with cls."""
    g = Golden("vit_tok")

    def old_layout(a):
        out = {}
        for k, v in a.items():
            k = (k.replace("MultiHeadDotProductAttention_0", "MultiHeadDotProductAttention_1")
                  .replace("LayerNorm_1", "LayerNorm_2").replace("MlpBlock_0", "MlpBlock_3"))
            out[k] = v
        pe, cls = out.pop("pos_embedding"), out["cls"]
        cls_pe = np.full_like(cls, 0.25)
        out["cls"] = cls - cls_pe  # old vit.py added the cls row of the posemb to the cls token
        out["Transformer/posembed_input/pos_embedding"] = np.concatenate([cls_pe, pe], axis=1)
        return out

    params = rewrite_npz(g.params, str(tmp_path / "old.npz"), old_layout)
    _check_outputs(_convert_and_load(tmp_path, g, params), g, "vit_tok old layout")


def test_vit_posemb_resample_at_conversion_and_runtime(tmp_path):
    """--image-size resamples a learned posemb (big_vision resample_posemb = zoom order 1); the same at runtime."""
    import scipy.ndimage

    g = Golden("vit_gap_learn")  # 64x64 / p16 -> 4x4 grid
    out = tmp_path / "hires"
    convert_cli(g.params, str(out), "--model-name", "vit", "--image-size", "96")
    model = AutoModelForImageClassification.from_pretrained(str(out)).eval()
    pe = np.load(g.params)["pos_embedding"]
    ref = scipy.ndimage.zoom(pe.reshape(4, 4, -1), (6 / 4, 6 / 4, 1), order=1).reshape(1, 36, -1)
    ours = model.vit.embeddings.position_embedding.detach().numpy()
    assert np.abs(ours - ref).max() < 1e-5
    lowres = _convert_and_load(tmp_path, g)
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        a = lowres(x, interpolate_pos_encoding=True).logits
        b = model(x).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="interpolate_pos_encoding"):
        lowres(x)


def test_sincos_posemb_any_grid_and_meta_loading(tmp_path):
    """sincos2d is recomputed after meta-device loading and for other grids, as big_vision get_posemb."""
    from big_vision_hf.modeling.modeling_bv_vit import posemb_sincos_2d

    g = Golden("vit_map_sincos")
    model = _convert_and_load(tmp_path, g)  # from_pretrained builds on meta
    torch.testing.assert_close(model.vit.embeddings.position_embedding, posemb_sincos_2d(4, 6, 48))
    pe = posemb_sincos_2d(2, 3, 8)[0]
    omega = 1 / 10000 ** (np.arange(2) / 1)
    assert np.allclose(pe[4].numpy(), np.concatenate([np.sin(1 * omega), np.cos(1 * omega),
                                                       np.sin(1 * omega), np.cos(1 * omega)]), atol=1e-6)
    with torch.no_grad():
        y = model(torch.randn(1, 3, 64, 64)).logits  # 8x8 grid: computed on the fly
    assert torch.isfinite(y).all()
