"""NaViT ("Patch n' Pack", https://arxiv.org/abs/2307.06304): packed images in the ViT family, exactly.

- Packed forward = unpacked forward, per image, forward and gradients, both attention paths (dense block-diagonal
  mask; variable-length: per-image SDPA, and flex_attention on CPU for inference): NaFlex (the ``naflex_vit``
  golden fixture through ``big-vision-hf convert``, and big_vision's own outputs for its two images packed in one
  sequence), the ViT (cls token, MAP, GAP; learned and sincos posembs), the SigLIP / SigLIP 2 towers.
- NaViT's factorised (fractional) posembs; ViT-22B's parallel blocks, QK LayerNorm and bias-free QKV against a
  numpy reference written from the paper's equations; existing state_dict keys unchanged.
- The data side: packing, token dropping, resolution sampling, the packed image processor (= NaFlex's pp), the
  collator with ``datasets`` + ``Trainer`` (classification; SigLIP 2 NaFlex contrastive through
  ``scripts/navit_finetune.py``: the loss goes down), the zero-shot pipeline on a list of images of different
  sizes, and two processes (the collator per process, the sigmoid loss gathering every process's texts).
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import sys
import time

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image
from transformers import AutoModel, AutoModelForImageClassification, pipeline

import big_vision_hf  # noqa: F401  registers the Auto classes
from big_vision_hf import BvViTConfig
from big_vision_hf.configuration.configuration_bv_naflex import BvNaFlexViTConfig
from big_vision_hf.configuration.configuration_bv_two_towers import BvSiglipConfig
from big_vision_hf.conversion.export import add_text_processor
from big_vision_hf.modeling.modeling_bv_naflex import (
    BvNaFlexViTForImageClassification,
    BvNaFlexViTModel,
    factorized_position_embeddings,
)
from big_vision_hf.modeling.modeling_bv_two_towers import BvSiglipModel
from big_vision_hf.modeling.modeling_bv_vit import (
    BvViTForImageClassification,
    BvViTModel,
    packed_layout,
    pool,
    unpack_tokens,
)
from big_vision_hf.processing.image_processing_bv_naflex import BvNaFlexImageProcessor
from big_vision_hf.processing.image_processing_bv_navit import BvNaViTImageProcessor
from big_vision_hf.processing.navit_collator import BvNaViTCollator
from big_vision_hf.processing.sequence_packing import (
    ResolutionSampler,
    TokenDropping,
    first_fit_decreasing,
    next_fit,
    pack_sequences,
)
from conftest import Golden, convert_cli, run_without_package

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "scripts"))
import navit_finetune  # noqa: E402

EXACT = 1e-5
# 10 grids of different aspect ratios and sizes (<= 15 per side: the fixture's posemb canvas is 16)
GRIDS = [(3, 5), (4, 2), (1, 7), (6, 6), (2, 2), (5, 1), (3, 3), (7, 2), (2, 9), (1, 1)]
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread (conftest)


def _convert(tmp_path_factory, fixture: str, model_name: str) -> str:
    """``big-vision-hf convert`` of a golden fixture into a folder."""
    g = Golden(fixture)
    out = tmp_path_factory.mktemp("navit") / fixture
    convert_cli(g.params, str(out), "--model-name", model_name, "--model-config", json.dumps(g.model_kwargs))
    return str(out)


@pytest.fixture(scope="module")
def naflex_folder(tmp_path_factory):
    return _convert(tmp_path_factory, "naflex_vit", "proj.image_text.naflex_vit")


def _sequences(grids, dim, seed=0, drop=None):
    rng = np.random.default_rng(seed)
    seqs = []
    for h, w in grids:
        keep = drop.keep(h * w, 1, rng) if drop else np.arange(h * w)
        seqs.append({"patches": rng.uniform(-1, 1, (len(keep), dim)).astype(np.float32), "yidx": keep // w,
                     "xidx": keep % w, "shape": (h, w)})
    return seqs


def _golden_sequences(g: Golden) -> list[dict]:
    """A NaFlex fixture's padded examples (big_vision's pp) as per-image sequences without their pads."""
    seqs = []
    for b, valid in enumerate(g.inputs["ptype"] == 1):
        y, x = g.inputs["yidx"][b][valid], g.inputs["xidx"][b][valid]
        seqs.append({"patches": g.inputs["patches"][b][valid], "yidx": y, "xidx": x,
                     "shape": (int(y.max()) + 1, int(x.max()) + 1)})
    return seqs


def _packed(seqs, length, packer=first_fit_decreasing):
    packed = pack_sequences(seqs, packer([len(s["patches"]) for s in seqs], length), length)
    order = packed.pop("image_order").tolist()
    return {k: torch.from_numpy(v) for k, v in packed.items()}, order


def _grads(model):
    return {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}


def _assert_packed_equals_unpacked(model, seqs, packed_attention, length=40, grads=True):
    """Forward (pooled output / logits, patch tokens) and gradients of a packed batch = each image alone.

    The objective is a random projection of every image's logits and of its mean patch token, averaged over the
    images (gradients of order 1, so that 1e-5 is a meaningful absolute bound)."""
    inputs, order = _packed(seqs, length)
    base = model.vit if hasattr(model, "vit") else model
    rng = np.random.default_rng(1)
    head = torch.from_numpy(rng.normal(size=(len(seqs), model.config.num_labels)).astype(np.float32))
    token_w = torch.from_numpy(rng.normal(size=(model.config.hidden_size,)).astype(np.float32))

    model.zero_grad()
    out = model(**inputs, packed_attention=packed_attention, output_hidden_states=False)
    tokens = unpack_tokens(base(**inputs, packed_attention=packed_attention).last_hidden_state, inputs["segment_ids"])
    n = len(seqs)
    loss = ((out.logits * head).sum() + sum((t * token_w).sum(-1).mean() for t in tokens)) / n
    loss.backward()
    packed_grads = _grads(model)

    model.zero_grad()
    errors = {"logits": 0.0, "pooled": 0.0, "tokens": 0.0}
    for j, i in enumerate(order):
        seq = seqs[i]
        alone = {"pixel_values": torch.from_numpy(seq["patches"])[None],
                 "patch_coords": torch.from_numpy(np.stack([seq["yidx"], seq["xidx"]], -1))[None]}
        ref = model(**alone)
        ref_tokens = base(**alone).last_hidden_state[0]
        errors["logits"] = max(errors["logits"], (ref.logits[0] - out.logits[j]).abs().max().item())
        errors["pooled"] = max(errors["pooled"], (ref.pooler_output[0] - out.pooler_output[j]).abs().max().item())
        errors["tokens"] = max(errors["tokens"], (ref_tokens - tokens[j]).abs().max().item())
        (((ref.logits[0] * head[j]).sum() + (ref_tokens * token_w).sum(-1).mean()) / n).backward()
    if grads:
        alone_grads = _grads(model)
        assert packed_grads.keys() == alone_grads.keys()
        errors["grads"] = max((packed_grads[k] - alone_grads[k]).abs().max().item() for k in packed_grads)
        scale = max(g.abs().max().item() for g in alone_grads.values())
        assert scale > 1e-2, scale  # the gradients are not vanishing
    print(f"packed vs alone ({packed_attention}):", errors)
    assert max(errors.values()) <= EXACT, errors
    return errors


# ---------------------------------------------------------------------------------------------------------
# Exactness
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("packed_attention", ["dense", "segments"])
def test_packed_naflex_equals_each_image_alone(naflex_folder, packed_attention):
    """10 images of different aspect ratios / resolutions in rows of 40: logits, pre_logits, patch tokens and every
    parameter's gradient equal the unpacked NaFlex forward of each image alone (no padding) within 1e-5, fp32."""
    model = AutoModelForImageClassification.from_pretrained(naflex_folder).float()
    assert isinstance(model, BvNaFlexViTForImageClassification)
    _assert_packed_equals_unpacked(model, _sequences(GRIDS, model.config.patch_dim), packed_attention)


def test_packed_fixture_images_reproduce_big_vision(naflex_folder):
    """The golden fixture's two images (big_vision's NaFlex pp at budgets 16 and 9, padded and run by the ORIGINAL
    naflex_vit) in ONE packed sequence without padding: big_vision's logits and patch tokens."""
    g = Golden("naflex_vit")
    model = AutoModelForImageClassification.from_pretrained(naflex_folder).eval()
    valid = g.inputs["ptype"] == 1
    seqs = _golden_sequences(g)
    inputs, order = _packed(seqs, 32, next_fit)
    assert inputs["segment_ids"].shape == (1, 32) and order == [0, 1]
    for packed_attention in ("dense", "varlen"):
        with torch.no_grad():
            out = model(**inputs, packed_attention=packed_attention)
            tokens = unpack_tokens(model.vit(**inputs, packed_attention=packed_attention).last_hidden_state,
                                   inputs["segment_ids"])
        errors = {"logits": float(np.abs(out.logits.numpy() - g.outputs["logits"]).max())}
        errors["encoded"] = max(float(np.abs(tokens[b].numpy() - g.outputs["encoded"][b][valid[b]]).max())
                                for b in range(2))
        print(f"packed ({packed_attention}) vs big_vision:", errors)
        assert max(errors.values()) <= EXACT, errors


def test_packed_forward_in_the_remote_code_folder(naflex_folder, tmp_path):
    """The converted folder's flat remote code (no package installed) runs packed batches, both paths, as ours."""
    inputs, _ = _packed(_sequences(GRIDS, 192), 40)
    body = """
from transformers import AutoModelForImageClassification
model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
x = {k: torch.from_numpy(v) for k, v in inputs.items()}
with torch.no_grad():
    outputs = {p: model(**x, packed_attention=p).logits for p in ("dense", "segments")}
remote = {"model": model}
"""
    got = run_without_package(tmp_path, naflex_folder, body, {k: v.numpy() for k, v in inputs.items()})
    model = AutoModelForImageClassification.from_pretrained(naflex_folder).eval()
    with torch.no_grad():
        ours = model(**inputs).logits.numpy()
    for path in ("dense", "segments"):
        assert np.abs(got[path] - ours).max() <= EXACT


def _tiny_naflex(patch_size=4, num_labels=3, **kw) -> BvNaFlexViTForImageClassification:
    torch.manual_seed(0)
    config = BvNaFlexViTConfig(hidden_size=32, num_hidden_layers=2, intermediate_size=64, num_attention_heads=4,
                               patch_size=patch_size, nposemb=5, num_labels=num_labels, **kw)
    return BvNaFlexViTForImageClassification(config)


@pytest.mark.parametrize("kw", [dict(pool_type="gap", posemb="factorized_fractional"),
                                dict(pool_type="max", posemb="factorized", patchln_pre=True),
                                dict(pool_type="map", parallel_block=True, qk_layernorm=True, qkv_bias=False)],
                         ids=["gap-fractional", "max-factorized", "map-vit22b"])
def test_packed_naflex_variants_equal_each_image_alone(kw):
    model = _tiny_naflex(**kw)
    grids = [g for g in GRIDS if max(g) < 5] if kw.get("posemb") == "factorized" else GRIDS[:8]
    for packed_attention in ("dense", "segments"):  # forward only: the gradients are checked on the fixture
        _assert_packed_equals_unpacked(model, _sequences(grids, model.config.patch_dim), packed_attention,
                                       grads=False)


def test_token_dropping_keeps_the_full_grid_posemb():
    """With dropped tokens the packed image is its full-grid forward restricted to the kept tokens' posembs: the
    same as an unpacked forward with explicit coordinates of its full grid."""
    model = _tiny_naflex(pool_type="gap").eval()
    seqs = _sequences(GRIDS, model.config.patch_dim, drop=TokenDropping.fixed(0.5))
    inputs, order = _packed(seqs, 40)
    assert inputs["spatial_shapes"].tolist() == [list(seqs[i]["shape"]) for i in order]
    with torch.no_grad():
        out = model(**inputs)
        for j, i in enumerate(order):
            seq = seqs[i]
            coords = torch.from_numpy(np.stack([seq["yidx"], seq["xidx"]], -1))[None]
            embeddings = model.vit.embeddings(torch.from_numpy(seq["patches"])[None], coords,
                                              torch.tensor(seq["shape"]).expand(1, len(seq["patches"]), 2))
            ref = model.classifier(model.vit.encode(embeddings).pooler_output)
            assert (ref[0] - out.logits[j]).abs().max() <= EXACT


@pytest.mark.parametrize("pool_type,posemb,rep", [("tok", "learn", 24), ("map", "sincos2d", None),
                                                   ("gap", "learn", None)])
def test_packed_vit_equals_each_image_alone(pool_type, posemb, rep):
    """BvViTModel / classifier on a list of images of different sizes (packed into one sequence): each image's
    logits, pooled output and patch tokens are its unpacked forward (``interpolate_pos_encoding=True``)."""
    torch.manual_seed(0)
    config = BvViTConfig(hidden_size=32, num_hidden_layers=2, intermediate_size=64, num_attention_heads=4,
                         patch_size=4, image_size=16, pool_type=pool_type, posemb=posemb, representation_size=rep,
                         num_labels=5)
    model = BvViTForImageClassification(config).eval()
    images = [torch.rand(3, 4 * h, 4 * w) * 2 - 1 for h, w in GRIDS]
    for packed_attention in ("dense", "segments"):
        with torch.no_grad():
            out = model(images, packed_attention=packed_attention)
            states = model.vit(images, packed_attention=packed_attention)
        tokens = list(states.last_hidden_state[0].split([h * w for h, w in GRIDS]))
        for j, image in enumerate(images):
            with torch.no_grad():
                ref = model(image[None], interpolate_pos_encoding=True)
                ref_tokens = model.vit(image[None], interpolate_pos_encoding=True).last_hidden_state[0]
            ref_tokens = ref_tokens[1:] if pool_type == "tok" else ref_tokens
            assert (ref.logits[0] - out.logits[j]).abs().max() <= EXACT
            assert (ref.pooler_output[0] - out.pooler_output[j]).abs().max() <= EXACT
            assert (ref_tokens - tokens[j]).abs().max() <= EXACT


def test_flex_attention_backend_on_cpu():
    """``packed_attention="flex"`` (flex_attention + a document block mask, compiled by inductor) gives the dense
    path's outputs for inference on CPU; training there is a one-line error (torch 2.13 has no CPU backward)."""
    model = _tiny_naflex(pool_type="map").eval()
    inputs, _ = _packed(_sequences(GRIDS, model.config.patch_dim), 40)
    start = time.perf_counter()
    with torch.no_grad():
        flex = model(**inputs, packed_attention="flex").logits
    print(f"flex_attention compile + run: {time.perf_counter() - start:.1f} s")
    with torch.no_grad():
        dense = model(**inputs, packed_attention="dense").logits
    assert (flex - dense).abs().max() <= EXACT
    with pytest.raises(ValueError, match="no backward on CPU"):
        model.train()(**inputs, packed_attention="flex")


def test_packed_layout_validation_and_pools():
    seg = torch.tensor([[1, 1, 2, 2, 2, 0], [1, 1, 1, 1, 0, 0]])
    layout = packed_layout(seg)
    assert layout.lengths == [2, 3, 4] and layout.row_of_image.tolist() == [0, 0, 1]
    x = torch.randn(2, 6, 8)
    parts = [x[0, :2], x[0, 2:5], x[1, :4]]
    torch.testing.assert_close(pool(x, "gap", segment_ids=seg), torch.stack([p.mean(0) for p in parts]))
    torch.testing.assert_close(pool(x, "max", segment_ids=seg), torch.stack([p.amax(0) for p in parts]))
    torch.testing.assert_close(pool(x, "0", segment_ids=seg), torch.stack([p[0] for p in parts]))
    torch.testing.assert_close(pool(x, "last", segment_ids=seg), torch.stack([p[-1] for p in parts]))
    for bad in ([[1, 2, 1, 0]], [[2, 2, 0, 0]], [[0, 0, 0, 0]], [[1, 1, 3, 3]]):
        with pytest.raises(ValueError, match="contiguous run"):
            packed_layout(torch.tensor(bad))
    model = _tiny_naflex()
    inputs, _ = _packed(_sequences(GRIDS[:3], model.config.patch_dim), 40)
    with pytest.raises(ValueError, match="packed images need \\(3, 2\\)"):
        model(**{**inputs, "spatial_shapes": inputs["spatial_shapes"][:2]})
    with pytest.raises(ValueError, match="packed_attention="):
        model(**inputs, packed_attention="fast")


def test_factorized_posembs():
    """NaViT's factorised posembs: absolute = table rows; fractional = the table at a grid of its own size and a
    smooth resampling of it on other grids (the same relative position, the same embedding)."""
    n, d = 5, 6
    ty, tx = torch.randn(n, d), torch.randn(n, d)
    coords = torch.tensor([[0, 0], [2, 4], [4, 1]])
    absolute = factorized_position_embeddings(ty, tx, coords, torch.tensor([[5, 5]] * 3), fractional=False)
    torch.testing.assert_close(absolute, ty[coords[:, 0]] + tx[coords[:, 1]])
    assert torch.isnan(factorized_position_embeddings(ty, tx, torch.tensor([[5, 0]]), torch.tensor([[6, 1]]),
                                                      fractional=False)).all()
    native = factorized_position_embeddings(ty, tx, coords, torch.tensor([[5, 5]] * 3), fractional=True)
    torch.testing.assert_close(native, absolute)
    # side 10 (twice the table): patch i's centre is at table position i / 2 - 0.25, linearly interpolated (numpy's
    # interp clamps at the ends too); a 1-wide side reads the table at its centre, 2.
    y = torch.arange(10)
    frac = factorized_position_embeddings(ty, tx, torch.stack([y, torch.zeros_like(y)], -1),
                                          torch.tensor([[10, 1]] * 10), fractional=True)
    pos = np.arange(10) / 2 - 0.25
    expected = np.stack([np.interp(pos, np.arange(n), ty[:, c].numpy()) for c in range(d)], -1) + tx[2].numpy()
    np.testing.assert_allclose(frac.numpy(), expected, atol=1e-6)
    config = BvNaFlexViTConfig(posemb="factorized_fractional", nposemb=7)
    model = BvNaFlexViTModel(config)
    assert {"embeddings.position_embedding_y", "embeddings.position_embedding_x"} <= set(model.state_dict())
    assert "embeddings.position_embedding" not in model.state_dict()
    assert BvNaFlexViTConfig.from_dict(config.to_dict()).posemb == "factorized_fractional"
    with pytest.raises(ValueError, match="Unknown posemb"):
        BvNaFlexViTConfig(posemb="fractional")


# ---------------------------------------------------------------------------------------------------------
# ViT-22B options
# ---------------------------------------------------------------------------------------------------------


def _np_layernorm(x, scale, bias, eps=1e-6):
    mu = x.mean(-1, keepdims=True)
    y = (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps)
    return y * scale + (bias if bias is not None else 0.0)


def _np_block(x, p, heads, parallel, qk_norm):
    """One encoder block from https://arxiv.org/abs/2302.05442 sec. 2 (float64): ``y = LN(x)``; parallel:
    ``x + MLP(y) + Attention(y)``, else ``z = x + Attention(y); z + MLP(LN(z))``; QK normalisation:
    ``softmax(LN(y W_q) LN(y W_k)^T / sqrt(d))`` (LN per head, scale only, as flax ``normalize_qk``); MLP
    ``gelu_tanh(y W_1 + b_1) W_2 + b_2``; projections without biases where the model has none."""
    def dense(z, name):
        out = z @ p[f"{name}.weight"].T
        return out + p[f"{name}.bias"] if f"{name}.bias" in p else out

    def attention(y):
        n, d = y.shape
        q, k, v = (dense(y, f"self_attn.{m}_proj").reshape(n, heads, -1).transpose(1, 0, 2) for m in "qkv")
        if qk_norm:
            q = _np_layernorm(q, p["self_attn.q_norm.weight"], None)
            k = _np_layernorm(k, p["self_attn.k_norm.weight"], None)
        logits = q @ k.transpose(0, 2, 1) / np.sqrt(d // heads)
        w = np.exp(logits - logits.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        return dense((w @ v).transpose(1, 0, 2).reshape(n, d), "self_attn.out_proj")

    def mlp(y):
        h = dense(y, "mlp.fc1")
        h = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h**3)))
        return dense(h, "mlp.fc2")

    y = _np_layernorm(x, p["layer_norm1.weight"], p["layer_norm1.bias"])
    if parallel:
        return x + mlp(y) + attention(y)
    z = x + attention(y)
    return z + mlp(_np_layernorm(z, p["layer_norm2.weight"], p["layer_norm2.bias"]))


@pytest.mark.parametrize("parallel,qk_norm,qkv_bias", [(True, True, False), (True, False, True),
                                                        (False, True, False), (False, False, True)])
def test_vit22b_options_match_numpy_reference(parallel, qk_norm, qkv_bias):
    torch.manual_seed(0)
    config = BvViTConfig(hidden_size=32, num_hidden_layers=2, intermediate_size=48, num_attention_heads=4,
                         patch_size=4, image_size=16, parallel_block=parallel, qk_layernorm=qk_norm,
                         qkv_bias=qkv_bias)
    model = BvViTModel(config).eval()
    with torch.no_grad():  # no parameter at its trivial init (LN scale 1, bias 0), so none can be ignored
        for name, param in model.named_parameters():
            param.add_(torch.randn_like(param) * 0.2)
    x = torch.randn(3, 10, 32)
    with torch.no_grad():
        ours = model.encoder(x).numpy()
    sd = {k: v.double().numpy() for k, v in model.state_dict().items()}
    ref = []
    for b in range(3):
        h = x[b].double().numpy()
        for i in range(2):
            layer = {k[len(f"encoder.layers.{i}."):]: v for k, v in sd.items() if k.startswith(f"encoder.layers.{i}.")}
            h = _np_block(h, layer, 4, parallel, qk_norm)
        ref.append(_np_layernorm(h, sd["encoder.post_layernorm.weight"], sd["encoder.post_layernorm.bias"]))
    err = float(np.abs(ours - np.stack(ref)).max())
    print(f"ViT-22B options {parallel=} {qk_norm=} {qkv_bias=}: max abs error vs numpy {err:.1e}")
    assert err <= EXACT
    keys = set(model.state_dict())
    assert ("encoder.layers.0.self_attn.q_proj.bias" in keys) == qkv_bias
    assert ("encoder.layers.0.self_attn.q_norm.weight" in keys) == qk_norm
    assert ("encoder.layers.0.layer_norm2.weight" in keys) == (not parallel)
    assert "map_head.attention.q_proj.bias" not in keys  # gap pool: no head; the MAP head keeps its biases


def test_vit22b_options_default_off_and_state_dict_unchanged():
    config = BvViTConfig(hidden_size=32, num_hidden_layers=1, intermediate_size=48, num_attention_heads=4,
                         patch_size=4, image_size=16, pool_type="map")
    assert (config.parallel_block, config.qk_layernorm, config.qkv_bias) == (False, False, True)
    keys = set(BvViTModel(config).state_dict())
    layer = {k.split("layers.0.")[1] for k in keys if "layers.0." in k}
    assert layer == {f"{m}.{t}" for m in ("layer_norm1", "layer_norm2", "self_attn.q_proj", "self_attn.k_proj",
                                         "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2")
                     for t in ("weight", "bias")}


# ---------------------------------------------------------------------------------------------------------
# Data side
# ---------------------------------------------------------------------------------------------------------


def test_packing_token_dropping_and_resolution_sampling():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 65, 200).tolist()
    rows = first_fit_decreasing(lengths, 128)
    assert sorted(i for row in rows for i in row) == list(range(200))
    assert all(sum(lengths[i] for i in row) <= 128 for row in rows)
    waste = 1 - sum(lengths) / (len(rows) * 128)
    assert waste <= 0.05, waste
    assert [i for row in next_fit(lengths, 128) for i in row] == list(range(200))  # order kept
    drop = TokenDropping.fixed(0.5)
    kept = drop.keep(100, 16, rng)
    assert len(kept) == 50 and np.all(np.diff(kept) > 0)
    assert len(drop.keep(1, 16, rng)) == 1
    schedule = TokenDropping.resolution_dependent(0.1, 0.6, min_side=64, max_side=256)
    assert schedule.rate_for(16, 16) == pytest.approx(0.1) and schedule.rate_for(256, 16) == pytest.approx(0.6)
    assert schedule.rate_for(100, 16) == pytest.approx(0.1 + 0.5 * (160 - 64) / 192)
    sampler = ResolutionSampler(64, 256)
    budgets = [sampler.budget(rng, 16, 256) for _ in range(500)]
    assert 16 <= min(budgets) and max(budgets) <= 256 and 70 < np.mean(budgets) < 130  # E[s^2]/256 = 112
    low = ResolutionSampler(64, 256, "truncated_normal")
    assert np.mean([low.budget(rng, 16, 256) for _ in range(500)]) < np.mean(budgets)


def _images(sizes, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]


SIZES = [(24, 56), (40, 20), (33, 33), (8, 70), (64, 12), (20, 28), (48, 48), (16, 16)]


def test_packed_processor_is_naflex_pp():
    """``resolution="max"``: each image's patches are exactly BvNaFlexImageProcessor's; ``"native"`` caps at the
    native size; images keep their order."""
    images = _images(SIZES)
    naflex = BvNaFlexImageProcessor(patch_size=8, max_num_patches=16)(images)
    packed = BvNaViTImageProcessor(patch_size=8, max_num_patches=16, sequence_length=48)(images)
    assert packed["spatial_shapes"].tolist() == naflex["spatial_shapes"].tolist()
    layout = packed_layout(torch.from_numpy(packed["segment_ids"]))
    patches = layout.gather(torch.from_numpy(packed["pixel_values"])).split(layout.lengths)
    for b, p in enumerate(patches):
        np.testing.assert_array_equal(p.numpy(), naflex["pixel_values"][b][naflex["pixel_attention_mask"][b] == 1])
    native = BvNaViTImageProcessor(patch_size=8, max_num_patches=16, resolution="native")(images)
    budgets = [min(round(h * w / 64), 16) for h, w in SIZES]  # native patches, capped
    got = native["spatial_shapes"].prod(-1).tolist()
    assert all(n <= b for n, b in zip(got, budgets)) and got[-1] == 4
    assert got != packed["spatial_shapes"].prod(-1).tolist()


def test_collator_packs_drops_and_seeds_per_process(monkeypatch):
    processor = BvNaViTImageProcessor(patch_size=8, max_num_patches=16)
    examples = [{"image": im, "label": i} for i, im in enumerate(_images(SIZES))]
    collate = BvNaViTCollator(processor, sequence_length=32, token_dropping=0.5, seed=3)
    batch = collate(examples)
    layout = packed_layout(batch["segment_ids"])
    full = batch["spatial_shapes"].prod(-1).tolist()
    assert layout.lengths == [max(1, round(n / 2)) for n in full]  # half of each image's native-res patches
    assert sorted(batch["labels"].tolist()) == list(range(8))
    padding = int((batch["segment_ids"] == 0).sum())
    assert collate.padding == padding and collate.last_padding_fraction == padding / batch["segment_ids"].numel()
    # the labels follow the packed order: image j of the batch is examples[labels[j]]
    sizes_by_label = {i: SIZES[i] for i in range(8)}
    native = BvNaViTImageProcessor(patch_size=8, max_num_patches=16, resolution="native")
    for j, label in enumerate(batch["labels"].tolist()):
        expected = native(_images([sizes_by_label[label]]))["spatial_shapes"][0].tolist()
        assert batch["spatial_shapes"][j].tolist() == expected
    again = BvNaViTCollator(processor, sequence_length=32, token_dropping=0.5, seed=3)(examples)
    torch.testing.assert_close(again["patch_coords"], batch["patch_coords"])
    monkeypatch.setenv("RANK", "1")  # another process draws other tokens
    other = BvNaViTCollator(processor, sequence_length=32, token_dropping=0.5, seed=3)(examples)
    assert not torch.equal(other["patch_coords"], batch["patch_coords"])
    out = _tiny_naflex(patch_size=8, num_labels=8, pool_type="map")(**batch)
    assert out.logits.shape == (8, 8) and out.loss is not None


def test_trainer_classification_on_packed_batches_lowers_loss(tmp_path):
    """``datasets`` + ``Trainer`` + the collator (native resolution, token dropping): a NaFlex classifier learns
    colour-coded classes; the loss on a fixed packed batch goes down."""
    data = navit_finetune.synthetic_dataset(48, num_classes=4, max_side=48)
    torch.manual_seed(0)
    model = BvNaFlexViTForImageClassification(BvNaFlexViTConfig(
        hidden_size=32, num_hidden_layers=1, intermediate_size=64, num_attention_heads=2, patch_size=8, nposemb=4,
        pool_type="gap", num_labels=4))
    collate = BvNaViTCollator(BvNaViTImageProcessor(patch_size=8, max_num_patches=16), sequence_length=64)
    fixed = collate([data[i] for i in range(16)])

    def loss():
        with torch.no_grad():
            return model.eval()(**fixed).loss.item()

    before = loss()
    args = navit_finetune.parser().parse_args([
        "unused", str(tmp_path), "--task", "classify", "--synthetic", "48", "--batch-size", "16", "--max-steps", "12",
        "--lr", "3e-3", "--patch-size", "8", "--max-patches", "16", "--sequence-length", "64", "--token-drop", "0.25",
    ])
    trainer, _ = navit_finetune.finetune("unused", str(tmp_path), args, model=model, data=data)
    after = loss()
    print(f"classification loss on a fixed packed batch: {before:.3f} -> {after:.3f}")
    assert after < 0.8 * before


@pytest.fixture(scope="module")
def siglip2_folder(tmp_path_factory):
    return _convert(tmp_path_factory, "siglip2_naflex", "proj.image_text.two_towers")


def test_siglip2_naflex_packed_equals_golden(siglip2_folder):
    """The siglip2_naflex fixture's two images packed in one sequence: big_vision's ``zimg`` (and logits)."""
    g = Golden("siglip2_naflex")
    model = AutoModel.from_pretrained(siglip2_folder).eval()
    seqs = _golden_sequences(g)
    inputs, _ = _packed(seqs, 32, next_fit)
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(g.inputs["text"]).long(), **inputs)
    errors = {"zimg": float(np.abs(out.image_embeds.numpy() - g.outputs["zimg"]).max()),
              "logits": float(np.abs(out.logits_per_image.numpy() - g.outputs["derived/siglip_logits"]).max())}
    print("packed SigLIP 2 NaFlex vs big_vision:", errors)
    assert max(errors.values()) <= EXACT, errors


def test_siglip2_naflex_packed_finetune_lowers_loss(siglip2_folder, tmp_path):
    """``scripts/navit_finetune.py --task siglip`` on synthetic image/text pairs: the sigmoid loss over the
    per-image embeddings of packed batches (resolution sampling, resolution-dependent token dropping) goes down."""
    model = AutoModel.from_pretrained(siglip2_folder)
    vocab = model.config.text_config.vocab_size
    data = navit_finetune.synthetic_dataset(32, num_classes=4, vocab_size=vocab,
                                            text_length=model.config.text_config.max_position_embeddings)
    argv = ["unused", str(tmp_path), "--task", "siglip", "--batch-size", "16", "--max-steps", "6", "--lr", "3e-3",
            "--patch-size", "8", "--max-patches", "16", "--sequence-length", "64", "--sample-res", "16", "40",
            "--token-drop-range", "0.0", "0.5", "--synthetic", "32"]
    args = navit_finetune.parser().parse_args(argv)
    collate = navit_finetune.build_collator(siglip2_folder, args)
    fixed = collate([data[i] for i in range(16)])

    def loss():
        with torch.no_grad():
            return model.eval()(**fixed).loss.item()

    before = loss()
    trainer, result = navit_finetune.finetune(siglip2_folder, str(tmp_path), args, model=model, data=data)
    after = loss()
    print(f"SigLIP 2 NaFlex packed fine-tuning, loss on a fixed packed batch: {before:.3f} -> {after:.3f}; "
          f"padding {trainer.data_collator.padding / trainer.data_collator.tokens:.1%}")
    assert after < 0.8 * before


def test_zero_shot_pipeline_and_image_features_pack_a_list_of_images(siglip2_folder, tmp_path):
    """The zero-shot pipeline over images of different sizes with the packed processor (``batch_size=3``: the
    model packs the rows into one sequence) scores exactly as the padded NaFlex inputs; ``get_image_features``
    takes a list of images of any size."""
    from test_siglip2_naflex_two_towers import LABELS, _gemma_like_spm

    add_text_processor(siglip2_folder, _gemma_like_spm(tmp_path / "spm.model"), preset="siglip2")
    model = AutoModel.from_pretrained(siglip2_folder).eval()
    images = _images(SIZES[:5])
    packed_processor = BvNaViTImageProcessor(patch_size=8, max_num_patches=16)
    classifier = pipeline("zero-shot-image-classification", model=siglip2_folder, image_processor=packed_processor)
    results = classifier(images, candidate_labels=LABELS, hypothesis_template="{}", batch_size=3)
    padded = BvNaFlexImageProcessor(patch_size=8, max_num_patches=16)(images, return_tensors="pt")
    text = classifier.tokenizer(LABELS, return_tensors="pt")
    with torch.no_grad():
        logits = model(**text, **padded).logits_per_image
    for result, row in zip(results, logits):
        scores = {r["label"]: r["score"] for r in result}
        torch.testing.assert_close(torch.tensor([scores[label] for label in LABELS]), torch.sigmoid(row),
                                   rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        listed = model.get_image_features([torch.rand(3, 8 * h, 8 * w) for h, w in GRIDS[:4]]).pooler_output
        packed = model.get_image_features(**packed_processor(images, return_tensors="pt")).pooler_output
        alone = model.get_image_features(**padded).pooler_output
    assert listed.shape == (4, model.config.vision_config.hidden_size)
    assert (packed - alone).abs().max() <= EXACT


# ---------------------------------------------------------------------------------------------------------
# Several processes
# ---------------------------------------------------------------------------------------------------------


def _two_tower():
    config = BvSiglipConfig(
        vision_config=dict(hidden_size=16, num_hidden_layers=1, intermediate_size=32, num_attention_heads=2,
                           patch_size=8, pool_type="map", nposemb=4),
        text_config=dict(vocab_size=12, hidden_size=16, num_hidden_layers=1, intermediate_size=32,
                         num_attention_heads=2, max_position_embeddings=4, pool_type="last"),
        image_model="proj.image_text.naflex_vit", bias_init=-2.0, temperature_init=3.0,
    )
    torch.manual_seed(0)
    return BvSiglipModel(config).train()


def _examples():
    return [{"image": im, "text": [i % 10 + 1] * 4} for i, im in enumerate(_images(SIZES))]


def _collate(examples):
    return BvNaViTCollator(BvNaViTImageProcessor(patch_size=8, max_num_patches=16), sequence_length=32,
                           text_column="text", label_column=None)(examples)


def _worker(rank: int, world: int, init_method: str, out_file: str):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))
    model = _two_tower()
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    batch = _collate(_examples()[rank::world])  # each process packs its own shard (as accelerate's sampler shard)
    out = ddp(**batch)
    out.loss.backward()
    losses = [torch.zeros(1) for _ in range(world)]
    dist.all_gather(losses, out.loss.detach().reshape(1))
    if rank == 0:
        torch.save({"losses": torch.cat(losses), "grads": _grads(model)}, out_file + ".tmp")
        os.replace(out_file + ".tmp", out_file)
    dist.barrier()
    dist.destroy_process_group()


def test_two_processes_pack_their_own_shards(tmp_path):
    """Two gloo processes (what ``accelerate launch --cpu`` runs), each collating its own examples into packed
    batches: the mean of their sigmoid losses and DDP's averaged gradients equal one process on every example
    (the texts of both processes are negatives, big_vision's all_gather)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out_file = str(tmp_path / "result.pt")
    ctx = mp.start_processes(_worker, args=(2, f"tcp://127.0.0.1:{port}", out_file), nprocs=2, join=False,
                             start_method="spawn")
    deadline = time.time() + 240
    while not os.path.exists(out_file) and time.time() < deadline:
        if ctx.join(timeout=1):
            break
    ctx.join(timeout=30)
    assert os.path.exists(out_file), "the 2-process run did not finish"
    got = torch.load(out_file)
    model = _two_tower()
    examples = _examples()
    # one process, the same pairs in the processes' order (shard 0's packed images, then shard 1's)
    batches = [_collate(examples[r::2]) for r in range(2)]
    embeds = [model(**b) for b in batches]
    image = torch.cat([e.image_embeds for e in embeds])
    text = torch.cat([e.text_embeds for e in embeds])
    loss = model.contrastive_loss(image, text)
    loss.backward()
    torch.testing.assert_close(got["losses"].mean(), loss.detach(), rtol=1e-5, atol=1e-6)
    ref = _grads(model)
    assert got["grads"].keys() == ref.keys()
    for k in ref:
        torch.testing.assert_close(got["grads"][k], ref[k], rtol=1e-4, atol=1e-6)
