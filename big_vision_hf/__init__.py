"""big_vision models as exact Hugging Face transformers models.

Importing this package registers every config, model and processor with the transformers Auto classes, so
converted folders load with ``AutoModel*.from_pretrained(folder)``, and exports each of them by name
(``big_vision_hf.BvViTModel``): the one table of ``registration.py`` lists them.
"""

from .configuration.configuration_bv_vit import decode_variant  # noqa: F401 (exported: __all__ is built below)
from .modeling import paligemma_attention  # noqa: F401 (registers attn_implementation="bv_flex_attention")
from .registration import exported_classes, register_auto_classes

register_auto_classes()
globals().update(exported_classes())

__version__ = "0.1.0"
__all__ = sorted([*exported_classes(), "decode_variant"])
