"""The named public big_vision checkpoints: what their arrays cannot tell.

Keyed by big_vision's vanity names (``VANITY_NAMES`` in ``models/vit.py``, ``models/bit.py``,
``models/mlp_mixer.py``, ``configs/proj/flexivit``); each entry gives the file, the big_vision
``config.model_name`` and ``config.model`` kwargs, the input resolution and the evaluation preprocessing.
This is the only place that holds facts about particular checkpoints; nothing infers them from file names,
except that :func:`find_entry` recognises a registered file by its exact basename.
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

    @property
    def filename(self) -> str:
        return os.path.basename(self.url[len("gs://"):].split(":")[0])

    @property
    def subtree(self) -> str | None:
        tail = self.url[len("gs://"):]
        return tail.split(":", 1)[1] if ":" in tail else None


REGISTRY: dict[str, CheckpointEntry] = {}


def _add(entry: CheckpointEntry) -> None:
    REGISTRY[entry.name] = entry


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

_SIGLIP = {
    "SigLIP B/16 224": ("siglip/webli_en_b16_224_63724782.npz", "B/16", 224),
    "SigLIP B/16 256": ("siglip/webli_en_b16_256_60500360.npz", "B/16", 256),
    "SigLIP B/16 384": ("siglip/webli_en_b16_384_68578854.npz", "B/16", 384),
    "SigLIP B/16 512": ("siglip/webli_en_b16_512_68580893.npz", "B/16", 512),
    "SigLIP L/16 256": ("siglip/webli_en_l16_256_60552751.npz", "L/16", 256),
    "SigLIP L/16 384": ("siglip/webli_en_l16_384_63634585.npz", "L/16", 384),
    "SigLIP So400m/14 224": ("siglip/webli_en_so400m_224_57633886.npz", "So400m/14", 224),
    "SigLIP So400m/14 384": ("siglip/webli_en_so400m_384_58765454.npz", "So400m/14", 384),
    "SigLIP B/16-i18n 256": ("siglip/webli_i18n_b16_256_66117334.npz", "B/16", 256),
    "SigLIP2 B/16 224": ("siglip2/siglip2_b16_224.npz", "B/16", 224),
    "SigLIP2 B/16 256": ("siglip2/siglip2_b16_256.npz", "B/16", 256),
    "SigLIP2 B/16 384": ("siglip2/siglip2_b16_384.npz", "B/16", 384),
    "SigLIP2 B/16 512": ("siglip2/siglip2_b16_512.npz", "B/16", 512),
    "SigLIP2 B/32 256": ("siglip2/siglip2_b32_256.npz", "B/32", 256),
    "SigLIP2 L/16 256": ("siglip2/siglip2_l16_256.npz", "L/16", 256),
    "SigLIP2 L/16 384": ("siglip2/siglip2_l16_384.npz", "L/16", 384),
    "SigLIP2 L/16 512": ("siglip2/siglip2_l16_512.npz", "L/16", 512),
    "SigLIP2 So400m/14 224": ("siglip2/siglip2_so400m14_224.npz", "So400m/14", 224),
    "SigLIP2 So400m/14 384": ("siglip2/siglip2_so400m14_384.npz", "So400m/14", 384),
    "SigLIP2 So400m/16 256": ("siglip2/siglip2_so400m16_256.npz", "So400m/16", 256),
    "SigLIP2 So400m/16 384": ("siglip2/siglip2_so400m16_384.npz", "So400m/16", 384),
    "SigLIP2 So400m/16 512": ("siglip2/siglip2_so400m16_512.npz", "So400m/16", 512),
    "SigLIP2 g-opt/16 256": ("siglip2/siglip2_g-opt16_256.npz", "g-opt/16", 256),
    "SigLIP2 g-opt/16 384": ("siglip2/siglip2_g-opt16_384.npz", "g-opt/16", 384),
}
for _name, (_file, _v, _res) in _SIGLIP.items():
    # Image towers of the two-tower checkpoints (`file.npz:img`): MAP pool, no head.
    _add(CheckpointEntry(_name, f"gs://big_vision/{_file}:img", "vit", {"variant": _v, "pool_type": "map"},
                         _res, "resize", paper="https://arxiv.org/abs/2502.14786" if _name.startswith("SigLIP2")
                         else "https://arxiv.org/abs/2303.15343"))

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


def find_entry(name_or_path: str | None) -> CheckpointEntry | None:
    """A registry entry by vanity name, or by the exact basename of its file (``vit_s16_i1k_300ep.npz``)."""
    if not name_or_path:
        return None
    if name_or_path in REGISTRY:
        return REGISTRY[name_or_path]
    base = os.path.basename(name_or_path.split(":")[0])
    matches = [e for e in REGISTRY.values() if e.filename == base]
    return matches[0] if len(matches) == 1 else None
