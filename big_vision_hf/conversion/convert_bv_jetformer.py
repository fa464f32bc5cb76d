"""big_vision JetFormer (``big_vision/models/proj/jetformer/``) -> `BvJetFormerModel`.

A JetFormer checkpoint is the trainer's ``params`` tree (``trainers/proj/jetformer/train.py``): the transformer
(``EmbedText``, ``EmbedImage``, ``LogitsImage``, optionally ``LogitsText``, ``TextNorm``/``ImageNorm``, and the Gemma
backbone under ``decoder/``: ``decoder/layers/...`` stacked on axis 0 when ``scan=True``, ``decoder/layers/{i}/...``
otherwise) and the Jet adaptor under ``params_adaptor/`` (big_vision ``proj.jet.jet`` layout, see
``convert_bv_jet``). The Gemma backbone goes through PaliGemma's layout passes and rule table (fused ``qkv``/``kv``
einsums split, loop layout) with ``decoder/`` in place of ``llm/``.

``--model-config`` is big_vision's ``config.model`` with, as extra keys, ``patch_pca`` (``config.patch_pca.model``),
``adaptor`` (``config.adaptor.model``), ``sample_images`` (``config.sample_images``) and the trainer fields the model
reads (``latent_noise_dim``, ``input_noise_std``, ``noise_scale``, ``noise_min``, ``rgb_noise_on_image_prefix``,
``text_prefix_prob``, ``loss_on_prefix``, ``text_loss_weight``, ``stop_grad_nvp_prefix``). Sizes come from the arrays;
``bos_id`` and ``nolabel_id`` are required (big_vision has no default); omitted ``patch_pca`` kwargs take
``patch_pca.Model``'s defaults (``skip_pca=False``: the released configs set ``skip_pca=True``). With a PCA
(``skip_pca=False``) its three arrays come from ``patch_pca/{components_,explained_variance_,mean_}`` in the
checkpoint or from the file ``patch_pca.pca_init_file`` names, as big_vision reads it. The adaptor's ``ps`` and
``kinds`` default to what its arrays show.

    big-vision-hf convert jetformer.npz out/ --model-name proj.jetformer.jetformer --model-config "$(cat kw.json)"
"""

from __future__ import annotations

import re

from ..configuration.configuration_bv_jet import BvJetConfig
from ..configuration.configuration_bv_jetformer import BvJetFormerConfig, bv_jetformer_kwargs_to_config
from ..modeling.modeling_bv_jetformer import BvJetFormerModel
from .checkpoint import CheckpointError, LazyArray, read_checkpoint
from .convert_bv_jet import infer_jet_config, jet_rules, prepare_jet_params
from .convert_paligemma import (
    GEMMA_NORM_RULES,
    GEMMA_RULES,
    maybe_transpose_gating_einsum,
    split_fused_einsums,
    to_gemma_loop_layout,
)
from .family import Built, Family
from .mapping import Rule, linear, map_params, prefixed

ADAPTOR = "params_adaptor/"
PCA_ARRAYS = {"components_": "components", "explained_variance_": "explained_variance", "mean_": "mean"}
# big_vision patch_pca.Model field defaults (what an omitted kwarg means there).
BV_PATCH_PCA_DEFAULTS = dict(noise_std=0.01, add_dequant_noise=False, input_size=(256, 256), patch_size=(16, 16),
                             whiten=True, depth_to_seq=1, skip_pca=False)

# big_vision JetFormer names (after the layout passes; the backbone renamed decoder/ -> llm/) -> ours.
JETFORMER_RULES = [
    Rule("EmbedText/embedding", "embed_tokens.weight"),
    *linear("EmbedImage", "embed_image"),
    *linear("LogitsImage", "image_head"),
    *linear("LogitsText", "lm_head"),
    Rule("TextNorm/scale", "text_norm.weight"),
    Rule("ImageNorm/scale", "image_norm.weight"),
    *prefixed([r for r in GEMMA_RULES + GEMMA_NORM_RULES if not r.bv.startswith("embedder/")], "llm/"),
    *[Rule(rf"patch_pca/{re.escape(bv)}", f"patch_pca.{hf}") for bv, hf in PCA_ARRAYS.items()],
]


def prepare_jetformer_params(params: dict[str, LazyArray]) -> dict[str, LazyArray]:
    """``decoder/`` -> ``llm/`` then PaliGemma's Gemma passes (loop layout, split einsums); the adaptor unstacked."""
    params = {("llm/" + k[len("decoder/"):] if k.startswith("decoder/") else k): v for k, v in params.items()}
    params = split_fused_einsums(to_gemma_loop_layout(maybe_transpose_gating_einsum(params)))
    return prepare_jet_params(params, ADAPTOR)


def _shape(params, name: str) -> tuple[int, ...]:
    if name not in params:
        raise CheckpointError(f"not a big_vision JetFormer checkpoint: no {name!r} array")
    return tuple(params[name].shape)


def infer_backbone(params: dict[str, LazyArray]) -> dict:
    """Gemma sizes from the (raw) ``decoder/`` arrays, scanned or not."""
    scanned = "decoder/layers/pre_attention_norm/scale" in params
    first, lead = ("decoder/layers/", 1) if scanned else ("decoder/layers/0/", 0)
    if f"{first}attn/qkv_einsum/w" in params:  # num_kv_heads == num_heads
        _, heads, _, head_dim = _shape(params, f"{first}attn/qkv_einsum/w")[lead:]
        kv_heads = heads
    else:
        heads, _, head_dim = _shape(params, f"{first}attn/q_einsum/w")[lead:]
        kv_heads = _shape(params, f"{first}attn/kv_einsum/w")[lead + 1]
    depth = (_shape(params, "decoder/layers/pre_attention_norm/scale")[0] if scanned
             else len({k.split("/")[2] for k in params if k.startswith("decoder/layers/")}))
    return dict(num_hidden_layers=depth, num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim,
                intermediate_size=max(_shape(params, f"{first}mlp/gating_einsum")[lead + 1:]))


def pca_arrays(params: dict[str, LazyArray], pca_init_file: str | None) -> dict[str, LazyArray]:
    """The PCA's arrays as ``patch_pca/<sklearn name>``: from the checkpoint, else from ``pca_init_file``."""
    if all(f"patch_pca/{k}" in params for k in PCA_ARRAYS):
        return {}
    if not pca_init_file:
        raise CheckpointError("skip_pca=False needs the PCA: patch_pca.pca_init_file in --model-config, or "
                              "patch_pca/{components_,explained_variance_,mean_} arrays in the checkpoint")
    try:
        pca = read_checkpoint(pca_init_file)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"patch_pca.pca_init_file {pca_init_file}: {e}") from None
    missing = sorted(set(PCA_ARRAYS) - set(pca))
    if missing:
        raise CheckpointError(f"patch_pca.pca_init_file {pca_init_file} has no {', '.join(missing)} array(s)")
    return {f"patch_pca/{k}": pca[k] for k in PCA_ARRAYS}


def build_jetformer(params: dict[str, LazyArray], model_kwargs: dict | None = None) -> Built:
    """`BvJetFormerModel` for a big_vision JetFormer checkpoint (reads only the adaptor's permutation stacks)."""
    kwargs = dict(model_kwargs or {})
    adaptor_kwargs = kwargs.pop("adaptor", None)
    use_adaptor = kwargs.pop("use_adaptor", None)
    kwargs.pop("adaptor_name", None)
    patch_kwargs = {**BV_PATCH_PCA_DEFAULTS, **(kwargs.pop("patch_pca", None) or {})}
    for required in ("bos_id", "nolabel_id"):
        if kwargs.get(required) is None:
            raise CheckpointError(f"--model-config needs {required} (big_vision jetformer.Model has no default)")
    kwargs.setdefault("boi_id", None)
    fields = bv_jetformer_kwargs_to_config({**kwargs, "patch_pca": patch_kwargs})

    vocab_rows, width = _shape(params, "EmbedText/embedding")
    out_dim = _shape(params, "EmbedImage/kernel")[0]
    num_logits = _shape(params, "LogitsImage/kernel")[1]
    vocab = fields.get("vocab_size", 1000)  # jetformer.Model default
    inferred = dict(hidden_size=width, out_dim=out_dim, untie_output_vocab="LogitsText/kernel" in params,
                    per_modality_final_norm="TextNorm/scale" in params, vocab_size=vocab,
                    num_vocab_repeats=vocab_rows // vocab, **infer_backbone(params))
    if vocab_rows % vocab:
        raise CheckpointError(f"EmbedText has {vocab_rows} rows, not a multiple of vocab_size={vocab}")
    multivariate = fields.get("multivariate", False)
    inferred["num_mixtures"] = 1 if multivariate else num_logits // (1 + 2 * out_dim)
    for key, value in inferred.items():
        if key in fields and fields[key] != value:
            raise CheckpointError(f"JetFormer config says {key}={fields[key]!r} but the checkpoint arrays have "
                                  f"{value!r}")
    fields.update(inferred)

    has_adaptor = any(k.startswith(ADAPTOR) for k in params)
    if use_adaptor is not None and bool(use_adaptor) != has_adaptor:
        raise CheckpointError(f"use_adaptor={use_adaptor} but the checkpoint {'has' if has_adaptor else 'has no'} "
                              f"{ADAPTOR} arrays")
    if not fields.get("skip_pca", False):
        params = {**params, **pca_arrays(params, patch_kwargs.get("pca_init_file"))}
        fields["pca_components"] = params["patch_pca/components_"].shape[0]
    p, q = fields["patch_size"] if not isinstance(fields["patch_size"], int) else (fields["patch_size"],) * 2
    token_dim = (p * q * 3 if fields["skip_pca"] else fields["pca_components"]) // fields.get("depth_to_seq", 1)
    noise_dim = fields.get("latent_noise_dim", 0)
    if out_dim + noise_dim != token_dim:
        raise CheckpointError(f"out_dim ({out_dim}, EmbedImage) + latent_noise_dim ({noise_dim}) must equal "
                              f"the image token size ({token_dim}): set latent_noise_dim in --model-config")
    if has_adaptor:  # it sees the tokens as an image with out_dim + latent_noise_dim channels
        channels = out_dim + noise_dim
        fields["jet_config"] = BvJetConfig(**infer_jet_config(params, adaptor_kwargs, ADAPTOR, "JetFormer adaptor",
                                                              channels=channels))
    config = BvJetFormerConfig(**fields)
    if config.num_logits != num_logits:
        raise CheckpointError(f"LogitsImage has {num_logits} outputs; num_mixtures={config.num_mixtures}, "
                              f"out_dim={out_dim}, multivariate={config.multivariate} give {config.num_logits}")
    mapped = map_params(prepare_jetformer_params(params), JETFORMER_RULES + (
        jet_rules(config.jet_config.num_couplings, ADAPTOR, "jet.") if has_adaptor else []))
    return Built(BvJetFormerModel, config, mapped)


def jetformer_processor(config, preprocessing: str):
    """The folder's image processor: the JetFormer configs' ``resize_small(R, bicubic, antialias)|central_crop(R)|
    value_range(-1, 1)`` at the model's resolution (or the pp string given)."""
    from ..processing.image_processing_bv import image_processor_for

    h, w = config.image_size
    if preprocessing in ("resize", "resize_small") and h == w:
        preprocessing = (f'decode|resize_small({h}, method="bicubic", antialias=True)|central_crop({h})'
                         "|value_range(-1, 1)")
    return image_processor_for(config, preprocessing)


def jetformer_card_usage(model) -> str:
    """The card's usage: sampling images, scoring (the trainer's loss), sampling text."""
    return """```python
import torch
from transformers import AutoModel

model = AutoModel.from_pretrained("path/to/this/folder", trust_remote_code=True).eval()
labels = torch.tensor([[1], [2]])   # class labels [B, 1], or text ids [B, T] (then text_attention_mask=...)
images = model.generate_images(labels, generator=torch.Generator().manual_seed(0))  # CFG / temperatures: config's
out = model(labels, pixel_values=images)   # text/image logits, per-token NLLs, bits per sub-pixel, big_vision's loss
captions = model.generate_text(pixel_values=images, max_new_tokens=16)              # image -> text models
```"""


FAMILY = Family(
    name="proj.jetformer.jetformer",
    build=build_jetformer,
    summary="JetFormer (proj/jetformer): autoregressive transformer over text and Jet-flow image tokens",
    signatures=(("EmbedImage/kernel", "LogitsImage/kernel", "decoder/final_norm/scale"),),
    options=(),
    processor=jetformer_processor,
    card_usage=jetformer_card_usage,
    classes=("BvJetFormerModel",),
)
