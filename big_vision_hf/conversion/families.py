"""Imports every family converter so that each registers its builder in `api.FAMILIES`."""

from . import convert_bv_vit  # noqa: F401  vit
from . import convert_bv_flexivit  # noqa: F401  proj.flexi.vit
from . import convert_bv_mixer  # noqa: F401  mlp_mixer
