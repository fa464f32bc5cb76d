"""big_vision UViM (``big_vision/models/proj/uvim/``) -> `BvUViMVQVAEModel` (stage I) and
`BvUViMVTTForConditionalGeneration` (stage II): two families, one rule table each.

Stage I checkpoints hold two flax collections, ``params/...`` and ``state/{dictionary, counts}`` (the VQ codebook;
``uvim/vit.py load`` returns both); the reader keeps ``state/`` beside the parameter tree. A stage I tree without
``state/`` cannot quantise and is refused. Stage II checkpoints hold the parameter tree only (``vtt.load``). The
layout passes mirror the two ``load`` functions: flax ``convert_pre_linen`` and, for stage I, the old
``Encoder``/``Decoder`` module names.

    big-vision-hf convert panoptic_stageI_params.npz uvim-panoptic-stage1/    # zoo entry: config from the file name
    big-vision-hf convert panoptic_stageII_params.npz uvim-panoptic-stage2/
"""

from __future__ import annotations

import math

from ..configuration.configuration_bv_uvim import (
    BvUViMVQVAEConfig,
    BvUViMVTTConfig,
    bv_vqvae_kwargs_to_config,
    bv_vtt_kwargs_to_config,
)
from ..modeling.modeling_bv_uvim import BvUViMVQVAEModel, BvUViMVTTForConditionalGeneration
from .checkpoint import CheckpointError, LazyArray
from .family import Built, Family
from .mapping import (
    Rule,
    Transform,
    conv,
    convert_pre_linen,
    encoder_rules,
    flat,
    heads_in,
    heads_out,
    identity,
    layer_norm,
    linear,
    map_params,
)

#: flax ``DenseGeneral`` contracting the target's trailing axes (``embedding_<target>``): kernel ``[*shape, width]``
#: -> ``Linear.weight [width, prod(shape)]`` (the shape's axes flattened row-major).
dense_general_in = Transform("dense_general_in", lambda x: x.reshape(-1, x.shape[-1]).T,
                             lambda s: (s[-1], math.prod(s[:-1])), layout_only=True)
#: flax ``DenseGeneral(features=shape)`` (``head_<target>``): kernel ``[width, *shape]`` -> ``Linear.weight
#: [prod(shape), width]``; its bias ``[*shape]`` is flattened (`flat`).
dense_general_out = Transform("dense_general_out", lambda x: x.reshape(x.shape[0], -1).T,
                              lambda s: (math.prod(s[1:]), s[0]), layout_only=True)
#: ``uvim/vit.py``'s trunk: posembs, the two ``vit.Encoder`` s, the learned bottleneck resampling and the Dense
#: layers around the bottleneck. GIVT's ViT VAE (``proj.givt.vit``, adapted from it) has the same names.
VIT_VAE_TRUNK_RULES = [
    Rule("pos_embedding_encoder", "pos_embedding_encoder"),
    Rule("pos_embedding_decoder", "pos_embedding_decoder"),
    *encoder_rules("encoder", "encoder"),
    *encoder_rules("decoder", "decoder"),
    Rule("bottleneck_downsample", "bottleneck_downsample", identity),
    Rule("bottleneck_upsample", "bottleneck_upsample", identity),
    *linear("encoder_head", "encoder_head"),
    *linear("decoder_stem", "decoder_stem"),
]
VQVAE_RULES = [
    Rule(r"embedding_(\w+)/kernel", "target_embeddings.{0}.weight", dense_general_in),
    Rule(r"embedding_(\w+)/bias", "target_embeddings.{0}.bias"),
    Rule("ctx_enc_embedding/kernel", "ctx_encoder_embedding.weight", conv),
    Rule("ctx_enc_embedding/bias", "ctx_encoder_embedding.bias"),
    Rule("ctx_dec_embedding/kernel", "ctx_decoder_embedding.weight", conv),
    Rule("ctx_dec_embedding/bias", "ctx_decoder_embedding.bias"),
    *VIT_VAE_TRUNK_RULES,
    Rule(r"head_(\w+)/kernel", "heads.{0}.weight", dense_general_out),
    Rule(r"head_(\w+)/bias", "heads.{0}.bias", flat),
    Rule("state/dictionary", "dictionary"),
    Rule("state/counts", "counts"),
]


def _decoder_attention(bv: str, hf: str) -> list[Rule]:
    """flax ``SelfAttention`` / ``MultiHeadDotProductAttention`` with ``use_bias=False`` -> `BvDecoderAttention`."""
    names = (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj"))
    return [Rule(f"{bv}/{b}/kernel", f"{hf}.{h}.weight", heads_in) for b, h in names] + [
        Rule(f"{bv}/out/kernel", f"{hf}.out_proj.weight", heads_out)
    ]


_BLOCK, _LAYER = r"decoder/EncDecBlock(\d+)", "model.decoder.layers.{0}"
VTT_RULES = [
    Rule("EmbedPatches/kernel", "model.encoder.embeddings.patch_embedding.weight", conv),
    Rule("EmbedPatches/bias", "model.encoder.embeddings.patch_embedding.bias"),
    Rule("pos_embedding_encoder", "model.encoder.embeddings.position_embedding"),
    *encoder_rules("encoder", "model.encoder.encoder"),
    Rule("decoder/EmbedTargets/embedding", "model.decoder.embed_tokens.weight"),
    Rule("pos_embedding_decoder", "model.decoder.position_embedding"),
    *layer_norm(f"{_BLOCK}/LayerNorm1", f"{_LAYER}.layer_norm1"),
    *_decoder_attention(f"{_BLOCK}/SelfAttn", f"{_LAYER}.self_attn"),
    *layer_norm(f"{_BLOCK}/LayerNorm2", f"{_LAYER}.layer_norm2"),
    *_decoder_attention(f"{_BLOCK}/CrossAttn", f"{_LAYER}.cross_attn"),
    *layer_norm(f"{_BLOCK}/LayerNorm3", f"{_LAYER}.layer_norm3"),
    *linear(f"{_BLOCK}/MLP/Dense_0", f"{_LAYER}.mlp.fc1"),
    *linear(f"{_BLOCK}/MLP/Dense_1", f"{_LAYER}.mlp.fc2"),
    *layer_norm("decoder/LayerNorm", "model.decoder.layer_norm"),
    *linear("decoder/LogitsDense", "lm_head"),
]

# Arrays only the other stage has: a checkpoint of one stage given as the other is named as such.
_STAGE_I_ONLY = ("encoder_head/kernel", "decoder_stem/kernel", "state/dictionary")
_STAGE_II_ONLY = ("decoder/EmbedTargets/embedding", "EmbedPatches/kernel")


# ---------------------------------------------------------------------------------------------------------
# Layout passes (uvim/vit.py load, uvim/vtt.py load)
# ---------------------------------------------------------------------------------------------------------


def fix_old_vqvae_names(params: dict[str, LazyArray]) -> dict[str, LazyArray]:
    """As ``uvim/vit.py load``: flax ``convert_pre_linen``, then old-style ``Encoder``/``Decoder`` -> ``encoder`` /
    ``decoder`` (the ``state/`` collection is left as it is)."""
    state = {k: v for k, v in params.items() if k.startswith("state/")}
    params = convert_pre_linen({k: v for k, v in params.items() if not k.startswith("state/")})
    if any(k.startswith("Encoder/") for k in params):
        renames = {"Encoder/": "encoder/", "Decoder/": "decoder/"}
        params = {next((new + k[len(old):] for old, new in renames.items() if k.startswith(old)), k): v
                  for k, v in params.items()}
    return {**params, **state}


def _depth(params: dict[str, LazyArray], block_prefix: str) -> int:
    """Number of ``{block_prefix}{i}/`` blocks (``encoder/encoderblock_``, ``decoder/EncDecBlock``)."""
    ids = {int(k[len(block_prefix):].split("/")[0]) for k in params
           if k.startswith(block_prefix) and k[len(block_prefix):].split("/")[0].isdigit()}
    if ids != set(range(len(ids))):
        raise CheckpointError(f"blocks {block_prefix}N are not numbered 0..N-1: {sorted(ids)}")
    return len(ids)


def _wrong_stage(params: dict[str, LazyArray], this: str, other_only: tuple[str, ...], other: str) -> None:
    """A checkpoint of the other UViM stage (``other``: its family name) is refused naming that family."""
    found = [name for name in other_only if name in params]
    if found:
        stage = "stage I (VQ-VAE)" if other == "proj.uvim.vit" else "stage II (VTT)"
        raise CheckpointError(f"this is a UViM {stage} checkpoint ({found[0]} present), not {this}: convert it with "
                              f"--model-name {other}")


def _check_given(given: dict, inferred: dict, what: str) -> None:
    for key, value in inferred.items():
        if key in given and given[key] is not None and _norm(given[key]) != _norm(value):
            raise CheckpointError(f"{what} model config says {key}={given[key]!r} but the checkpoint arrays have "
                                  f"{value!r}")


def _norm(value):
    if isinstance(value, dict):
        return {k: _norm(v) for k, v in value.items()}
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else value


def _square_grid(n: int, what: str) -> int:
    side = math.isqrt(n)
    if side * side != n:
        raise CheckpointError(f"{what} has {n} positions, not a square grid: pass the image size in --model-config")
    return side


# ---------------------------------------------------------------------------------------------------------
# Stage I: the VQ-VAE
# ---------------------------------------------------------------------------------------------------------


def infer_vqvae_config(params: dict[str, LazyArray], model_kwargs: dict | None = None) -> dict:
    """`BvUViMVQVAEConfig` kwargs from the arrays' shapes and big_vision's ``config.model`` (which must supply
    ``code_len`` when the bottleneck is resized, and the patch / image size where no array shows them)."""
    given = bv_vqvae_kwargs_to_config(dict(model_kwargs or {}))

    def shape(name: str) -> tuple[int, ...]:
        if name not in params:
            raise CheckpointError(f"not a UViM stage I (proj.uvim.vit) checkpoint: no {name!r} array")
        return tuple(params[name].shape)

    _wrong_stage(params, "proj.uvim.vit", _STAGE_II_ONLY, "proj.uvim.vtt")
    missing_state = [n for n in ("state/dictionary", "state/counts") if n not in params]
    if missing_state:
        raise CheckpointError(
            f"the UViM VQ-VAE checkpoint has no {' / '.join(missing_state)}: its codebook is big_vision's `state` "
            "collection (saved beside `params/` by trainers/proj/uvim/vqvae.py); convert the full stage I file")
    width = shape("encoder_head/kernel")[0]
    codebook_size, codeword_dim = shape("state/dictionary")
    inputs = {k[len("embedding_"):-len("/kernel")]: list(params[k].shape[:-1]) for k in params
              if k.startswith("embedding_") and k.endswith("/kernel")}
    outputs = {k[len("head_"):-len("/kernel")]: list(params[k].shape[1:]) for k in params
               if k.startswith("head_") and k.endswith("/kernel")}
    if not inputs or not outputs:
        raise CheckpointError("not a UViM stage I checkpoint: no embedding_<target>/kernel or head_<target>/kernel")
    inferred = dict(
        inputs=inputs, outputs=outputs, hidden_size=width, codebook_size=codebook_size, codeword_dim=codeword_dim,
        encoder_layers=_depth(params, "encoder/encoderblock_"), decoder_layers=_depth(params, "decoder/encoderblock_"),
        intermediate_size=shape("encoder/encoderblock_0/MlpBlock_0/Dense_0/kernel")[1],
        num_attention_heads=shape("encoder/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel")[1],
        with_encoder_ctx="ctx_enc_embedding/kernel" in params,
        with_decoder_ctx="ctx_dec_embedding/kernel" in params,
        bottleneck_resize="bottleneck_downsample" not in params,
        posemb="learn" if "pos_embedding_encoder" in params else "sincos2d",
    )
    for conv_name in ("ctx_enc_embedding/kernel", "ctx_dec_embedding/kernel"):
        if conv_name in params:
            inferred["patch_size"] = list(params[conv_name].shape[:2])
    if "bottleneck_downsample" in params:
        inferred["code_len"] = shape("bottleneck_downsample")[1]
    _check_given(given, inferred, "proj.uvim.vit")
    config = {**given, **inferred}
    if "patch_size" not in config:  # no context conv: a square patch of the targets' last axis (pixels per patch)
        p = math.isqrt(next(iter(inputs.values()))[-1])
        config["patch_size"] = [p, p]
    if "image_size" not in config:
        if config["posemb"] == "sincos2d" and "bottleneck_downsample" not in params:
            raise CheckpointError("a sincos2d UViM VQ-VAE does not store its patch grid: pass input_size in "
                                  "--model-config")
        grid = "pos_embedding_encoder" if "pos_embedding_encoder" in params else "bottleneck_downsample"
        n = shape(grid)[1] if grid == "pos_embedding_encoder" else shape(grid)[0]
        g = _square_grid(n, "the encoder's patch grid")
        config["image_size"] = [g * config["patch_size"][0], g * config["patch_size"][1]]
    if "code_len" not in config:
        raise CheckpointError("a UViM VQ-VAE with bottleneck_resize does not store code_len: pass it in "
                              "--model-config (the stage I config.model, e.g. {\"code_len\": 256})")
    return config


def build_uvim_vqvae(params: dict[str, LazyArray], model_kwargs: dict | None = None, image_size=None) -> Built:
    """`BvUViMVQVAEModel` for a stage I checkpoint (``params/`` + ``state/``); nothing is read yet."""
    params = fix_old_vqvae_names(params)
    config_kwargs = infer_vqvae_config(params, model_kwargs)
    if image_size is not None:
        size = [image_size, image_size] if isinstance(image_size, int) else list(image_size)
        if config_kwargs["image_size"] != size:
            raise CheckpointError(f"--image-size {size} differs from the VQ-VAE's input_size "
                                  f"{config_kwargs['image_size']} (its patch grid is fixed)")
    config = BvUViMVQVAEConfig(**config_kwargs)
    return Built(BvUViMVQVAEModel, config, map_params(params, VQVAE_RULES))


# ---------------------------------------------------------------------------------------------------------
# Stage II: the vision-to-text transformer
# ---------------------------------------------------------------------------------------------------------


def infer_vtt_config(params: dict[str, LazyArray], model_kwargs: dict | None = None) -> dict:
    """`BvUViMVTTConfig` kwargs (with ``vision_config``) from the arrays' shapes and big_vision's ``config.model``."""
    given = bv_vtt_kwargs_to_config(dict(model_kwargs or {}))
    given_vision = given.pop("vision_config")

    def shape(name: str) -> tuple[int, ...]:
        if name not in params:
            raise CheckpointError(f"not a UViM stage II (proj.uvim.vtt) checkpoint: no {name!r} array")
        return tuple(params[name].shape)

    _wrong_stage(params, "proj.uvim.vtt", _STAGE_I_ONLY, "proj.uvim.vit")
    vocab, width = shape("decoder/EmbedTargets/embedding")
    kh, kw, channels, enc_width = shape("EmbedPatches/kernel")
    posemb = "learn" if "pos_embedding_encoder" in params else "sincos2d"
    decoder = dict(
        vocab_size=vocab, hidden_size=width, num_hidden_layers=_depth(params, "decoder/EncDecBlock"),
        num_attention_heads=shape("decoder/EncDecBlock0/SelfAttn/query/kernel")[1],
        intermediate_size=shape("decoder/EncDecBlock0/MLP/Dense_0/kernel")[1],
        posemb="learn" if "pos_embedding_decoder" in params else "sincos2d",
    )
    if "pos_embedding_decoder" in params:
        decoder["max_position_embeddings"] = shape("pos_embedding_decoder")[1]
    vision = dict(
        hidden_size=enc_width, num_hidden_layers=_depth(params, "encoder/encoderblock_"),
        num_attention_heads=shape("encoder/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel")[1],
        intermediate_size=shape("encoder/encoderblock_0/MlpBlock_0/Dense_0/kernel")[1],
        patch_size=[kh, kw], num_channels=channels, posemb=posemb,
    )
    if posemb == "learn":
        g = _square_grid(shape("pos_embedding_encoder")[1], "pos_embedding_encoder")
        vision["image_size"] = [g * kh, g * kw]
    _check_given(given, decoder, "proj.uvim.vtt")
    _check_given(given_vision, vision, "proj.uvim.vtt")
    decoder, vision = {**given, **decoder}, {**given_vision, **vision, "pool_type": "none"}
    if "max_position_embeddings" not in decoder:
        raise CheckpointError("a sincos2d UViM VTT does not store seq_len: pass it in --model-config")
    if "image_size" not in vision:
        raise CheckpointError("a sincos2d UViM VTT does not store its image size: pass input_size in --model-config")
    return {**decoder, "vision_config": vision}


def build_uvim_vtt(params: dict[str, LazyArray], model_kwargs: dict | None = None, image_size=None) -> Built:
    """`BvUViMVTTForConditionalGeneration` for a stage II checkpoint; nothing is read yet."""
    params = convert_pre_linen(params)
    config_kwargs = infer_vtt_config(params, model_kwargs)
    if image_size is not None:
        size = [image_size, image_size] if isinstance(image_size, int) else list(image_size)
        if config_kwargs["vision_config"]["image_size"] != size:
            raise CheckpointError(f"--image-size {size} differs from the VTT's input_size "
                                  f"{config_kwargs['vision_config']['image_size']}")
    config = BvUViMVTTConfig(**config_kwargs)
    return Built(BvUViMVTTForConditionalGeneration, config, map_params(params, VTT_RULES))


_PIPELINE_USAGE = """```python
import big_vision_hf  # pip install big_vision_hf; registers the classes
from PIL import Image
from big_vision_hf.processing.uvim_tasks import UViMPipeline

# both stages of one task: stage I = the VQ-VAE folder, stage II = the VTT folder
pipe = UViMPipeline.from_pretrained("path/to/stage-I-folder", "path/to/stage-II-folder")
result = pipe(Image.open("image.jpg"))[0]  # {"panoptic": [H, W, 2]} / {"depth": [H, W]} / {"image": [H, W, 3]}
```"""


def stage1_card_usage(model) -> str:
    """The card's usage of a stage I folder: the two-stage pipeline, and the VQ-VAE alone."""
    targets = ", ".join(f'"{k}": [B, {model.config.grid_size[0] * model.config.grid_size[1]}, '
                        f'{", ".join(map(str, v))}]' for k, v in model.config.inputs.items())
    return _PIPELINE_USAGE + f"""

The VQ-VAE alone (``trust_remote_code=True`` where big_vision_hf is not installed):

```python
from transformers import AutoModel

vqvae = AutoModel.from_pretrained("path/to/this/folder", trust_remote_code=True)
out = vqvae(inputs={{{targets}}}, pixel_values=image)  # image: [B, 3, H, W] in [-1, 1]
out.code                                       # [B, {model.config.code_len}] guide codes
logits = vqvae.decode(out.code, pixel_values=image)  # per-target logits
```"""


def stage2_card_usage(model) -> str:
    """The card's usage of a stage II folder: the two-stage pipeline, and the VTT alone."""
    return _PIPELINE_USAGE + f"""

The VTT alone (``trust_remote_code=True`` where big_vision_hf is not installed):

```python
from transformers import AutoModelForImageTextToText

vtt = AutoModelForImageTextToText.from_pretrained("path/to/this/folder", trust_remote_code=True)
tokens = vtt.generate(pixel_values=image)  # image: [B, 3, H, W] in [-1, 1]; greedy
codes = tokens[:, 1:] - 1  # [B, {model.config.max_position_embeddings}] stage I codes (token 0 starts the sequence)
loss = vtt(pixel_values=image, labels=codes + 1).loss  # teacher-forced, for fine-tuning
```"""


STAGE_I = Family(
    name="proj.uvim.vit",
    build=build_uvim_vqvae,
    summary="UViM stage I VQ-VAE (proj/uvim/vit.py): label maps <-> guide codes (params/ + state/ codebook)",
    signatures=(("encoder_head/kernel", "decoder_stem/kernel", "!decoder_head/kernel"),),  # GIVT's ViT VAE has one
    classes=("BvUViMVQVAEModel",),
    card_usage=stage1_card_usage,
)

STAGE_II = Family(
    name="proj.uvim.vtt",
    build=build_uvim_vtt,
    summary="UViM stage II vision-to-text transformer (proj/uvim/vtt.py): image -> guide codes, with generate()",
    signatures=(("EmbedPatches/kernel", "decoder/EmbedTargets/embedding"),),
    classes=("BvUViMVTTModel", "BvUViMVTTForConditionalGeneration"),
    card_usage=stage2_card_usage,
)
