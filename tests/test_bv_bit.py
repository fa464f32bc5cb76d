"""BiT ResNets (``bit_paper`` ResNet-v2, ``bit`` ResNet-v1): parity with the original big_vision code, layouts,
TF SAME padding on odd sizes, converter errors, training.

The fixtures' outputs come from the ORIGINAL ``big_vision.models.bit_paper`` / ``big_vision.models.bit`` (width 0.5,
depth (2, 1), 32x32 inputs) on random parameters; our model is converted, saved, reloaded through the Auto classes and
compared (fp32, <= 1e-4).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoModelForImageClassification

import big_vision_hf  # noqa: F401  registers the Auto classes
from big_vision_hf import BvBiTConfig, BvBiTForImageClassification, BvBiTModel
from big_vision_hf.conversion import CheckpointError, convert_checkpoint, detect_family, read_checkpoint
from conftest import Golden, convert_cli, max_abs_err, rewrite_npz

TOL = 1e-4
FAMILIES = ["bit_paper", "bit"]


def _convert(g: Golden, params: str | None = None, name: str | None = None, **kwargs):
    return convert_checkpoint(params or g.params, name or g.name, {**g.model_kwargs, **kwargs})


def _nhwc(t: torch.Tensor) -> torch.Tensor:
    return t.permute(0, 2, 3, 1)


def _outputs_by_bv_name(model: BvBiTForImageClassification, image: torch.Tensor) -> dict[str, torch.Tensor]:
    """Our tensors under big_vision ``out`` names (channels last, as big_vision)."""
    captured, hooks = {}, []
    for i, stage in enumerate(model.bit.stages):
        for j, unit in enumerate(stage.layers):  # bit_paper out["stage{i}"]["unit{j:02d}"]
            key = f"stage{i + 1}/unit{j + 1:02d}"
            hooks.append(unit.register_forward_hook(lambda m, a, o, k=key: captured.update({k: o})))
    if model.bit.norm is not None:
        hooks.append(model.bit.norm.register_forward_hook(lambda m, a, o: captured.update(norm_pre_head=o)))
    with torch.no_grad():
        out = model(image, output_2d=True, output_hidden_states=True)
    for hook in hooks:
        hook.remove()
    assert len(out.hidden_states) == model.config.num_stages + 1
    pairs = {
        "logits": out.logits,
        "logits_2d": out.logits_2d,
        "pre_logits": out.pooler_output,
        "stem": _nhwc(out.hidden_states[0]),
        **{f"stage{i}": _nhwc(out.hidden_states[i]) for i in range(1, model.config.num_stages + 1)},
        **{k: _nhwc(v) for k, v in captured.items()},
    }
    with torch.no_grad():
        pairs["pre_logits_2d"] = model.bit(image, output_2d=True).pre_logits_2d
    return pairs


@pytest.mark.parametrize("name", FAMILIES)
def test_bit_parity_after_save_and_reload(tmp_path, name):
    g = Golden(name)
    model = _convert(g)
    assert isinstance(model, BvBiTForImageClassification)
    assert model.config.architecture == {"bit_paper": "resnetv2", "bit": "resnetv1"}[name]
    assert model.config.depths == [2, 1] and model.config.width_factor == 0.5 and model.config.num_labels == 10
    model.save_pretrained(tmp_path / name)
    model = AutoModelForImageClassification.from_pretrained(str(tmp_path / name)).eval()
    assert isinstance(model, BvBiTForImageClassification)

    ours = _outputs_by_bv_name(model, g.image_nchw())
    missing = sorted(set(g.outputs) - set(ours))
    assert not missing, f"fixture outputs not compared: {missing}"
    errors = {k: max_abs_err(ours[k], ref) for k, ref in g.outputs.items()}
    report = ", ".join(f"{k}={v:.1e}" for k, v in errors.items())
    print(f"{name} max abs error: {report}")
    worst = max(errors, key=errors.get)
    assert errors[worst] <= TOL, f"{name}: {worst} max abs error {errors[worst]:.2e} > {TOL} ({report})"

    base = AutoModel.from_pretrained(str(tmp_path / name)).eval()  # the backbone of the same folder
    assert isinstance(base, BvBiTModel)
    with torch.no_grad():
        err = max_abs_err(base(g.image_nchw()).pooler_output, g.outputs["pre_logits"])
    assert err <= TOL, f"{name}: AutoModel pre_logits max abs error {err:.2e} > {TOL}"


def test_bit_hidden_state_selection_and_tuples():
    g = Golden("bit")
    model = _convert(g)
    with torch.no_grad():
        full = model(g.image_nchw(), output_hidden_states=True)
        last = model(g.image_nchw(), output_hidden_states=[-1])  # negative indices count stages (num_stages)
        as_tuple = model(g.image_nchw(), return_dict=False)
    assert last.hidden_states[-1] is not None and last.hidden_states[0] is None
    torch.testing.assert_close(last.hidden_states[-1], full.hidden_states[-1], rtol=0, atol=0)
    torch.testing.assert_close(as_tuple[0], full.logits, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------------
# Layouts
# ---------------------------------------------------------------------------------------------------------


def _to_big_transfer(arrays: dict) -> dict:
    """The original big_transfer layout (``gs://bit_models/BiT-*.npz``) that big_vision
    ``bit_paper.maybe_convert_big_transfer_format`` reads: squeezed GN ``gamma``/``beta``, a 1x1-conv head, and in one
    place the ``standardized_conv2d_<n>`` naming some files have."""
    out = {}
    for name, value in arrays.items():
        parts = name.split("/")
        if name == "root_block/conv_root/kernel":
            out["resnet/root_block/standardized_conv2d/kernel"] = value
        elif parts[0] == "norm-pre-head":
            out[f"resnet/group_norm/{'gamma' if parts[1] == 'scale' else 'beta'}"] = value.reshape(-1)
        elif name == "head/kernel":
            out["resnet/head/conv2d/kernel"] = value[None, None]
        elif name == "head/bias":
            out["resnet/head/conv2d/bias"] = value
        else:
            block, unit, module, param = parts
            if module == "conv_proj":
                out[f"resnet/{block}/{unit}/a/proj/standardized_conv2d/kernel"] = value
                continue
            group = "abc"[int(module[-1]) - 1]
            if module.startswith("conv"):
                odd = (block, unit, group) == ("block1", "unit02", "b")
                conv = "standardized_conv2d_3" if odd else "standardized_conv2d"
                out[f"resnet/{block}/{unit}/{group}/{conv}/kernel"] = value
            else:
                gn_param = "gamma" if param == "scale" else "beta"
                out[f"resnet/{block}/{unit}/{group}/group_norm/{gn_param}"] = value.reshape(-1)
    return out


def test_bit_paper_big_transfer_layout_gives_same_logits(tmp_path):
    g = Golden("bit_paper")
    legacy = rewrite_npz(g.params, str(tmp_path / "BiT-S-R50x1.npz"), _to_big_transfer)
    names = np.load(legacy).files
    assert "resnet/block1/unit01/a/proj/standardized_conv2d/kernel" in names
    assert len(names) == len(np.load(g.params).files)
    assert detect_family(read_checkpoint(legacy)) == "bit_paper"
    model = convert_checkpoint(legacy, None, g.model_kwargs)  # family detected from the arrays
    with torch.no_grad():
        logits = model(g.image_nchw()).logits
        reference = _convert(g)(g.image_nchw()).logits
    torch.testing.assert_close(logits, reference, rtol=0, atol=0)
    err = max_abs_err(logits, g.outputs["logits"])
    assert err <= TOL, f"big_transfer layout logits max abs error {err:.2e} > {TOL}"


def test_bit_unsqueezed_group_norm_layout_gives_same_logits(tmp_path):
    """Old linen stored GN params as ``(1, 1, 1, C)``; big_vision ``bit.fix_old_checkpoints`` squeezes them."""
    g = Golden("bit")
    old = rewrite_npz(g.params, str(tmp_path / "old.npz"),
                      lambda a: {k: v.reshape(1, 1, 1, -1) if "/gn" in f"/{k}" else v for k, v in a.items()})
    assert np.load(old)["block1/unit1/gn3/scale"].shape == (1, 1, 1, 128)
    with torch.no_grad():
        logits = _convert(g, old)(g.image_nchw()).logits
        reference = _convert(g)(g.image_nchw()).logits
    torch.testing.assert_close(logits, reference, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------------
# Odd input sizes: an independent float64 NumPy reference written from the big_vision code
# ---------------------------------------------------------------------------------------------------------


def _same_pads(size: int, k: int, s: int) -> tuple[int, int]:
    """TF SAME: output ceil(size / s); the padding that needs goes total // 2 before, the rest after."""
    total = max((int(np.ceil(size / s)) - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def _np_conv(x, w, stride=1, pad=None):
    """NHWC x HWIO; ``pad=None`` is TF SAME, an int pads symmetrically."""
    kh, kw = w.shape[:2]
    pads = [_same_pads(x.shape[1], kh, stride), _same_pads(x.shape[2], kw, stride)] if pad is None else [(pad, pad)] * 2
    x = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    oh, ow = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], oh, ow, w.shape[3]))
    for i in range(kh):
        for j in range(kw):
            out += x[:, i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride] @ w[i, j]
    return out


def _np_maxpool(x, pads):
    x = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=-np.inf)
    oh, ow = (x.shape[1] - 3) // 2 + 1, (x.shape[2] - 3) // 2 + 1
    windows = [x[:, i:i + 2 * (oh - 1) + 1:2, j:j + 2 * (ow - 1) + 1:2] for i in range(3) for j in range(3)]
    return np.max(windows, axis=0)


def _np_gn(x, p, name, eps):
    n, h, w, c = x.shape
    g = x.reshape(n, h, w, 32, c // 32)
    g = (g - g.mean(axis=(1, 2, 4), keepdims=True)) / np.sqrt(g.var(axis=(1, 2, 4), keepdims=True) + eps)
    return g.reshape(x.shape) * p[f"{name}/scale"].reshape(-1) + p[f"{name}/bias"].reshape(-1)


def _np_bit(p, x, v1: bool):
    """big_vision ``bit.Model`` (v1) or ``bit_paper.Model`` (v2) forward in float64, from the big_vision names."""
    relu = lambda t: np.maximum(t, 0)  # noqa: E731

    def ws(name):
        w = p[f"{name}/kernel"]
        w = w - w.mean(axis=(0, 1, 2))
        return w / (w.std(axis=(0, 1, 2)) + 1e-5) if v1 else w / np.sqrt((w**2).mean(axis=(0, 1, 2)) + 1e-10)

    gn = lambda t, name: _np_gn(t, p, name, 1e-6 if v1 else 1e-5)  # noqa: E731
    if v1:
        x = relu(gn(_np_conv(x, ws("conv_root"), 2), "gn_root"))
        x = _np_maxpool(x, [_same_pads(x.shape[1], 3, 2), _same_pads(x.shape[2], 3, 2)])
    else:
        x = _np_maxpool(_np_conv(x, ws("root_block/conv_root"), 2, pad=3), [(1, 1), (1, 1)])
    stages = sorted({k.split("/")[0] for k in p if k.startswith("block")})
    for b, block in enumerate(stages):
        for u, unit in enumerate(sorted({k.split("/")[1] for k in p if k.startswith(block + "/")})):
            s, pre = (2 if b and not u else 1), f"{block}/{unit}"
            if v1:
                res = x
                if f"{pre}/conv_proj/kernel" in p:
                    res = gn(_np_conv(x, ws(f"{pre}/conv_proj"), s), f"{pre}/gn_proj")
                y = relu(gn(_np_conv(x, ws(f"{pre}/conv1")), f"{pre}/gn1"))
                y = relu(gn(_np_conv(y, ws(f"{pre}/conv2"), s), f"{pre}/gn2"))
                x = relu(res + gn(_np_conv(y, ws(f"{pre}/conv3")), f"{pre}/gn3"))
            else:
                y = relu(gn(x, f"{pre}/gn1"))
                res = _np_conv(y, ws(f"{pre}/conv_proj"), s, pad=0) if f"{pre}/conv_proj/kernel" in p else x
                y = relu(gn(_np_conv(y, ws(f"{pre}/conv1"), pad=0), f"{pre}/gn2"))
                y = relu(gn(_np_conv(y, ws(f"{pre}/conv2"), s, pad=1), f"{pre}/gn3"))
                x = res + _np_conv(y, ws(f"{pre}/conv3"), pad=0)
    if not v1:
        x = relu(gn(x, "norm-pre-head"))
    return x.mean(axis=(1, 2)) @ p["head/kernel"] + p["head/bias"], x


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("size", [(33, 31), (30, 35)])
def test_bit_odd_sizes_match_float64_reference(name, size):
    g = Golden(name)
    params = {k: v.astype(np.float64) for k, v in np.load(g.params).items()}
    image = np.random.default_rng(0).uniform(-1, 1, (2, *size, 3))
    ref_logits, ref_2d = _np_bit(params, image, v1=name == "bit")
    if name == "bit":  # SAME: each of the three stride-2 ops rounds up (33 -> 17 -> 9 -> 5)
        assert list(ref_2d.shape[1:3]) == [-(-s // 8) for s in size]
    model = _convert(g)
    x = torch.from_numpy(image).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        logits, pre_logits_2d = model(x).logits, model.bit(x, output_2d=True).pre_logits_2d
    assert pre_logits_2d.shape == ref_2d.shape
    errors = {"logits": max_abs_err(logits, ref_logits), "pre_logits_2d": max_abs_err(pre_logits_2d, ref_2d)}
    worst = max(errors, key=errors.get)
    assert errors[worst] <= TOL, f"{name} {size}: {worst} max abs error {errors[worst]:.2e} > {TOL} ({errors})"


# ---------------------------------------------------------------------------------------------------------
# Converter errors (one line each)
# ---------------------------------------------------------------------------------------------------------


def test_bit_detect_family_from_arrays():
    assert detect_family(read_checkpoint(Golden("bit").params)) == "bit"
    assert detect_family(read_checkpoint(Golden("bit_paper").params)) == "bit_paper"


@pytest.mark.parametrize("name, other", [("bit", "bit_paper"), ("bit_paper", "bit")])
def test_bit_rejects_the_other_family(name, other):
    with pytest.raises(CheckpointError) as e:
        convert_checkpoint(Golden(other).params, name, {"num_classes": 10})
    msg = str(e.value)
    assert "\n" not in msg and f"not a big_vision BiT ({name}) checkpoint" in msg and "conv_root/kernel" in msg, msg


def test_bit_rejects_vit_checkpoint():
    with pytest.raises(CheckpointError) as e:
        convert_checkpoint(Golden("vit_gap_learn").params, "bit_paper", {})
    assert "\n" not in str(e.value) and "root_block/conv_root/kernel" in str(e.value), str(e.value)


@pytest.mark.parametrize("name, drop, needle", [
    ("bit", "block1/unit2/gn3/scale", "bit.stages.0.layers.1.norm3.weight"),
    ("bit_paper", "block2/unit01/conv_proj/kernel", "bit.stages.1.layers.0.conv_proj.weight"),
])
def test_bit_missing_array(tmp_path, name, drop, needle):
    g = Golden(name)
    bad = rewrite_npz(g.params, str(tmp_path / "missing.npz"), lambda a: {k: v for k, v in a.items() if k != drop})
    with pytest.raises(CheckpointError) as e:
        _convert(g, bad)
    msg = str(e.value)
    assert "\n" not in msg and "missing" in msg and needle in msg, msg


@pytest.mark.parametrize("name, extra", [
    ("bit", "block1/unit1/gn4/scale"),
    ("bit_paper", "block1/unit01/gn_proj/scale"),  # bit_paper units have no GN on the projection
])
def test_bit_extra_array(tmp_path, name, extra):
    g = Golden(name)
    bad = rewrite_npz(g.params, str(tmp_path / "extra.npz"), lambda a: {**a, extra: np.ones((32,), np.float32)})
    with pytest.raises(CheckpointError) as e:
        _convert(g, bad)
    msg = str(e.value)
    assert "\n" not in msg and "not used" in msg and extra in msg, msg


def test_bit_gap_in_unit_numbers(tmp_path):
    g = Golden("bit")
    bad = rewrite_npz(g.params, str(tmp_path / "gap.npz"),
                      lambda a: {k.replace("block1/unit2/", "block1/unit3/"): v for k, v in a.items()})
    with pytest.raises(CheckpointError, match=r"block1 has units \[1, 3\]"):
        _convert(g, bad)


@pytest.mark.parametrize("name, kwargs, needle", [
    ("bit", {"width": 1}, "width=1 (64 root channels)"),
    ("bit_paper", {"depth": 50}, "depth=[3, 4, 6, 3]"),
    ("bit", {"num_classes": 11}, "num_classes=11"),
    ("bit", {"head_zeroinit": False}, "unknown big_vision BiT (resnetv1) option 'head_zeroinit'"),
    ("bit_paper", {"depth": 34}, "unknown BiT depth 34"),
])
def test_bit_config_must_match_arrays(name, kwargs, needle):
    g = Golden(name)
    with pytest.raises(CheckpointError) as e:
        _convert(g, **kwargs)
    assert "\n" not in str(e.value) and needle in str(e.value), str(e.value)


# ---------------------------------------------------------------------------------------------------------
# Training, init, CLI
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FAMILIES)
def test_bit_training_backward_and_activation_checkpointing(name):
    g = Golden(name)
    model = _convert(g).train()
    x, y = g.image_nchw(), torch.tensor([3, 7])
    loss = model(pixel_values=x, labels=y).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert all(torch.isfinite(v).all() for v in grads.values())
    assert grads["classifier.weight"].abs().sum() > 0 and grads["bit.embeddings.convolution.weight"].abs().sum() > 0
    model.zero_grad()
    model.activation_checkpointing_enable()
    loss2 = model(pixel_values=x, labels=y).loss
    loss2.backward()
    torch.testing.assert_close(loss, loss2)
    for n, p in model.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, msg=n)


@pytest.mark.parametrize("architecture", ["resnetv1", "resnetv2"])
def test_bit_fresh_init_matches_big_vision_defaults(architecture):
    config = BvBiTConfig(architecture=architecture, width_factor=0.5, depths=[1, 2], num_labels=3)
    torch.manual_seed(0)
    model = BvBiTForImageClassification(config)
    assert torch.count_nonzero(model.classifier.weight) == 0 and torch.count_nonzero(model.classifier.bias) == 0
    unit = model.bit.stages[1].layers[1]
    zero_gn3 = architecture == "resnetv1"  # bit.ResidualUnit: gn3 scale_init=zeros
    assert bool((unit.norm3.weight == 0).all()) == zero_gn3 and bool((unit.norm2.weight == 1).all())
    conv = model.bit.embeddings.convolution.weight  # lecun_normal: std 1/sqrt(fan_in)
    assert abs(conv.std().item() - 147**-0.5) < 0.2 * 147**-0.5
    assert model(torch.zeros(2, 3, 40, 40)).logits.shape == (2, 3)
    if architecture == "resnetv2":
        config = BvBiTConfig(width_factor=0.5, depths=[1], num_labels=3, head_zeroinit=False)
        model = BvBiTForImageClassification(config)
        assert torch.count_nonzero(model.classifier.weight) > 0


def test_bit_config_and_variant():
    config = BvBiTConfig.from_variant("R101x3")
    assert config.depths == [3, 4, 23, 3] and config.root_width == 192 and config.hidden_sizes[-1] == 6144
    assert (config.group_norm_eps, config.weight_standardization_eps) == (1e-5, 1e-10)
    v1 = BvBiTConfig(architecture="resnetv1", width_factor=0.5, depths=(2, 1))
    assert (v1.group_norm_eps, v1.weight_standardization_eps, v1.depths) == (1e-6, 1e-5, [2, 1])
    with pytest.raises(ValueError, match="architecture"):
        BvBiTConfig(architecture="resnetv3")
    with pytest.raises(ValueError, match="R<depth>x<width>"):
        BvBiTConfig.from_variant("ResNet50")


def test_bit_cli_writes_exportable_folder(tmp_path):
    g = Golden("bit")
    out = tmp_path / "bit"
    convert_cli(g.params, str(out), "--model-name", "bit", "--model-config", json.dumps(g.model_kwargs),
                "--image-size", "32")
    config = json.load(open(out / "config.json"))
    assert config["model_type"] == "bv_bit" and config["image_size"] == [32, 32]
    assert config["auto_map"]["AutoModelForImageClassification"] == "modeling_bv_bit.BvBiTForImageClassification"
    code = (out / "modeling_bv_bit.py").read_text()
    assert "from .configuration_bv_bit import BvBiTConfig" in code and "from .." not in code
    model = AutoModelForImageClassification.from_pretrained(str(out)).eval()
    with torch.no_grad():
        err = max_abs_err(model(g.image_nchw()).logits, g.outputs["logits"])
    assert err <= TOL, f"CLI folder logits max abs error {err:.2e} > {TOL}"
