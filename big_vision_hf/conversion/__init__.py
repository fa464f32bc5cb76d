"""Reading big_vision checkpoints and mapping them into our models (one converter module per family)."""

from .api import build, convert_checkpoint, convert_to_folder
from .checkpoint import CheckpointError, read_checkpoint
from .families import FAMILIES, FAMILY_NAMES, detect_family, family_named

__all__ = [
    "FAMILIES", "FAMILY_NAMES", "CheckpointError", "build", "convert_checkpoint", "convert_to_folder",
    "detect_family", "family_named", "read_checkpoint",
]
