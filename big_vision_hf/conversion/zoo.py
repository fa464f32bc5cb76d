"""The named public big_vision checkpoints: what their arrays cannot tell.

Keyed by big_vision's vanity names (``VANITY_NAMES`` in ``models/vit.py``, ``models/bit.py``,
``models/mlp_mixer.py``, ``models/proj/image_text/two_towers.py``, ``configs/proj/flexivit``); each entry gives
the file, the big_vision ``config.model_name`` and ``config.model`` kwargs, the input resolution and the
evaluation preprocessing, and for image-text models the text pp (tokenizer, text length). This is the only place
that holds facts about particular checkpoints; nothing infers them from file names, except that
:func:`find_entry` recognises a registered file by its exact basename.

SigLIP / SigLIP 2 files hold two towers. big_vision names the whole model (``two_towers.VANITY_NAMES``) and its
image tower (``vit.VANITY_NAMES``, ``file.npz:img``) alike; here the two-tower entry has the name and the image
tower is ``"<name>:img"``. A bare file name finds the two towers, ``file.npz:img`` (or ``--model-name vit``) the
image tower.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field


@dataclass(frozen=True)
class CheckpointEntry:
    name: str
    url: str  # gs://bucket/path.npz[:subtree]; gs://X/... == https://storage.googleapis.com/X/...
    model_name: str  # big_vision config.model_name
    model_config: dict = field(default_factory=dict)  # big_vision config.model
    image_size: int = 224
    # big_vision evaluation pp: "resize" = decode|resize(S)|value_range(-1,1);
    # "resize_small" = decode|resize_small(S*8/7)|central_crop(S)|value_range(-1,1).
    preprocessing: str = "resize"
    license: str = "apache-2.0"
    paper: str = ""
    # Image-text models: big_vision's text pp (`tokenizer` is its KNOWN_TOKENIZERS / tokenizers.gemma name, whose
    # file is `tokenizer_url`; `text_preset` the `--text-preset` reproducing the pp string; `text_length` the
    # `tokenize(max_len=...)` length = the text tower's posemb length).
    tokenizer: str = ""
    tokenizer_url: str = ""
    text_preset: str = ""
    text_length: int = 0

    @property
    def filename(self) -> str:
        return os.path.basename(self.url[len("gs://"):].split(":")[0])

    @property
    def subtree(self) -> str | None:
        tail = self.url[len("gs://"):]
        return tail.split(":", 1)[1] if ":" in tail else None


ZOO: dict[str, CheckpointEntry] = {}


def _add(entry: CheckpointEntry) -> None:
    ZOO[entry.name] = entry


_AUGREG = "https://arxiv.org/abs/2106.10270"
for _v, _file in {
    "Ti/16": "Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0.npz",
    "S/32": "S_32-i21k-300ep-lr_0.001-aug_none-wd_0.1-do_0.0-sd_0.0.npz",
    "S/16": "S_16-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0.npz",
    "B/32": "B_32-i21k-300ep-lr_0.001-aug_light1-wd_0.1-do_0.0-sd_0.0.npz",
    "B/16": "B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0.npz",
    "B/8": "B_8-i21k-300ep-lr_0.001-aug_medium2-wd_0.1-do_0.0-sd_0.0.npz",
    "L/16": "L_16-i21k-300ep-lr_0.001-aug_strong1-wd_0.1-do_0.0-sd_0.0.npz",
}.items():
    # AugReg i21k pre-trained ViTs (cls token, learned posemb, i21k head with 21843 classes).
    _add(CheckpointEntry(f"howto-i21k-{_v}", f"gs://vit_models/augreg/{_file}", "vit",
                         {"variant": _v, "pool_type": "tok", "num_classes": 21843}, 224, "resize", paper=_AUGREG))

for _ep in (90, 150, 300):
    # "Better plain ViT baselines" (https://arxiv.org/abs/2205.01580), big_vision configs/vit_s16_i1k.py.
    _add(CheckpointEntry(f"i1k-s16-{_ep}ep", f"gs://big_vision/vit_s16_i1k_{_ep}ep.npz", "vit",
                         {"variant": "S/16", "pool_type": "gap", "posemb": "sincos2d", "rep_size": True,
                          "num_classes": 1000}, 224, "resize_small", paper="https://arxiv.org/abs/2205.01580"))

for _size, _long in (("S", "small"), ("B", "base"), ("L", "large")):
    for _res in (224, 384):
        for _data in ("1k", "21k"):
            # DeiT-3 zoo; "First layer converted to take inputs in [-1,1]" (big_vision models/vit.py).
            _add(CheckpointEntry(f"deit3_{_size}_{_res}_{_data}",
                                 f"gs://big_vision/zoo/deit3/bv_deit_3_{_long}_{_res}_{_data}.npz", "vit",
                                 {"variant": f"{_size}/16", "pool_type": "tok", "num_classes": 1000}, _res,
                                 "resize_small", license="apache-2.0",
                                 paper="https://arxiv.org/abs/2204.07118"))

# SigLIP (https://arxiv.org/abs/2303.15343): big_vision configs/proj/image_text/SigLIP_demo.ipynb (file, text
# variant, embedding dim, text length, vocab) and two_towers.VANITY_NAMES. Text pp: `tokenize(max_len=L,
# model=c4_en|mc4, eos="sticky", pad_value=1)`.
_TOKENIZERS = {  # big_vision pp/ops_text.py KNOWN_TOKENIZERS, pp/proj/paligemma/ops.py tokenizers.gemma
    "c4_en": "gs://t5-data/vocabs/cc_en.32000/sentencepiece.model",
    "mc4": "gs://t5-data/vocabs/mc4.250000.100extra/sentencepiece.model",
    "gemma": "gs://big_vision/gemma_tokenizer.model",
}
_SIGLIP = {
    # name: (file, image variant, resolution, text variant, out_dim[1], text length, vocab)
    "SigLIP B/16 224": ("siglip/webli_en_b16_224_63724782.npz", "B/16", 224, "B", 768, 64, 32_000),
    "SigLIP B/16 256": ("siglip/webli_en_b16_256_60500360.npz", "B/16", 256, "B", 768, 64, 32_000),
    "SigLIP B/16 384": ("siglip/webli_en_b16_384_68578854.npz", "B/16", 384, "B", 768, 64, 32_000),
    "SigLIP B/16 512": ("siglip/webli_en_b16_512_68580893.npz", "B/16", 512, "B", 768, 64, 32_000),
    "SigLIP L/16 256": ("siglip/webli_en_l16_256_60552751.npz", "L/16", 256, "L", 1024, 64, 32_000),
    "SigLIP L/16 384": ("siglip/webli_en_l16_384_63634585.npz", "L/16", 384, "L", 1024, 64, 32_000),
    "SigLIP So400m/14 224": ("siglip/webli_en_so400m_224_57633886.npz", "So400m/14", 224, "So400m", 1152, 16, 32_000),
    "SigLIP So400m/14 384": ("siglip/webli_en_so400m_384_58765454.npz", "So400m/14", 384, "So400m", 1152, 64, 32_000),
    "SigLIP B/16-i18n 256": ("siglip/webli_i18n_b16_256_66117334.npz", "B/16", 256, "B", 768, 64, 250_000),
    # Only in SigLIP_demo.ipynb (not in VANITY_NAMES), with EMBDIM None: out_dim=(None, None), no text head.
    "SigLIP So400m/16-i18n 256": ("siglip/webli_i18n_so400m_16_256_78061115.npz", "So400m/16", 256, "So400m", None,
                                  64, 250_000),
}
# SigLIP 2 (https://arxiv.org/abs/2502.14786): configs/proj/image_text/README_siglip2.md (files) and
# SigLIP2_demo.ipynb (model config: `out_dim=[None, EMBDIM]`, EMBDIM = the image width, the g-opt image tower with
# a So400m text tower; vocab 256_000; text pp `lower|tok(length=64, model="gemma", bos="no", eos="sticky")`).
_SIGLIP2 = {
    # name: (file, image variant, resolution, text variant, out_dim[1])
    "SigLIP2 B/16 224": ("siglip2/siglip2_b16_224.npz", "B/16", 224, "B", 768),
    "SigLIP2 B/16 256": ("siglip2/siglip2_b16_256.npz", "B/16", 256, "B", 768),
    "SigLIP2 B/16 384": ("siglip2/siglip2_b16_384.npz", "B/16", 384, "B", 768),
    "SigLIP2 B/16 512": ("siglip2/siglip2_b16_512.npz", "B/16", 512, "B", 768),
    "SigLIP2 B/32 256": ("siglip2/siglip2_b32_256.npz", "B/32", 256, "B", 768),
    "SigLIP2 L/16 256": ("siglip2/siglip2_l16_256.npz", "L/16", 256, "L", 1024),
    "SigLIP2 L/16 384": ("siglip2/siglip2_l16_384.npz", "L/16", 384, "L", 1024),
    "SigLIP2 L/16 512": ("siglip2/siglip2_l16_512.npz", "L/16", 512, "L", 1024),
    "SigLIP2 So400m/14 224": ("siglip2/siglip2_so400m14_224.npz", "So400m/14", 224, "So400m", 1152),
    "SigLIP2 So400m/14 384": ("siglip2/siglip2_so400m14_384.npz", "So400m/14", 384, "So400m", 1152),
    "SigLIP2 So400m/16 256": ("siglip2/siglip2_so400m16_256.npz", "So400m/16", 256, "So400m", 1152),
    "SigLIP2 So400m/16 384": ("siglip2/siglip2_so400m16_384.npz", "So400m/16", 384, "So400m", 1152),
    "SigLIP2 So400m/16 512": ("siglip2/siglip2_so400m16_512.npz", "So400m/16", 512, "So400m", 1152),
    "SigLIP2 g-opt/16 256": ("siglip2/siglip2_g-opt16_256.npz", "g-opt/16", 256, "So400m", 1536),
    "SigLIP2 g-opt/16 384": ("siglip2/siglip2_g-opt16_384.npz", "g-opt/16", 384, "So400m", 1536),
    # NaFlex (image_model="proj.image_text.naflex_vit", image=dict(pool_type="map", nposemb=16,
    # posemb="learn_2d", variant=...)): naflex_vit takes no patch size (its Model rejects "B/16"; the patch, 16 in
    # the README table, is read from the arrays). The notebook passes variant="B" for both (it loads without
    # checks); So400m/16 NaFlex needs "So400m". Resolution: any; the README's results use 256 patches (the
    # processor's default), `image_size` 256 below is only what `list` shows.
    "SigLIP2 B/16 NaFlex": ("siglip2/siglip2_b16_naflex.npz", "B", 0, "B", 768),
    "SigLIP2 So400m/16 NaFlex": ("siglip2/siglip2_so400m16_naflex.npz", "So400m", 0, "So400m", 1152),
}
_NAFLEX = "proj.image_text.naflex_vit"


def _add_siglip(name, file, image_variant, res, text_variant, text_dim, text_length, vocab, tokenizer, preset, paper):
    naflex = res == 0
    image = ({"variant": image_variant, "pool_type": "map", "posemb": "learn_2d", "nposemb": 16} if naflex
             else {"variant": image_variant, "pool_type": "map"})
    model = {"image_model": _NAFLEX if naflex else "vit", "image": image,
             "text_model": "proj.image_text.text_transformer", "text": {"variant": text_variant, "vocab_size": vocab},
             "out_dim": [None, text_dim], "bias_init": -10.0}
    if not naflex:
        model["temperature_init"] = 10.0  # SigLIP_demo.ipynb (only initialises `t`; the file holds its value)
    text = dict(tokenizer=tokenizer, tokenizer_url=_TOKENIZERS[tokenizer], text_preset=preset, text_length=text_length)
    url = f"gs://big_vision/{file}"
    _add(CheckpointEntry(name, url, "proj.image_text.two_towers", model, res or 256, "resize", paper=paper, **text))
    # The image tower alone (big_vision vit.VANITY_NAMES / naflex: `file.npz:img`): MAP pool, no head.
    _add(CheckpointEntry(f"{name}:img", f"{url}:img", _NAFLEX if naflex else "vit", image, res or 256, "resize",
                         paper=paper))


for _name, (_file, _v, _res, _tv, _dim, _len, _vocab) in _SIGLIP.items():
    _add_siglip(_name, _file, _v, _res, _tv, _dim, _len, _vocab, "c4_en" if _vocab == 32_000 else "mc4", "siglip",
                "https://arxiv.org/abs/2303.15343")
for _name, (_file, _v, _res, _tv, _dim) in _SIGLIP2.items():
    _add_siglip(_name, _file, _v, _res, _tv, _dim, 64, 256_000, "gemma", "siglip2", "https://arxiv.org/abs/2502.14786")

for _size in ("s", "b", "l"):
    for _ep in ("", "_90ep", "_300ep", "_600ep"):
        # FlexiViT (https://arxiv.org/abs/2212.08013), big_vision configs/proj/flexivit: underlying patch 32,
        # posemb 7x7, tok pool, 240px, i1k head.
        _add(CheckpointEntry(f"FlexiViT-{_size.upper()} i1k{_ep}", f"gs://big_vision/flexivit/flexivit_{_size}_i1k{_ep}.npz",
                             "proj.flexi.vit", {"variant": _size.upper(), "patch_size": [32, 32],
                                                "posemb_size": [7, 7], "pool_type": "tok", "num_classes": 1000},
                             240, "resize_small", paper="https://arxiv.org/abs/2212.08013"))

for _name, _file in {"B-i1k/16": "imagenet1k/Mixer-B_16.npz", "L-i1k/16": "imagenet1k/Mixer-L_16.npz",
                     "B-i21k/16": "imagenet21k/Mixer-B_16.npz", "L-i21k/16": "imagenet21k/Mixer-L_16.npz"}.items():
    # MLP-Mixer (https://arxiv.org/abs/2105.01601), big_vision models/mlp_mixer.py; legacy layout.
    _add(CheckpointEntry(f"Mixer {_name}", f"gs://mixer_models/{_file}", "mlp_mixer",
                         {"variant": _name.split("-")[0] + "/16",
                          "num_classes": 1000 if "i1k" in _name else 21843}, 224, "resize",
                         paper="https://arxiv.org/abs/2105.01601"))

for _arch in ("R50x1", "R50x3", "R101x1", "R101x3", "R152x2", "R152x4"):
    _depth, _width = _arch[1:].split("x")
    for _data, _classes in (("S", 1000), ("M", 21843)):
        # BiT (https://arxiv.org/abs/1912.11370) upstream checkpoints, original big_transfer layout.
        _add(CheckpointEntry(f"BiT-{_data}-{_arch}", f"gs://bit_models/BiT-{_data}-{_arch}.npz", "bit_paper",
                             {"depth": int(_depth), "width": int(_width), "num_classes": _classes}, 224, "resize",
                             paper="https://arxiv.org/abs/1912.11370"))
        _add(CheckpointEntry(f"BiT-{_data}-{_arch}-ILSVRC2012", f"gs://bit_models/BiT-{_data}-{_arch}-ILSVRC2012.npz",
                             "bit_paper", {"depth": int(_depth), "width": int(_width), "num_classes": 1000}, 224,
                             "resize", paper="https://arxiv.org/abs/1912.11370"))
for _res in (160, 224):
    # FunMatch distilled students (https://arxiv.org/abs/2106.05237), big_vision configs/proj/distill.
    _add(CheckpointEntry(f"BiT-distill-R50x1-{_res}", f"gs://bit_models/distill/R50x1_{_res}.npz", "bit_paper",
                         {"depth": 50, "width": 1, "num_classes": 1000}, _res, "resize_small",
                         paper="https://arxiv.org/abs/2106.05237"))


# UViM (https://arxiv.org/abs/2205.10337), big_vision configs/proj/uvim/README.md (files): stage I = the VQ-VAE of
# vqvae_{coco_panoptic,nyu_depth,imagenet2012_colorization}.py (= `config.oracle.model` of the stage II configs),
# stage II = `config.model` of train_*_pretrained.py (VTT_MODELS["large"], patches 16, posemb "learn"). Both read the
# image at 512 px with `resize(512)|value_range(-1, 1)` (colorization: gray first, `processing.uvim_tasks`).
_UVIM_STAGE_I = dict(input_size=[512, 512], patch_size=[16, 16], code_len=256, width=768, enc_depth=6, dec_depth=12,
                     mlp_dim=3072, num_heads=12, dict_size=4096, codeword_dim=768, with_encoder_ctx=True,
                     with_decoder_ctx=True, code_dropout="random", bottleneck_resize=True)
_UVIM_STAGE_II = dict(num_layers=24, num_heads=16, mlp_dim=4096, emb_dim=1024, patches={"size": [16, 16]},
                      vocab_size=4096 + 1, posemb_type="learn", input_size=[512, 512], seq_len=256)
for _task, _file, _targets in (
    ("panoptic", "panoptic", {"semantics": [133 + 1, 256], "instances": [100, 256]}),  # COCO: +1 for void
    ("depth", "depth", {"depth": [256, 256]}),  # NYU depth v2: 256 bins in [1e-3, 10] m
    ("colorization", "color", {"color": [3, 256]}),  # ImageNet
):
    _add(CheckpointEntry(f"UViM {_task} stage I", f"gs://big_vision/uvim/{_file}_stageI_params.npz", "proj.uvim.vit",
                         {**_UVIM_STAGE_I, "inputs": _targets, "outputs": _targets}, 512, "resize",
                         paper="https://arxiv.org/abs/2205.10337"))
    _add(CheckpointEntry(f"UViM {_task} stage II", f"gs://big_vision/uvim/{_file}_stageII_params.npz",
                         "proj.uvim.vtt", dict(_UVIM_STAGE_II), 512, "resize", paper="https://arxiv.org/abs/2205.10337"))


# GIVT (https://arxiv.org/abs/2312.02116): files from big_vision configs/proj/givt/README.md; model configs from
# givt_imagenet2012.py (`model_size="default"`), givt_coco_panoptic.py, givt_nyu_depth.py; sampling settings (kept in
# the config, the defaults of `BvGivtModel.generate`) from the README's table and givt_demo_colab.ipynb. The ImageNet
# VAEs are flax msgpack files without extension (a malib training state: `cnn.load(malib_ckpt=True,
# use_ema_params=True)`), fully convolutional (the same VAE serves 256 and 512 px).
_GIVT = "https://arxiv.org/abs/2312.02116"
_GIVT_CNN_VAE = dict(codeword_dim=16, code_len=256, filters=128, num_res_blocks=2, channel_multipliers=[1, 1, 2, 2, 4],
                     conv_downsample=False, activation_fn="swish", norm_type="GN", malib_ckpt=True)
for _beta, _tag in (("1e-5", "1e-5"), ("2.5e-5", "2p5e-5"), ("5e-5", "5e-5"), ("1e-4", "1e-4"), ("2e-4", "2e-4")):
    _add(CheckpointEntry(f"GIVT VAE ImageNet beta={_beta}", f"gs://big_vision/givt/vae_imagenet_2012_beta_{_tag}_params",
                         "proj.givt.cnn", dict(_GIVT_CNN_VAE), 256, "resize_small", paper=_GIVT))
_GIVT_I1K = dict(num_decoder_layers=24, num_heads=16, mlp_dim=4096, emb_dim=1024, num_layers=0, num_labels=1000,
                 out_dim=16, num_mixtures=16, posemb_type="learn", scale_tol=1e-6, min_masking_rate_training=0.3,
                 mask_style="concat", drop_labels_probability=0.1, fix_square_plus=True, per_channel_mixtures=False,
                 scan=True)
_add(CheckpointEntry(  # README: t=0.95, DB-CFG=0.4 (FID 3.35); VAE beta=5e-5
    "GIVT-Causal ImageNet 256", "gs://big_vision/givt/givt_imagenet_2012_causal_params.npz", "proj.givt.givt",
    {**_GIVT_I1K, "style": "ar", "seq_len": 256, "dec_dropout_rate": 0.2,
     "ar_generation_config": dict(temp=0.95, temp_probs=1.0, beam_size=1, fan_size=1, rand_top_k=False,
                                  rand_top_k_temp=1.0, cfg_inference_weight=0.4)}, 256, paper=_GIVT))
# README: t_C=35, DB-CFG=0.1 (256 px); t_C=140 (512 px)
for _res, _seq, _choice, _cfg in ((256, 256, 35.0, 0.1), (512, 1024, 140.0, 0.0)):
    _add(CheckpointEntry(
        f"GIVT-MaskGIT ImageNet {_res}",
        f"gs://big_vision/givt/givt_imagenet_2012_maskgit{'_512' if _res == 512 else ''}_params.npz", "proj.givt.givt",
        {**_GIVT_I1K, "style": "masked", "seq_len": _seq, "dec_dropout_rate": 0.4,
         "masked_generation_config": dict(num_steps=16, choice_temperature=_choice, ordering="maskgit",
                                          schedule="cosine", cfg_inference_weight=_cfg)}, _res, paper=_GIVT))
# UViM-style GIVTs: a ViT VAE (stage I) and a GIVT with a ViT-L/16 encoder (stage II), images at 512 px
# (`pp_predict`: decode|resize(512)|value_range(-1, 1)). The VAE's codeword_dim is read from the arrays
# (givt_coco_panoptic.py says 16 and the GIVT's out_dim follows it; vae_coco_panoptic.py says 32).
_GIVT_VIT_VAE = dict(input_size=[512, 512], patch_size=[16, 16], code_len=256, width=768, enc_depth=6, dec_depth=12,
                     mlp_dim=3072, num_heads=12, code_dropout="none", bottleneck_resize=True)
_GIVT_UVIM = dict(num_layers=24, num_decoder_layers=24, num_heads=16, mlp_dim=4096, emb_dim=1024, patches=[16, 16],
                  input_size=[512, 512], posemb_type="learn", seq_len=256, num_labels=None, num_mixtures=1,
                  fix_square_plus=True, scale_tol=1e-6, dec_dropout_rate=0.0)
for _task, _file, _specs, _temp, _beams in (
    ("COCO panoptic", "coco_panoptic", {"semantics": [0, 133 + 1], "instances": [1, 100]}, 0.85, 4),  # +1: void
    ("NYU depth", "nyu_depth", {"depth": [0, 256]}, 0.9, 2),  # 256 depth bins in [1e-3, 10] m
):
    _add(CheckpointEntry(f"GIVT VAE {_task}", f"gs://big_vision/givt/vae_{_file}_params.npz", "proj.givt.vit",
                         {**_GIVT_VIT_VAE, "inout_specs": _specs}, 512, "resize", paper=_GIVT))
    _sampling = dict(temp=_temp, temp_probs=1.0, beam_size=_beams, fan_size=8, rand_top_k=False, rand_top_k_temp=1.0)
    _add(CheckpointEntry(f"GIVT {_task}", f"gs://big_vision/givt/givt_{_file}_params.npz", "proj.givt.givt",
                         {**_GIVT_UVIM, "ar_generation_config": _sampling}, 512, "resize", paper=_GIVT))


def find_entry(name_or_path: str | None, model_name: str | None = None) -> CheckpointEntry | None:
    """A registry entry by vanity name, or by the exact basename of its file (``vit_s16_i1k_300ep.npz``).

    Of the entries of one file (a SigLIP file's two towers and its ``:img`` image tower): the one whose sub-tree is
    the path's (``file.npz:img``), or whose family is ``model_name``, else the whole file's.
    """
    if not name_or_path:
        return None
    if name_or_path in ZOO:
        entry = ZOO[name_or_path]
        if model_name and entry.model_name != model_name:  # "SigLIP B/16 224" asked for as a vit: its image tower
            return next((e for e in ZOO.values() if e.name.startswith(entry.name + ":")
                         and e.model_name == model_name), entry)
        return entry
    path, _, subtree = os.path.basename(name_or_path).partition(":")
    matches = [e for e in ZOO.values() if e.filename == path]
    if subtree:
        matches = [e for e in matches if e.subtree == subtree]
    elif model_name and any(e.model_name == model_name for e in matches):
        matches = [e for e in matches if e.model_name == model_name]
    else:
        matches = [e for e in matches if e.subtree is None] or matches
    return matches[0] if len(matches) == 1 else None
