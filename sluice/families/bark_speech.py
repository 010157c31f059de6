"""Bark (``BarkModel``, suno/bark) for the ``text-to-speech`` family: loading, tokenising, sampling rate.

Bark is four models in a row: a semantic GPT reads the text and samples semantic tokens, a coarse
GPT samples the first two EnCodec codebooks from them, a fine model fills the other codebooks, and
the EnCodec decoder turns the codes into a waveform; ``BarkModel.generate`` runs all four, each
stage with its own generation config (``generation_config.json``'s ``semantic_config``,
``coarse_acoustics_config``, ``fine_acoustics_config``). Everything here copies what
``pipeline("text-to-audio")`` does for a ``bark`` model, so a clip equals the pipeline's:

- the text is tokenised as ``BarkProcessor`` tokenises it: no special tokens, padded to
  ``max_length`` (the pipeline reads ``max_input_semantic_length`` off the generation config's
  ``semantic_config`` *object*, else uses 256: a loaded checkpoint holds a dict there, so 256),
  with an attention mask and no token type ids;
- ``model.generate(input_ids=..., attention_mask=...)`` with no other argument: the pipeline adds
  none for models that pass generation parameters on to their sub-models;
- the sampling rate is derived from the generation config and the codec config as the pipeline
  derives it.

The semantic model reads at most ``max_input_semantic_length`` text tokens and silently drops the
rest; the family refuses a longer text instead (split it), as it does SpeechT5's. Voice presets
(``history_prompt``) are not supported: every clip is spoken unprompted.
"""

from __future__ import annotations

from typing import Any

from sluice.errors import ConfigError

#: ``max_length`` the pipeline pads bark inputs to when the generation config does not say otherwise
PIPELINE_MAX_LENGTH = 256


def load(path: str, dtype: Any) -> Any:
    """``BarkModel`` from a local directory (its codec config and weights inside; nothing is downloaded)."""
    from transformers import BarkModel

    return BarkModel.from_pretrained(path, dtype=dtype)


def encode_kwargs(model: Any) -> dict[str, Any]:
    """The tokenizer arguments ``BarkProcessor`` uses under ``pipeline("text-to-audio")``."""
    max_length = PIPELINE_MAX_LENGTH
    if hasattr(model.generation_config, "semantic_config"):
        max_length = getattr(model.generation_config.semantic_config, "max_input_semantic_length", max_length)
    return {"padding": "max_length", "max_length": max_length, "add_special_tokens": False,
            "return_attention_mask": True, "return_token_type_ids": False}  # fmt: skip


def max_text_tokens(model: Any) -> int:
    """How many text tokens the semantic model reads (``max_input_semantic_length``, as ``generate`` builds it)."""
    from transformers.models.bark.generation_configuration_bark import BarkSemanticGenerationConfig

    config = model.generation_config.semantic_config
    if not isinstance(config, BarkSemanticGenerationConfig):  # a loaded checkpoint holds a dict
        config = BarkSemanticGenerationConfig(**config)  # type: ignore[no-untyped-call]
    return int(config.max_input_semantic_length)


def sampling_rate(model: Any) -> int:
    """The pipeline's sampling rate: ``sample_rate`` then ``sampling_rate``, each from the generation
    config over the model config, else from the codec config; the last one found wins (the codec's
    ``sampling_rate`` for a Bark checkpoint)."""
    generation = model.__dict__.get("generation_config")
    codec = getattr(model.config, "codec_config", None)
    rate = None
    for name in ("sample_rate", "sampling_rate"):
        value = getattr(generation, name, None) if generation is not None else None
        value = value if value is not None else getattr(model.config, name, None)
        if value is None and codec is not None:
            value = getattr(codec, name, None)
        rate = value if value is not None else rate
    if rate is None:
        raise ConfigError("the Bark model names no sampling rate (generation config sample_rate, codec sampling_rate)")
    return int(rate)


def generate(model: Any, ids: Any, mask: Any) -> Any:
    """One clip's waveform, ``(1, samples)``: the four stages as the pipeline runs them."""
    return model.generate(input_ids=ids, attention_mask=mask)
