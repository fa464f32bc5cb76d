"""Reading big_vision checkpoints and mapping them into our models (one module per family)."""

from .api import FAMILIES, convert_checkpoint, detect_family
from .checkpoint import CheckpointError, read_checkpoint

__all__ = ["FAMILIES", "CheckpointError", "convert_checkpoint", "detect_family", "read_checkpoint"]
