"""MLP-Mixer: parity with the original big_vision code, the legacy layout, converter errors, training.

The fixture's outputs come from the ORIGINAL ``big_vision.models.mlp_mixer`` (commit 0127fb6) on random
parameters; our model is converted, saved, reloaded through the Auto classes and compared (fp32, <= 1e-4).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoModelForImageClassification

import big_vision_hf  # noqa: F401  registers the Auto classes
from big_vision_hf import BvMixerConfig, BvMixerForImageClassification, BvMixerModel
from big_vision_hf.conversion import CheckpointError, convert_checkpoint
from big_vision_hf.modeling.modeling_bv_mixer import stochastic_depth
from conftest import Golden, max_abs_err, rewrite_npz

TOL = 1e-4


@pytest.fixture(scope="module")
def g() -> Golden:
    return Golden("mlp_mixer")


def _convert(g: Golden, params: str | None = None, **kwargs):
    return convert_checkpoint(params or g.params, "mlp_mixer", {**g.model_kwargs, **kwargs})


def _errors(model, g: Golden) -> dict[str, float]:
    with torch.no_grad():
        out = model(g.image_nchw(), output_hidden_states=True)
    b, t, d = out.hidden_states[0].shape
    h, w = g.outputs["stem"].shape[1:3]
    pairs = {
        "stem": out.hidden_states[0].reshape(b, h, w, d),  # big_vision's stem is channels last
        "input_tokens": out.hidden_states[0],
        **{f"block_{i}": out.hidden_states[i + 1] for i in range(model.config.num_hidden_layers)},
        "pre_logits": out.pooler_output,
        "logits": out.logits,
    }
    assert sorted(pairs) == sorted(g.outputs), "every fixture output is compared"
    return {name: max_abs_err(t, g.outputs[name]) for name, t in pairs.items()}


def test_mixer_parity_after_save_and_reload(tmp_path, g):
    model = _convert(g)
    assert isinstance(model, BvMixerForImageClassification)
    assert model.config.image_size == [32, 32] and model.config.num_tokens == 16
    model.save_pretrained(tmp_path / "mixer")
    model = AutoModelForImageClassification.from_pretrained(str(tmp_path / "mixer")).eval()
    assert isinstance(model, BvMixerForImageClassification)
    errors = _errors(model, g)
    report = ", ".join(f"{k}={v:.1e}" for k, v in errors.items())
    print(f"mlp_mixer max abs error: {report}")
    worst = max(errors, key=errors.get)
    assert errors[worst] <= TOL, f"{worst} max abs error {errors[worst]:.2e} > {TOL} ({report})"

    base = AutoModel.from_pretrained(str(tmp_path / "mixer")).eval()  # the backbone of the same folder
    assert isinstance(base, BvMixerModel)
    with torch.no_grad():
        pooled = base(g.image_nchw()).pooler_output
    err = max_abs_err(pooled, g.outputs["pre_logits"])
    assert err <= TOL, f"AutoModel pre_logits max abs error {err:.2e} > {TOL}"


def _to_legacy(arrays: dict) -> dict:
    """The paper checkpoints' layout (``gs://mixer_models/...``), as big_vision ``mlp_mixer.load`` reads it."""
    out = {}
    for name, value in arrays.items():
        parts = name.split("/")
        if parts[0] == "stem":
            out["embedding/" + parts[1]] = value
        elif parts[0] == "pre_head_layer_norm":
            out["Mixer/encoder_norm/" + parts[1]] = value
        elif parts[0].startswith("MixerBlock_"):
            block = "Mixer/encoderblock_" + parts[0].split("_")[1]
            if parts[1] in ("token_mixing", "channel_mixing"):  # .../Dense_0/kernel -> ..._phase_0/kernel1
                n = int(parts[2].split("_")[1]) + 1
                out[f"{block}/{parts[1]}_phase_0/{parts[3]}{n}"] = value[None]  # a unit axis, squeezed on load
            else:
                out[f"{block}/{'/'.join(parts[1:])}"] = value
        else:
            out[name] = value
    return out


def test_mixer_legacy_layout_converts_to_same_logits(tmp_path, g):
    legacy = rewrite_npz(g.params, str(tmp_path / "legacy.npz"), _to_legacy)
    assert "Mixer/encoderblock_0/token_mixing_phase_0/kernel1" in np.load(legacy).files
    model = _convert(g, legacy)
    with torch.no_grad():
        logits = model(g.image_nchw()).logits
    reference = _convert(g)(g.image_nchw()).logits.detach()
    torch.testing.assert_close(logits, reference, rtol=0, atol=0)
    err = max_abs_err(logits, g.outputs["logits"])
    assert err <= TOL, f"legacy layout logits max abs error {err:.2e} > {TOL}"


def test_mixer_rejects_vit_checkpoint(g):
    vit = Golden("vit_gap_learn")
    with pytest.raises(CheckpointError) as e:
        convert_checkpoint(vit.params, "mlp_mixer", {"num_classes": 10})
    msg = str(e.value)
    assert "\n" not in msg and "not a big_vision MLP-Mixer checkpoint" in msg and "stem/kernel" in msg, msg


def test_mixer_missing_array(tmp_path, g):
    def drop(arrays):
        del arrays["MixerBlock_1/LayerNorm_0/scale"]
        return arrays

    bad = rewrite_npz(g.params, str(tmp_path / "missing.npz"), drop)
    with pytest.raises(CheckpointError) as e:
        _convert(g, bad)
    msg = str(e.value)
    assert "\n" not in msg and "missing" in msg and "mixer.layers.1.layer_norm1.weight" in msg, msg


def test_mixer_extra_array(tmp_path, g):
    def add(arrays):
        arrays["MixerBlock_0/token_mixing/Dense_2/kernel"] = np.ones((16, 16), np.float32)
        return arrays

    bad = rewrite_npz(g.params, str(tmp_path / "extra.npz"), add)
    with pytest.raises(CheckpointError) as e:
        _convert(g, bad)
    msg = str(e.value)
    assert "\n" not in msg and "not used" in msg and "MixerBlock_0/token_mixing/Dense_2/kernel" in msg, msg


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"hidden_dim": 32}, "hidden_size=32"),
        ({"tokens_mlp_dim": 31}, "tokens_mlp_dim=31"),
        ({"num_classes": 11}, "num_classes=11"),
        ({"bogus": 1}, "unknown big_vision MLP-Mixer option 'bogus'"),
        ({"variant": "B/16", "num_classes": 10, "_replace": True}, "hidden_size=768"),  # explicit kwargs would win
    ],
)
def test_mixer_config_must_match_arrays(g, kwargs, needle):
    kwargs = dict(kwargs)
    model_kwargs = {} if kwargs.pop("_replace", False) else g.model_kwargs
    with pytest.raises(CheckpointError) as e:
        convert_checkpoint(g.params, "mlp_mixer", {**model_kwargs, **kwargs})
    assert "\n" not in str(e.value) and needle in str(e.value), str(e.value)


def test_mixer_image_size_must_give_the_token_count(g):
    with pytest.raises(CheckpointError, match="16 tokens"):
        convert_checkpoint(g.params, "mlp_mixer", g.model_kwargs, image_size=(40, 40))
    model = convert_checkpoint(g.params, "mlp_mixer", g.model_kwargs, image_size=(30, 30))  # SAME pad -> 4x4
    assert model.config.grid_size == (4, 4)
    with pytest.raises(ValueError, match="5x5 patch grid"):
        model(torch.zeros(1, 3, 40, 40))


def test_mixer_from_variant():
    config = BvMixerConfig.from_variant("L/16", image_size=224, stoch_depth=0.1)
    assert (config.hidden_size, config.num_hidden_layers, config.tokens_mlp_dim, config.channels_mlp_dim) == (
        1024, 24, 512, 4096
    )
    assert config.patch_size == [16, 16] and config.num_tokens == 196
    with pytest.raises(ValueError, match="'<size>/<patch>'"):
        BvMixerConfig.from_variant("B")


def test_stochastic_depth_drops_whole_examples_unscaled():
    torch.manual_seed(0)
    x = torch.ones(4000, 3, 5)
    y = stochastic_depth(x, 0.25, training=True)
    per_example = y.flatten(1)
    assert set(per_example.unique().tolist()) == {0.0, 1.0}  # kept examples are NOT rescaled by 1/(1-p)
    assert (per_example.min(1).values == per_example.max(1).values).all()  # one decision per example
    assert abs(y.mean().item() - 0.75) < 0.03
    assert stochastic_depth(x, 0.25, training=False) is x


def test_mixer_training_backward_and_gradient_checkpointing(g):
    model = convert_checkpoint(g.params, "mlp_mixer", {**g.model_kwargs, "stoch_depth": 0.5})
    assert [layer.drop_p for layer in model.mixer.layers] == [0.0, 0.5]  # i / max(n - 1, 1) * stoch_depth
    model.train()
    x, y = g.image_nchw(), torch.tensor([3, 7])
    torch.manual_seed(0)
    loss = model(pixel_values=x, labels=y).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert all(torch.isfinite(v).all() for v in grads.values()) and grads["classifier.weight"].abs().sum() > 0
    model.zero_grad()
    model.activation_checkpointing_enable()
    torch.manual_seed(0)  # same stochastic-depth masks
    loss2 = model(pixel_values=x, labels=y).loss
    loss2.backward()
    torch.testing.assert_close(loss, loss2)
    for name, param in model.named_parameters():
        torch.testing.assert_close(grads[name], param.grad, msg=name)


def test_mixer_fresh_init_matches_big_vision_defaults():
    config = BvMixerConfig(
        hidden_size=32, num_hidden_layers=2, tokens_mlp_dim=37, channels_mlp_dim=64, patch_size=4, image_size=20,
        num_labels=3,
    )
    torch.manual_seed(0)
    model = BvMixerForImageClassification(config)
    assert torch.count_nonzero(model.classifier.weight) == 0  # head kernel_init=zeros
    fc1 = model.mixer.layers[0].token_mixing.fc1
    assert fc1.weight.shape == (37, 25) and torch.count_nonzero(fc1.bias) == 0
    for weight, fan_in in ((fc1.weight, 25), (model.mixer.patch_embedding.weight, 4 * 4 * 3)):
        assert abs(weight.std().item() - fan_in**-0.5) < 0.2 * fan_in**-0.5  # lecun_normal: std 1/sqrt(fan_in)
    norm = model.mixer.layers[1].layer_norm2
    assert bool((norm.weight == 1).all()) and bool((norm.bias == 0).all())
    assert model(torch.zeros(2, 3, 20, 20)).logits.shape == (2, 3)
