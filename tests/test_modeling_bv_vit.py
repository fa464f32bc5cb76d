"""ViT model behaviour that parity fixtures do not cover: variants, fresh init, options, outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from big_vision_hf import BvViTConfig, BvViTForImageClassification, BvViTModel, decode_variant


def test_decode_variant_table():
    assert decode_variant("So400m/14") == {"width": 1152, "depth": 27, "mlp_dim": 4304, "num_heads": 16,
                                           "patch_size": (14, 14)}
    assert decode_variant("g-opt/16")["width"] == 1536 and decode_variant("e")["mlp_dim"] == 15360
    with pytest.raises(ValueError, match="unknown ViT size 'Q'"):
        decode_variant("Q/16")


@pytest.mark.parametrize("field,value,match", [("pool_type", "avg", "Unknown pool type"),
                                               ("posemb", "rope", "Unknown posemb type")])
def test_config_rejects_unknown_options(field, value, match):
    with pytest.raises(ValueError, match=match):
        BvViTConfig(**{field: value})


def test_fresh_init_follows_big_vision():
    """flax inits of models/vit.py: zero head (head_zeroinit), zero MHA biases, normal(1e-6) MLP biases,
    normal(1/sqrt(width)) learned posemb, zero cls."""
    torch.manual_seed(0)
    config = BvViTConfig.from_variant("mu/8", image_size=32, pool_type="tok", num_labels=3)
    model = BvViTForImageClassification(config)
    assert torch.count_nonzero(model.classifier.weight) == 0
    layer = model.vit.encoder.layers[0]
    assert torch.count_nonzero(layer.self_attn.q_proj.bias) == 0
    assert 0 < layer.mlp.fc1.bias.abs().max() < 1e-5
    assert abs(model.vit.embeddings.position_embedding.std().item() - 32**-0.5) < 0.02
    assert torch.count_nonzero(model.vit.embeddings.cls_token) == 0
    # xavier_uniform bound for (in=32, out=32): sqrt(6/64)
    assert layer.self_attn.q_proj.weight.abs().max() <= (6 / 64) ** 0.5 + 1e-6


@pytest.mark.parametrize("pool", ["gap", "map", "tok", "0", "none"])
def test_every_pool_type_runs(pool):
    config = BvViTConfig.from_variant("mu/8", image_size=(24, 32), pool_type=pool, representation_size=20, num_labels=4)
    model = BvViTForImageClassification(config).eval()
    out = model(torch.randn(2, 3, 24, 32), output_2d=True)
    expected = (2, 4) if pool != "none" else (2, 12, 4)
    assert tuple(out.logits.shape) == expected
    assert tuple(out.logits_2d.shape) == (2, 3, 4, 4)


def test_pool_gap_is_mean_and_tok_drops_cls_from_2d():
    config = BvViTConfig.from_variant("mu/8", image_size=32, pool_type="tok")
    model = BvViTModel(config).eval()
    out = model(torch.randn(1, 3, 32, 32), output_2d=True)
    torch.testing.assert_close(out.pooler_output, out.last_hidden_state[:, 0])
    torch.testing.assert_close(out.pre_logits_2d.reshape(1, 16, -1), out.last_hidden_state[:, 1:])


def test_hidden_states_and_attentions():
    config = BvViTConfig.from_variant("mu/8", image_size=32, num_hidden_layers=3)
    model = BvViTModel(config).eval()
    model.set_attn_implementation("eager")
    out = model(torch.randn(1, 3, 32, 32), output_hidden_states=True, output_attentions=True)
    assert len(out.hidden_states) == 4 and len(out.attentions) == 3
    assert tuple(out.attentions[0].shape) == (1, 2, 16, 16)


def test_sdpa_matches_eager():
    torch.manual_seed(0)
    config = BvViTConfig.from_variant("mu/8", image_size=32, pool_type="map")
    model = BvViTModel(config).eval()
    x = torch.randn(2, 3, 32, 32)
    model.set_attn_implementation("eager")
    a = model(x).pooler_output
    model.set_attn_implementation("sdpa")
    b = model(x).pooler_output
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_meta_device_reload_recomputes_sincos(tmp_path):
    config = BvViTConfig.from_variant("mu/8", image_size=32, posemb="sincos2d", pool_type="gap")
    model = BvViTModel(config).eval()
    model.save_pretrained(tmp_path)
    loaded = BvViTModel.from_pretrained(tmp_path).eval()
    x = torch.randn(1, 3, 32, 32)
    np.testing.assert_array_equal(model(x).pooler_output.detach().numpy(), loaded(x).pooler_output.detach().numpy())
