"""PyTorch port of big_vision's CapPa (``big_vision/models/proj/cappa/cappa.py``, https://arxiv.org/abs/2306.07915).

An image captioner: big_vision's ViT (`BvViTModel`, ``vit.Model`` without a head) encodes the image; a transformer
decoder reads its tokens (``out["encoded"]``, after ``encoder_norm``) through cross-attention and predicts the
caption. Why our own ``PreTrainedModel``: transformers' ``VisionEncoderDecoderModel`` (ViT + a GPT-2-like decoder)
has attention biases, no ``LogitsDense`` bias, a different start token and no parallel prediction.

What reproduces which part of ``cappa.py`` (commit 0127fb6):

- ``EncoderDecoderBlock`` -> `BvCapPaDecoderLayer`: pre-LN self-attention, cross-attention and MLP, each with a
  residual; attention projections have no biases (``use_bias=False``); ``decoder_bias`` switches the biases of the
  three LayerNorms and of the MLP Dense layers; GELU is the tanh approximation; there is no dropout after the MLP.
- ``Decoder``: ``EmbedTargets`` (``vocab_size`` rows, + 1 mask token when ``masked_pred_prob > 0``), the decoder
  posemb (``pos_embedding_decoder``, or ``posemb_sincos_2d(1, seq_len, width)``) added without dropout, the blocks,
  a final ``LayerNorm`` (always with bias) and ``LogitsDense`` (always with bias; here ``lm_head``).
- teacher forcing (``Model.__call__(image, text)``): the decoder input is ``shift_right(text)`` (0 prepended, the
  last token dropped) and the self-attention mask is ``nn.make_causal_mask(text)`` only: padding is NOT masked.
- cached decoding (``decode=True``: flax ``SelfAttention`` cache + ``AddPositionEmbs`` cache index) ->
  transformers' ``EncoderDecoderCache``: `generate` (greedy, beam, sampling) feeds one token per step from 0.
- parallel prediction: ``Decoder``'s masked-prediction branch. In training (``model.train()``), each example is
  with probability ``masked_pred_prob`` a parallel-prediction example: ``int(masking_ratio * T)`` random positions of
  the UNSHIFTED targets are replaced by the mask token (``vocab_size``) and the example attends without a causal
  mask; the others are teacher-forced as above (same rule as big_vision, drawn from torch's RNG). At inference
  ``parallel=True`` feeds ``T`` mask tokens with no causal mask (``masked_pred_prob = masking_ratio = 1``).
- loss: big_vision's ``generative`` trainer: softmax cross-entropy weighted by ``labels != 0`` (pads do not count;
  ``label_masks`` multiplies, as the trainer's batch key), summed per example, divided by the example's weight and
  averaged over the batch (``u.weighted_softmax_xent(..., normalize=True)``).

big_vision names -> ours: ``encoder/...`` -> ``model.encoder`` (`BvViTModel`), ``decoder/EmbedTargets`` ->
``model.decoder.embed_tokens``, ``pos_embedding_decoder`` -> ``model.decoder.position_embedding``,
``decoder/EncDecBlock{i}/{LayerNorm1,SelfAttn,LayerNorm2,CrossAttn,LayerNorm3,MLP}`` ->
``model.decoder.layers.{i}.{layer_norm1,self_attn,layer_norm2,encoder_attn,layer_norm3,mlp}``, ``decoder/LayerNorm``
-> ``model.decoder.layer_norm``, ``decoder/LogitsDense`` -> ``lm_head``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache
from transformers.generation import GenerationMixin
from transformers.modeling_outputs import BaseModelOutput, Seq2SeqLMOutput, Seq2SeqModelOutput
from transformers.utils import can_return_tuple

from ..configuration.configuration_bv_cappa import BvCapPaConfig
from .decoder import (
    BvDecoderLayer,
    BvEncoderDecoderMixin,
    BvTokenDecoder,
    encoder_hidden_states_of,
    init_decoder_module_,
)
from .modeling_bv_vit import BvViTModel, BvViTPreTrainedModel

IGNORE_INDEX = -100  # transformers' collators pad labels with it; read as big_vision's pad (0) here


def shift_right(ids: torch.Tensor, start: int = 0) -> torch.Tensor:
    """big_vision ``cappa.shift_right``: ``start`` prepended on the last axis, the last token dropped."""
    return F.pad(ids, (1, 0), value=start)[..., :-1]


def random_masking(ids: torch.Tensor, ratio: float, mask_id: int, generator: torch.Generator | None = None):
    """big_vision ``Decoder._add_random_masks``: ``int(ratio * T)`` positions of each row, uniformly at random
    (an independent permutation per row), replaced by ``mask_id``."""
    n_masked = int(ratio * ids.shape[1])
    ranks = torch.rand(ids.shape, generator=generator, device=ids.device).argsort(dim=1).argsort(dim=1)
    return ids.masked_fill(ranks < n_masked, mask_id)


def weighted_token_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """big_vision ``u.weighted_softmax_xent(..., reduction=True, normalize=True)``: per-token NLL times ``weights``,
    summed per example, divided by the example's total weight (at least 2e-38), averaged over the batch."""
    nll = F.cross_entropy(logits.float().transpose(1, 2), labels, reduction="none")  # (B, T)
    per_example = (nll * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=2e-38)
    return per_example.mean()


def decoder_attention_mask(
    query_len: int, past_len: int, parallel: torch.Tensor | bool, batch: int, dtype: torch.dtype, device
) -> torch.Tensor | None:
    """Additive self-attention mask ``(B|1, 1, query_len, past_len + query_len)``: causal (big_vision
    ``nn.make_causal_mask``; with a cache, the query at position ``past_len + i`` sees keys ``<= past_len + i``, as
    flax's cached attention), except rows of ``parallel`` examples, which see every position. ``None``: no mask."""
    if isinstance(parallel, bool):
        if parallel or query_len == 1:
            return None
        parallel = torch.zeros(batch, dtype=torch.bool, device=device)
    q_pos = torch.arange(query_len, device=device)[:, None] + past_len
    k_pos = torch.arange(past_len + query_len, device=device)[None, :]
    allowed = (k_pos <= q_pos)[None] | parallel.to(device)[:, None, None]  # (B, Tq, Tk)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]


class BvCapPaDecoderLayer(BvDecoderLayer):
    """big_vision ``cappa.EncoderDecoderBlock`` (`BvDecoderLayer`): ``x + SA(LN1(x))``, ``+ CA(LN2(.), image)``,
    ``+ MLP(LN3(.))``; ``decoder_bias`` switches the biases of the LayerNorms and of the MLP. The cross-attention is
    ``encoder_attn``, as in converted CapPa folders."""

    def __init__(self, config: BvCapPaConfig, layer_idx: int):
        bias = getattr(config, "decoder_bias", True)
        super().__init__(config, layer_idx, config.vision_config.hidden_size, norm_bias=bias, mlp_bias=bias,
                         cross_attention_name="encoder_attn")


class BvCapPaDecoder(BvTokenDecoder):
    """big_vision ``cappa.Decoder`` up to the final ``LayerNorm`` (`BvTokenDecoder`, + 1 mask token row with
    parallel prediction). ``LogitsDense`` is the ``lm_head`` of `BvCapPaForConditionalGeneration`."""

    def __init__(self, config: BvCapPaConfig):
        super().__init__(config, BvCapPaDecoderLayer, getattr(config, "num_embeddings", config.vocab_size))

    def forward(
        self,
        input_ids: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        cache: Cache | None = None,
        parallel: torch.Tensor | bool = False,
        **kwargs,
    ) -> torch.Tensor:
        """``input_ids (B, T)`` -> hidden states ``(B, T, width)`` after the final LayerNorm.

        ``parallel``: ``True`` (or a ``(B,)`` bool tensor, per example) drops the causal mask (parallel prediction).
        """
        past = cache.get_seq_length() if cache is not None else 0
        length = input_ids.shape[1]
        if past and not (isinstance(parallel, bool) and not parallel):
            raise ValueError("parallel prediction attends to every position at once: it cannot use a KV cache")
        hidden = self.embed_tokens(input_ids)
        hidden = hidden + self.posemb(past, length, hidden.dtype)  # no dropout (cappa.Decoder)
        mask = decoder_attention_mask(length, past, parallel, input_ids.shape[0], hidden.dtype, hidden.device)
        return self.run_layers(hidden, encoder_hidden_states, mask, cache, **kwargs)


class BvCapPaPreTrainedModel(BvEncoderDecoderMixin, BvViTPreTrainedModel):
    """CapPa's base: the ViT's initialisers for the encoder (`BvViTPreTrainedModel`) and cappa.py's for the rest."""

    config: BvCapPaConfig
    config_class = BvCapPaConfig
    _no_split_modules = ["BvViTEmbeddings", "BvViTEncoderLayer", "BvCapPaDecoderLayer"]
    _supports_flash_attn = False  # the decoder's masks are explicit (causal, parallel, per example)
    _supports_flex_attn = False

    @torch.no_grad()
    def _init_weights(self, module):
        """big_vision's flax initialisers (``cappa.py``); loaded tensors are left alone."""
        super()._init_weights(module)  # the MLP: vit.MlpBlock's (cappa.MlpBlock has the same initialisers)
        init_decoder_module_(module)
        if isinstance(module, BvCapPaForConditionalGeneration):  # LogitsDense: zero kernel, zero bias
            init.zeros_(module.lm_head.weight)
            init.zeros_(module.lm_head.bias)


class BvCapPaModel(BvCapPaPreTrainedModel):
    r"""big_vision CapPa without ``LogitsDense``: the ViT encoder and the decoder (``AutoModel``).

    ``last_hidden_state`` is the decoder's output after its final LayerNorm (the input of ``LogitsDense``);
    ``encoder_last_hidden_state`` is the ViT's ``out["encoded"]``.
    """

    def __init__(self, config: BvCapPaConfig):
        super().__init__(config)
        self.encoder = BvViTModel._from_config(config.vision_config)
        self.decoder = BvCapPaDecoder(config)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        encoder_outputs: BaseModelOutput | tuple | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        parallel: torch.Tensor | bool = False,
        interpolate_pos_encoding: bool = False,
        **kwargs,
    ) -> Seq2SeqModelOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`):
            Images in [-1, 1] (big_vision ``resize(224)|value_range(-1, 1)``, `BvImageProcessor`).
        decoder_input_ids (`torch.LongTensor` of shape `(batch_size, target_length)`):
            The decoder's inputs: ``shift_right(labels)`` for teacher forcing (`BvCapPaForConditionalGeneration`
            builds them from ``labels``). With ``parallel=True`` and none given: ``max_position_embeddings`` mask
            tokens.
        encoder_outputs: the encoder's output, to skip it (``generate`` passes it).
        cache (`EncoderDecoderCache`): the KV cache of cached decoding.
        parallel (`bool` or `torch.BoolTensor` of shape `(batch_size,)`): attend without the causal mask (CapPa's
            parallel prediction), for all examples or those marked.
        interpolate_pos_encoding (`bool`): resample the encoder's learned posemb to the image's patch grid.
        """
        if encoder_outputs is None:
            if pixel_values is None:
                raise ValueError("pass pixel_values (or encoder_outputs)")
            encoder_outputs = self.encoder(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
        encoded = encoder_hidden_states_of(encoder_outputs)  # out["encoded"]
        if decoder_input_ids is None:
            if parallel is not True:
                raise ValueError("pass decoder_input_ids (or labels to the ForConditionalGeneration model), or "
                                 "parallel=True for CapPa's parallel prediction")
            decoder_input_ids = self.mask_tokens(encoded.shape[0], self.config.max_position_embeddings, encoded.device)
        if use_cache is None:
            use_cache = self.config.use_cache and not self.training
        if use_cache and cache is None and parallel is False:
            cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        hidden = self.decoder(decoder_input_ids, encoded, cache=cache if use_cache else None, parallel=parallel)
        return Seq2SeqModelOutput(
            last_hidden_state=hidden,
            cache=cache if use_cache else None,
            encoder_last_hidden_state=encoded,
            encoder_hidden_states=getattr(encoder_outputs, "hidden_states", None),
            encoder_attentions=getattr(encoder_outputs, "attentions", None),
        )

    def mask_tokens(self, batch: int, length: int, device=None) -> torch.LongTensor:
        """``(batch, length)`` mask tokens: the input of parallel prediction."""
        if self.config.mask_token_id is None:
            raise ValueError("this CapPa has no mask token (masked_pred_prob=0: the 'Cap' baseline), so no parallel "
                             "prediction")
        return torch.full((batch, length), self.config.mask_token_id, dtype=torch.long, device=device)


class BvCapPaForConditionalGeneration(BvCapPaPreTrainedModel, GenerationMixin):
    r"""big_vision CapPa: image -> caption (``AutoModelForImageTextToText``), teacher-forced, cached autoregressive
    decoding with `generate` (greedy, beam search, sampling), and parallel prediction (`generate_parallel`).

    ``model(pixel_values=images, labels=ids)`` is big_vision's ``model.apply(params, image, text)``: the decoder reads
    ``shift_right(labels)`` under a causal mask and ``logits[:, t]`` predicts ``labels[:, t]``; ``loss`` is the
    generative trainer's (pads, id 0, do not count). In ``train()`` mode with ``masked_pred_prob > 0`` some examples
    are parallel-prediction examples, as in big_vision's training (see the module docstring).

    Example (a converted folder; ``big-vision-hf convert cappa.npz out/cappa --tokenizer c4_en.model``):

    ```python
    >>> from PIL import Image  # doctest: +SKIP
    >>> from transformers import AutoModelForImageTextToText, AutoProcessor, pipeline  # doctest: +SKIP
    >>> model = AutoModelForImageTextToText.from_pretrained("out/cappa")  # doctest: +SKIP
    >>> processor = AutoProcessor.from_pretrained("out/cappa")  # doctest: +SKIP
    >>> inputs = processor(images=Image.open("cat.jpg"), return_tensors="pt")  # doctest: +SKIP
    >>> ids = model.generate(**inputs)  # greedy, up to seq_len tokens; num_beams=4 for beam search # doctest: +SKIP
    >>> processor.batch_decode(ids, skip_special_tokens=True)  # doctest: +SKIP
    ['a cat sitting on a sofa']
    >>> captioner = pipeline("image-to-text", model="out/cappa", trust_remote_code=True)  # doctest: +SKIP
    >>> captioner(Image.open("cat.jpg"), text="")  # the pipeline needs a prompt; "" for none  # doctest: +SKIP
    ```

    A fresh tiny model:

        >>> import torch
        >>> from big_vision_hf import BvCapPaConfig, BvCapPaForConditionalGeneration
        >>> config = BvCapPaConfig.from_bv_kwargs(dict(num_heads=2, num_layers=1, mlp_dim=64, emb_dim=32,
        ...     vocab_size=50, seq_len=8, patches=(8, 8), masked_pred_prob=0.75, masking_ratio=1.0), image_size=32)
        >>> model = BvCapPaForConditionalGeneration(config).eval()
        >>> images, labels = torch.zeros(2, 3, 32, 32), torch.tensor([[5, 6, 1, 0, 0, 0, 0, 0]] * 2)
        >>> out = model(pixel_values=images, labels=labels)
        >>> tuple(out.logits.shape), round(out.loss.item(), 4)  # LogitsDense starts at zero: uniform over 50
        ((2, 8, 50), 3.912)
        >>> model.generate(pixel_values=images).shape[1] <= 9  # the start token + at most seq_len tokens
        True
        >>> model.generate_parallel(images).shape
        torch.Size([2, 8])

    Parity: ``big_vision.models.proj.cappa.cappa.Model`` at commit 0127fb6: teacher-forced logits, the cached greedy
    decode and the parallel-prediction logits within 1e-4 fp32 of the original JAX code (``tests/test_bv_cappa.py``).
    """

    accepts_loss_kwargs = False  # big_vision's loss is normalised per example, not per token of the whole batch

    def __init__(self, config: BvCapPaConfig):
        super().__init__(config)
        self.model = BvCapPaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size)  # decoder/LogitsDense
        self.post_init()
        # generate() stops when the decoder's posemb runs out: the start token + seq_len tokens.
        self.generation_config.max_length = config.max_position_embeddings + 1

    def decoder_inputs_from_labels(self, labels: torch.LongTensor, parallel: bool = False):
        """``(decoder_input_ids, parallel rows)`` for ``labels``, as big_vision's ``Decoder`` builds them: teacher
        forcing (``shift_right``), all mask tokens (``parallel=True``), or in training with ``masked_pred_prob > 0``
        a random mix (see the module docstring)."""
        config = self.config
        if parallel:
            return self.model.mask_tokens(*labels.shape, device=labels.device), True
        shifted = shift_right(labels, config.decoder_start_token_id)
        if not (self.training and config.masked_pred_prob > 0):
            return shifted, False
        rows = torch.rand(labels.shape[0], device=labels.device) < config.masked_pred_prob
        masked = random_masking(labels, config.masking_ratio, config.mask_token_id)
        return torch.where(rows[:, None], masked, shifted), rows

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        label_masks: torch.Tensor | None = None,
        encoder_outputs: BaseModelOutput | tuple | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        parallel: bool = False,
        logits_to_keep: int = 0,
        interpolate_pos_encoding: bool = False,
        **kwargs,
    ) -> Seq2SeqLMOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`):
            Images in [-1, 1] (`BvCapPaProcessor` / `BvImageProcessor`).
        labels (`torch.LongTensor` of shape `(batch_size, target_length)`):
            The target tokens, big_vision's ``labels`` (``tokenize(max_len=seq_len, eos="sticky")``: EOS 1, pads 0).
            Without ``decoder_input_ids`` the decoder reads ``shift_right(labels)``. ``-100`` counts as the pad 0.
        decoder_input_ids (`torch.LongTensor` of shape `(batch_size, length)`):
            Explicit decoder inputs (``generate`` passes the tokens so far, starting with 0).
        label_masks (`torch.FloatTensor` of shape `(batch_size, target_length)`):
            big_vision's ``label_masks``: multiplies the loss weights (0 on a prompt's tokens, see
            `BvCapPaProcessor`).
        encoder_outputs: the encoder's output, to skip it (``generate`` passes it).
        cache (`EncoderDecoderCache`): the KV cache (``generate`` passes it).
        parallel (`bool`): CapPa's parallel prediction: the decoder reads only mask tokens (as many as ``labels``,
            else ``max_position_embeddings``) without the causal mask.
        logits_to_keep (`int`): compute logits for the last ``logits_to_keep`` positions only (0: all).
        interpolate_pos_encoding (`bool`): resample the encoder's learned posemb to the image's patch grid.

        There is no padding mask (big_vision masks nothing but the future): an ``attention_mask`` or
        ``decoder_attention_mask`` passed along is ignored.
        """
        if labels is not None:
            labels = labels.masked_fill(labels == IGNORE_INDEX, self.config.pad_token_id)
        rows: torch.Tensor | bool = parallel
        if decoder_input_ids is None and labels is not None:
            decoder_input_ids, rows = self.decoder_inputs_from_labels(labels, parallel)
        if use_cache is None:
            use_cache = self.config.use_cache and labels is None and not self.training and rows is False
        outputs = self.model(
            pixel_values, decoder_input_ids, encoder_outputs=encoder_outputs, cache=cache, use_cache=use_cache,
            parallel=rows, interpolate_pos_encoding=interpolate_pos_encoding,
        )
        hidden = outputs.last_hidden_state
        logits = self.lm_head(hidden[:, -logits_to_keep:] if logits_to_keep else hidden)  # decoder/LogitsDense
        loss = None
        if labels is not None:
            weights = (labels != self.config.pad_token_id).to(logits.dtype)
            if label_masks is not None:
                weights = weights * label_masks.to(logits.dtype)
            loss = weighted_token_loss(logits, labels, weights)
        return Seq2SeqLMOutput(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            encoder_last_hidden_state=outputs.encoder_last_hidden_state,
            encoder_hidden_states=outputs.encoder_hidden_states,
            encoder_attentions=outputs.encoder_attentions,
        )

    @torch.no_grad()
    def generate_parallel(
        self, pixel_values: torch.Tensor, max_length: int | None = None, interpolate_pos_encoding: bool = False
    ) -> torch.LongTensor:
        """CapPa's parallel prediction: one forward pass on ``max_length`` mask tokens (default
        ``max_position_embeddings``) without a causal mask, the argmax at every position; everything after the
        first EOS is set to the pad 0 (the layout of big_vision's tokenized captions). Returns ``(batch,
        max_length)`` ids without a start token."""
        length = max_length or self.config.max_position_embeddings
        encoder_outputs = self.model.encoder(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
        ids = self.model.mask_tokens(pixel_values.shape[0], length, pixel_values.device)
        logits = self(decoder_input_ids=ids, encoder_outputs=encoder_outputs, parallel=True, use_cache=False).logits
        tokens = logits.argmax(-1)
        eos = self.config.eos_token_id
        if eos is not None:
            after_eos = (tokens == eos).long().cumsum(dim=1) - (tokens == eos).long() > 0
            tokens = tokens.masked_fill(after_eos, self.config.pad_token_id)
        return tokens


__all__ = ["BvCapPaForConditionalGeneration", "BvCapPaModel", "BvCapPaPreTrainedModel", "BvCapPaDecoder"]
