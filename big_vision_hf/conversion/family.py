"""The record each converter declares for its big_vision ``config.model_name``: `Family`, and what its builder
returns: `Built`.

A converter module defines its rule table, its layout passes, a builder and one ``Family(...)`` at the bottom;
``families.FAMILIES`` lists the records and everything else (detection, ``big-vision-hf convert``'s help and
``--model-name`` choices, ``big-vision-hf list --families``, the folder a conversion writes) reads them. See
``docs/adding_a_family.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .checkpoint import CheckpointError, LazyArray
from .mapping import check_fits, load_into, map_params, with_head


@dataclass
class Built:
    """What a builder returns, before any array is read: the model class, its config and ``{our name: array}``.

    ``exact``: for a conversion into a close-but-not-exact transformers class (SigLIP 2 NaFlex into
    ``Siglip2Model``), the exact build of the same arrays, from which the parity note measures the deviation.
    """

    model_class: type
    config: object
    mapped: dict[str, LazyArray]
    exact: Built | None = None
    family: str = ""
    allow_nonfinite: bool = False  # ``--allow-nonfinite``: NaN/Inf parameters are converted, not refused

    def instantiate(self, dtype: torch.dtype = torch.float32, progress: bool = False):
        """The model with every array read and loaded strictly: names, shapes and dtypes are checked on a ``meta``
        model before any memory is allocated (a malformed header cannot make a huge model), then each array is read
        into its parameter, one at a time (finite values unless ``allow_nonfinite``)."""
        from transformers.initialization import no_init_weights

        try:
            with torch.device("meta"):
                skeleton = self.model_class(self.config)
        except (ValueError, TypeError, IndexError, ZeroDivisionError, RuntimeError) as e:
            raise CheckpointError(f"{self.family or self.model_class.__name__}: the checkpoint's shapes make no valid "
                                  f"{self.model_class.__name__} ({type(e).__name__}: {e})") from None
        check_fits(self.mapped, skeleton)
        del skeleton
        with no_init_weights():
            model = self.model_class(self.config)
        load_into(model, self.mapped, progress=progress, allow_nonfinite=self.allow_nonfinite)
        model.tie_weights()  # declared ties (PaliGemma's lm_head = embedding); `no_init_weights` skipped them
        model.to(dtype)
        if self.family:
            model.config.bv_model_name = self.family
        return model.eval()

    @classmethod
    def base_or_classifier(cls, params: dict[str, LazyArray], rules: list, num_classes: int | None,
                           classes: tuple[type, type], base_prefix: str, config_class: type, config_kwargs: dict):
        """The base model or its classifier as `with_head` decides from ``num_classes`` (``classes``: both), with
        its config (``config_class(**config_kwargs)``, ``num_labels`` for the classifier) and the mapped arrays."""
        model_class, rules, head = with_head(rules, num_classes, *classes, base_prefix)
        return cls(model_class, config_class(**config_kwargs, **head), map_params(params, rules))


#: ``builder(params, model_kwargs, **options) -> Built``; ``params`` are the checkpoint's lazy arrays, ``model_kwargs``
#: big_vision's ``config.model``; options are those named in `Family.options`.
Builder = Callable[..., Built]


@dataclass(frozen=True)
class Family:
    """One big_vision model family, as ``big-vision-hf convert`` sees it.

    Args:
        name: big_vision ``config.model_name`` (``"vit"``, ``"proj.paligemma.paligemma"``).
        build: the builder (`Builder`).
        summary: one line for ``--help`` and ``big-vision-hf list --families``.
        signatures: how to recognise the family from the parameter tree alone: each a tuple of names that must
            all be present (a name ending in ``/`` matches any array under it; ``"!name"`` must be absent). The
            signatures of all families must be mutually exclusive (detection refuses a tree two families claim).
            Empty: it must be named (FlexiViT and NaFlex trees look like a ViT's).
        options: the builder's keyword options (``image_size``, ``target``) the CLI may pass.
        processor: ``(config, preprocessing) -> (processor, pp string)`` for the folder; default: the ViT-style
            `BvImageProcessor` at the config's resolution (``image_processor_for``). ``None`` result: no processor.
        text_side: ``(folder, tokenizer_file, preset, remote_code) -> None``: what ``--tokenizer`` adds to a
            converted folder (a text tokenizer, a multimodal processor); ``None``: the family has no text input.
        write_folder: a streamed writer ``(built, checkpoint, out_dir, model_kwargs, *, dtype, max_shard_size,
            progress) -> out_dir`` for models too large to hold in memory (PaliGemma); ``None``: the model is built
            in memory and written by ``export.save_folder``.
        parity_note: ``(model, built) -> str``: a sentence for the model card (a measured deviation); ``""``: none.
        card_usage: ``(model) -> str``: the model card's usage section (markdown); ``None``: the usage of the model's
            pipeline tag.
        classes: names of the model classes it converts into, for the docs and ``list --families``.
    """

    name: str
    build: Builder
    summary: str
    signatures: tuple[tuple[str, ...], ...] = ()
    options: tuple[str, ...] = ("image_size",)
    processor: Callable | None = None
    text_side: Callable | None = None
    write_folder: Callable[..., str] | None = None
    parity_note: Callable[..., str] | None = None
    card_usage: Callable[..., str] | None = None
    classes: tuple[str, ...] = field(default=())

    def matches(self, names) -> bool:
        """Whether the parameter tree's ``names`` (a set) carry one of the family's signatures."""
        return any(all(_present(required, names) for required in signature) for signature in self.signatures)


def _present(required: str, names) -> bool:
    if required.startswith("!"):
        return not _present(required[1:], names)
    if required.endswith("/"):
        return any(name.startswith(required) for name in names)
    return required in names
