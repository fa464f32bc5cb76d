"""Imports every family converter so that each registers its builder in `api.FAMILIES`."""

from . import convert_bv_vit  # noqa: F401  vit
from . import convert_bv_flexivit  # noqa: F401  proj.flexi.vit
from . import convert_bv_mixer  # noqa: F401  mlp_mixer
from . import convert_bv_vqvae  # noqa: F401  proj.paligemma.vqvae
from . import convert_bv_naflex  # noqa: F401  proj.image_text.naflex_vit
from . import convert_bv_bit  # noqa: F401  bit_paper, bit
from . import convert_bv_clippo  # noqa: F401  proj.clippo.one_tower
from . import convert_two_towers  # noqa: F401  proj.image_text.two_towers
from . import convert_paligemma  # noqa: F401  proj.paligemma.paligemma
