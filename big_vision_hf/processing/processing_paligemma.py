"""PaliGemma inputs laid out exactly as big_vision's transfer configs do, for transformers'
``PaliGemmaForConditionalGeneration``; and its outputs (boxes, masks) decoded as big_vision's evaluators do.

big_vision (commit 0127fb6, ``configs/proj/paligemma/transfers/common.py``):

- training, ``combine_and_keep_train(text_len)``: ``tok(prefix, bos=yes)`` | ``tok("\\n")`` (tokenized on its
  own) | ``tok(suffix, eos=yes)``, concatenated, truncated at the end to ``text_len + 1`` (``tolen``; the trainer
  feeds ``text[:, :-1]`` and predicts ``text[:, 1:]``), padded with 0; ``mask_ar`` = 0 on prefix and separator,
  1 on the suffix and the padding; ``mask_loss`` = 1 on the suffix only;
- inference, ``combine_and_keep_eval(text_len)``: ``[bos] prefix "\\n"``, then greedy decoding up to
  ``text_len`` tokens or ``<eos>``;
- images: ``decode|resize(res)|value_range(-1, 1)`` (``BvImageProcessor``; some training configs add
  ``antialias=True``, which ``BvImageProcessor`` does not port yet).

transformers' model reads ``mask_ar`` as ``token_type_ids`` (0 = the bidirectional prefix block, 1 = causal)
and ``mask_loss`` as ``labels != -100``; image features replace ``<image>`` tokens. So this processor returns::

    input_ids      = <image> x image_seq_length | [bos] prefix | "\\n" | suffix [eos] | pad (0) ...
    token_type_ids =   0 ...                    |  0 ...       |  0   |  1 ...      |  1 ...
    labels         = -100 ...                   | -100 ...     | -100 |  ids ...    | -100 ...   (with a suffix)
    attention_mask =   1 ...                    |  1 ...       |  1   |  1 ...      |  0 ...

``token_type_ids`` are always returned. Without them transformers 5.23 builds no prefix-LM mask: with the
default ``sdpa`` and a batch without padding attention becomes fully bidirectional and training silently leaks
the answer (loss -> 0); see :func:`guard_token_type_ids` and :meth:`BvPaliGemmaProcessor.check_model`.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence

import numpy as np
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_utils import is_valid_image
from transformers.processing_utils import ProcessorMixin
from transformers.utils import logging

from .image_processing_bv import BvImageProcessor
from .paligemma_decoding import (
    PaliGemmaObject,
    decode_detections,
    decode_segmentation,
    draw_objects,
    mask_to_tokens,
    objects_to_text,
)
from .tokenization_fast import BvPaliGemmaTokenizerFast
from .tokenization_paligemma import BvPaliGemmaTokenizer

logger = logging.get_logger(__name__)

__all__ = ["BvPaliGemmaProcessor", "guard_token_type_ids"]

SIGLIP_PATCH_SIZE = 14  # PaliGemma's image encoder is SigLIP So400m/14: (224 / 14)^2 = 256 image tokens
SEPARATOR = "\n"  # big_vision combine_and_keep_*(sep="\n")


def _pil_like(x) -> bool:
    return is_valid_image(x)


def _images_per_sample(images, n_texts: int) -> list[list]:
    """One image, a list (one per text) or a list of lists (several per text) -> a list of lists."""
    if _pil_like(images):
        return [[images] for _ in range(n_texts)]
    if isinstance(images, (list, tuple)) and images and all(_pil_like(i) for i in images):
        if len(images) != n_texts:
            raise ValueError(f"got {len(images)} images for {n_texts} prompts: give one image per prompt "
                             "(or a list of images per prompt)")
        return [[i] for i in images]
    if isinstance(images, (list, tuple)) and images and all(isinstance(i, (list, tuple)) for i in images):
        if len(images) != n_texts:
            raise ValueError(f"got {len(images)} image lists for {n_texts} prompts")
        if not all(i and all(_pil_like(j) for j in i) for i in images):
            raise ValueError("every prompt needs at least one image (PIL image, array or tensor)")
        return [list(i) for i in images]
    raise ValueError("images must be an image, a list of images (one per prompt) or a list of lists of images")


class BvPaliGemmaProcessor(ProcessorMixin):
    r"""big_vision's PaliGemma input pipeline (prefix/separator/suffix, ``text_len``, prefix-LM masks) for
    transformers' ``PaliGemmaForConditionalGeneration``, plus big_vision's output decoding.

    Args:
        image_processor: a ``BvImageProcessor`` (``decode|resize(res)|value_range(-1, 1)``); default 224px.
        tokenizer: a :class:`BvPaliGemmaTokenizer` (Gemma ``tokenizer.model`` + ``<loc>``/``<seg>``) or its fast twin
            `BvPaliGemmaTokenizerFast` (what ``from_pretrained`` loads when the folder has ``tokenizer.json``).
        image_seq_length: ``<image>`` tokens per image; default ``(H / 14) * (W / 14)`` of the processor's
            size (256 at 224, 1024 at 448, 4096 at 896).
        text_len: big_vision's ``text_len``: the token budget of ``[bos] prefix "\n" suffix [eos]``; training
            sequences are cut to ``text_len + 1`` tokens (big_vision's ``tolen(text_len + 1)``), prompts to
            ``text_len``. ``None``: no truncation.

    Example:
        >>> processor = BvPaliGemmaProcessor(BvImageProcessor(), BvPaliGemmaTokenizer("tokenizer.model"),
        ...                                  text_len=32)  # doctest: +SKIP
        >>> batch = processor(images=[img], text=["caption en"], suffix=["a cat"],
        ...                   return_tensors="pt")  # doctest: +SKIP
        >>> loss = model(**batch).loss  # doctest: +SKIP
        >>> prompt = processor(images=[img], text=["detect cat"], return_tensors="pt")  # doctest: +SKIP
        >>> out = model.generate(**prompt, max_new_tokens=32, do_sample=False)  # doctest: +SKIP
        >>> text = processor.post_process_generation(out, prompt["input_ids"])[0]  # doctest: +SKIP
        >>> processor.decode_detections(text, img)  # doctest: +SKIP
        [PaliGemmaObject(label='cat', box=(...), ...)]
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        image_seq_length: int | None = None,
        text_len: int | None = None,
        chat_template=None,
        **kwargs,
    ):
        if image_processor is None:
            image_processor = BvImageProcessor()
        if tokenizer is None or not hasattr(tokenizer, "to_int"):
            raise ValueError("BvPaliGemmaProcessor needs a BvPaliGemmaTokenizer (built from Gemma's tokenizer.model)")
        if image_seq_length is None:
            size = image_processor.size
            image_seq_length = (size["height"] // SIGLIP_PATCH_SIZE) * (size["width"] // SIGLIP_PATCH_SIZE)
        if text_len is not None and text_len < 1:
            raise ValueError(f"text_len must be positive or None, got {text_len}")
        self.image_seq_length = int(image_seq_length)
        self.text_len = text_len
        self.image_token = tokenizer.image_token
        self.image_token_id = tokenizer.image_token_id
        super().__init__(image_processor, tokenizer, chat_template=chat_template, **kwargs)

    @classmethod
    def _load_tokenizer_from_pretrained(cls, sub_processor_type, pretrained_model_name_or_path, subfolder="",
                                        **kwargs):
        # Our own classes, by file (no AutoTokenizer look-up by name, which needs the package imported): the fast
        # twin where the folder has its tokenizer.json (same ids, faster batches), else the SentencePiece one.
        from transformers.utils import cached_file

        kwargs.pop("trust_remote_code", None)
        fast = cached_file(pretrained_model_name_or_path, "tokenizer.json", subfolder=subfolder,
                           _raise_exceptions_for_missing_entries=False,
                           **{k: v for k, v in kwargs.items() if k in ("cache_dir", "token", "revision",
                                                                       "local_files_only")})
        tokenizer_class = BvPaliGemmaTokenizerFast if fast else BvPaliGemmaTokenizer
        return tokenizer_class.from_pretrained(pretrained_model_name_or_path, subfolder=subfolder, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """``ProcessorMixin.from_pretrained``, then, for a local model folder (its ``config.json`` beside the
        tokenizer), a one-line ``ValueError`` when the tokenizer does not fit the model (:meth:`check_ids`)."""
        processor = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        config_file = os.path.join(os.fspath(pretrained_model_name_or_path), kwargs.get("subfolder") or "",
                                   "config.json")
        if os.path.isfile(config_file):
            with open(config_file, encoding="utf-8") as f:
                config = json.load(f)
            text = config.get("text_config") or {}
            processor.check_ids(config.get("image_token_id", config.get("image_token_index")), text.get("vocab_size"),
                                where=f"{config_file}: ")
        return processor

    def check_ids(self, image_id: int | None, vocab_size: int | None, where: str = "") -> None:
        """The tokenizer fits a model whose ``<image>`` id is ``image_id`` and whose vocabulary has ``vocab_size``
        rows: else a one-line ``ValueError`` (an id past the embedding would fail deep in the model, or not at
        all on another device)."""
        if image_id is not None and image_id != self.image_token_id:
            raise ValueError(f"{where}the tokenizer puts {self.image_token!r} at id {self.image_token_id} but the "
                             f"model expects {image_id}: the tokenizer was not built from this model's SentencePiece "
                             "file")
        # every id but <image>'s, which is past the checkpoint's rows by design (convert_paligemma: "Vocabulary")
        last = len(self.tokenizer) - 1
        last -= last == self.image_token_id
        top = max(last, *self.tokenizer.loc_token_ids, *self.tokenizer.seg_token_ids)
        if vocab_size is not None and top >= vocab_size:
            raise ValueError(f"{where}the tokenizer has ids up to {top} but the model's vocab_size is {vocab_size}: "
                             "the tokenizer does not fit the model")

    @property
    def model_input_names(self):
        return ["input_ids", "attention_mask", "token_type_ids", "pixel_values", "labels"]

    # ------------------------------------------------------------------------------------------------------
    # Inputs
    # ------------------------------------------------------------------------------------------------------

    def _prefix(self, prefix: str) -> str:
        if self.image_token in prefix:
            stripped = prefix
            while stripped.startswith(self.image_token):
                stripped = stripped[len(self.image_token):]
            if self.image_token in stripped:
                raise ValueError(
                    f"{self.image_token!r} inside the prompt {prefix!r}: this processor puts the image tokens in front "
                    "itself (big_vision layout); pass the prompt text only"
                )
            logger.warning_once(f"removed leading {self.image_token!r} from the prompt; the processor adds the image "
                                "tokens itself")
            prefix = stripped
        if prefix.endswith(SEPARATOR):
            logger.warning_once(
                "a prompt ends with '\\n': big_vision appends its own separator token '\\n', so the model sees two "
                "(the gemma-cookbook habit of writing 'caption en\\n' does not match the transfer recipes)"
            )
        return prefix

    def __call__(
        self,
        images=None,
        text: str | Sequence[str] | None = None,
        suffix: str | Sequence[str] | None = None,
        text_len: int | None = None,
        padding: bool | str = True,
        padding_side: str | None = None,
        return_tensors: str | None = None,
        return_token_type_ids: bool = True,
        **images_kwargs,
    ) -> BatchFeature:
        """Builds a batch in big_vision's layout (see the module docstring).

        Args:
            images: one image per prompt (PIL, uint8 array or tensor), or a list of images per prompt.
            text: the prefixes (prompts), e.g. ``"caption en"``, ``"answer en what is this?"``, ``"detect cat"``.
            suffix: the targets, for training; gives ``labels`` (suffix + ``<eos>``; everything else ``-100``).
            text_len: overrides ``self.text_len`` for this call.
            padding: ``True``/``"longest"`` (pad to the longest), ``"max_length"`` (pad the text to ``text_len + 1``
                with a suffix, ``text_len`` without), or ``False`` (no padding; ``return_tensors`` then needs equal
                lengths).
            padding_side: ``"right"`` (big_vision; default with a suffix) or ``"left"`` (default without a suffix,
                what batched ``generate`` needs).
            return_tensors: ``"pt"``, ``"np"`` or ``None`` (lists).
            return_token_type_ids: must stay ``True`` (the prefix-LM mask of training comes from them).
            images_kwargs: passed to the image processor.
        """
        if not return_token_type_ids:
            raise ValueError(
                "token_type_ids are required: without them transformers' PaliGemma attends bidirectionally over the "
                "answer during training (sdpa, no padding) and the loss leaks"
            )
        if images is None:
            raise ValueError("PaliGemma needs images: pass `images=` (one per prompt)")
        if text is None or isinstance(text, str):  # one prompt: for every image of a flat list
            n = len(images) if isinstance(images, (list, tuple)) and not _pil_like(images) else 1
            texts = [text or ""] * n
        else:
            texts = list(text)
        if not all(isinstance(t, str) for t in texts):
            raise ValueError("text must be a string or a list of strings")
        per_sample = _images_per_sample(images, len(texts))
        suffixes = None
        if suffix is not None:
            suffixes = [suffix] if isinstance(suffix, str) else list(suffix)
            if len(suffixes) != len(texts):
                raise ValueError(f"{len(suffixes)} suffixes for {len(texts)} prompts")
        text_len = self.text_len if text_len is None else text_len
        budget = None if text_len is None else (text_len + 1 if suffixes is not None else text_len)

        tok = self.tokenizer
        sep = tok.to_int(SEPARATOR)  # big_vision tokenizes the separator on its own
        rows = []
        for i, (prefix, imgs) in enumerate(zip(texts, per_sample)):
            ids = tok.to_int(self._prefix(prefix), bos=True) + sep
            mask_ar = [0] * len(ids)
            if suffixes is not None:
                suffix_ids = tok.to_int(suffixes[i], eos=True)
                ids, mask_ar = ids + suffix_ids, mask_ar + [1] * len(suffix_ids)
            if budget is not None:
                ids, mask_ar = ids[:budget], mask_ar[:budget]  # big_vision `tolen`: cut at the end
            n_img = self.image_seq_length * len(imgs)
            rows.append(([self.image_token_id] * n_img + ids, [0] * n_img + mask_ar))

        if padding is True or padding == "longest":
            length = max(len(r[0]) for r in rows)
        elif padding == "max_length":
            if budget is None:
                raise ValueError("padding='max_length' needs text_len")
            length = max(budget + self.image_seq_length * len(imgs) for imgs in per_sample)
        elif padding is False or padding == "do_not_pad":
            length = None
        else:
            raise ValueError(f"padding must be True, 'longest', 'max_length' or False, got {padding!r}")
        side = padding_side or ("right" if suffixes is not None else "left")
        if side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}")

        pad_id = tok.pad_token_id
        data = {"input_ids": [], "attention_mask": [], "token_type_ids": []}
        if suffixes is not None:
            data["labels"] = []
        for ids, mask_ar in rows:
            n_pad = 0 if length is None else length - len(ids)
            labels = [t if m == 1 else -100 for t, m in zip(ids, mask_ar)]
            # Padding: id 0, token type 1 (big_vision pads mask_ar with 1), attention 0, label -100.
            pads = ([pad_id] * n_pad, [0] * n_pad, [1] * n_pad, [-100] * n_pad)
            values = (ids, [1] * len(ids), mask_ar, labels)
            for key, value, pad in zip(("input_ids", "attention_mask", "token_type_ids", "labels"), values, pads):
                if key in data:
                    data[key].append(value + pad if side == "right" else pad + value)

        flat_images = [img for imgs in per_sample for img in imgs]
        pixel_values = self.image_processor(flat_images, return_tensors=return_tensors, **images_kwargs)["pixel_values"]
        data["pixel_values"] = pixel_values
        if return_tensors is not None and length is None and len({len(x) for x in data["input_ids"]}) > 1:
            raise ValueError("sequences have different lengths: use padding=True to return tensors")
        return BatchFeature(data=data, tensor_type=return_tensors)

    # ------------------------------------------------------------------------------------------------------
    # Outputs
    # ------------------------------------------------------------------------------------------------------

    def post_process_generation(self, generated_ids, prompt_ids=None) -> list[str]:
        """``model.generate`` output -> the generated texts, as big_vision's ``to_str(stop_at_eos=True)``.

        The prompt (``prompt_ids``, the ``input_ids`` given to ``generate``; only its length is used) is cut off,
        decoding stops at the first ``<eos>``; ``<loc>``/``<seg>`` tokens are kept, control tokens dropped.
        """
        rows = generated_ids.tolist() if hasattr(generated_ids, "tolist") else [list(r) for r in generated_ids]
        if rows and isinstance(rows[0], int):
            rows = [rows]
        start = 0
        if prompt_ids is not None:
            start = int(np.asarray(prompt_ids.shape if hasattr(prompt_ids, "shape") else
                                   (len(prompt_ids), len(prompt_ids[0])))[-1])
        return [self.tokenizer.to_str(row[start:]) for row in rows]

    def decode_detections(self, text: str, image_size) -> list[PaliGemmaObject]:
        """``<loc>`` boxes (and labels) in the original image's pixels (``paligemma_decoding.decode_detections``)."""
        return decode_detections(text, image_size)

    def decode_segmentation(self, text: str, image_size, vqvae) -> list[PaliGemmaObject]:
        """Boxes plus ``bool [H, W]`` masks from ``<seg>`` tokens through the VQ-VAE ``vqvae`` (``BvSegVQVAEModel``)."""
        return decode_segmentation(text, image_size, vqvae)

    @staticmethod
    def mask_to_tokens(mask, vqvae, box_normalized=None) -> str:
        """A full-resolution mask -> ``"<loc>x4<seg>x16"`` (big_vision ``refcoco_mask2str``), for training data."""
        return mask_to_tokens(mask, vqvae, box_normalized)

    @staticmethod
    def objects_to_text(boxes, labels, image_size=None) -> str:
        """Detection targets ``"<loc>x4 label ; ..."`` from ``(y1, x1, y2, x2)`` boxes."""
        return objects_to_text(boxes, labels, image_size)

    @staticmethod
    def draw(image, objects):
        """The image with the decoded boxes, labels and masks drawn on it (PIL)."""
        return draw_objects(image, objects)

    # ------------------------------------------------------------------------------------------------------
    # Known traps
    # ------------------------------------------------------------------------------------------------------

    def check_model(self, model, training: bool = True) -> None:
        """Raises on setups that silently diverge from big_vision; warns on the softer ones.

        - ``<image>`` id / vocabulary: the tokenizer's ``<image>`` must be ``model.config.image_token_id`` and every
          ``<loc>``/``<seg>`` id inside the model's vocabulary.
        - PaliGemma 2 (Gemma 2: attention-logit softcapping) with ``sdpa``: transformers 5.23 refuses it (Gemma 2
          has no sdpa path: an error at load, or "sdpa attention does not support softcap" at the first forward
          when switched later); use ``"flex_attention"`` (soft-cap as ``score_mod``, one prefix-LM block mask) or
          ``"eager"``: ``modeling.paligemma_attention.choose_attention`` picks.
        - ``flash_attention_*`` in training: it keeps only the padding mask, so the suffix is attended
          bidirectionally (inference is unaffected: prompts are all prefix).
        - ``flex_attention`` in training on CPU: torch has no flex backward there; ``"bv_flex_attention"``
          (``paligemma_attention.CPU_FLEX``) is the same attention with one.
        - ``final_logit_softcapping`` set in training: big_vision transfers use ``final_logits_softcap=0.0``
          (``forkme.py``); set ``model.config.text_config.final_logit_softcapping = None`` for parity (warning).
        """
        config = model.config
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        image_id = getattr(config, "image_token_id", getattr(config, "image_token_index", None))
        self.check_ids(image_id, getattr(text_config, "vocab_size", None))
        from ..modeling.paligemma_attention import check_attention  # torch-heavy: not at the processor's import

        check_attention(config, training, getattr(model, "device", None))  # the language model's implementation
        if training and getattr(text_config, "final_logit_softcapping", None) is not None:
            warnings.warn(
                "text_config.final_logit_softcapping is set; big_vision's PaliGemma 2 transfers use "
                "final_logits_softcap=0.0 (configs/proj/paligemma/transfers/forkme.py). Set it to None for parity.",
                stacklevel=2,
            )


def guard_token_type_ids(model):
    """Makes ``model`` raise when it is called in training mode without ``token_type_ids``.

    Data collators and ``Trainer(remove_unused_columns=True)`` can drop the column; transformers then builds no
    prefix-LM mask, and with ``sdpa`` on a batch without padding the attention is fully bidirectional, so the
    answer leaks and the loss goes to ~0 instead of failing. Returns the hook handle (``.remove()`` undoes it).
    """

    def hook(module, args, kwargs):
        if module.training and kwargs.get("token_type_ids") is None:
            raise ValueError(
                "PaliGemma called in training mode without token_type_ids: the prefix-LM mask would be missing and "
                "attention would leak the answer; keep `token_type_ids` from BvPaliGemmaProcessor in the batch "
                "(Trainer: remove_unused_columns=False or a collator that keeps it)"
            )
        return None

    return model.register_forward_pre_hook(hook, with_kwargs=True)

