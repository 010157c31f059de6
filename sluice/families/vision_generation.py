"""What the families that generate text from an image share: captioners and generative VQA.

Not a family itself: ``image-to-text`` and the generative route of ``visual-question-answering``
subclass :class:`ImagePromptGeneration`. Options, batched ``generate()``, scores, sampling and beams
are :class:`~sluice.families.generation.GenerationFamily`'s; this adds the image and the three
kinds of model the 4.x ``image-to-text`` and ``visual-question-answering`` pipelines served:

* ``git`` (``GitForCausalLM``): image tokens, then the prompt ``[CLS] + prompt tokens`` (no
  ``[SEP]``), as the 4.x pipeline built it; no prompt starts from the ``bos_token_id``, which is
  what ``generate()`` does with no ``input_ids``;
* ``blip`` (``BlipForConditionalGeneration``, ``BlipForQuestionAnswering``): the model's own
  ``generate`` runs its vision tower and text decoder, sets ``pad_token_id`` and stops at
  ``[SEP]``; it is called as it is (its text decoder's generation config gives the defaults);
* ``vision-encoder-decoder`` (ViT-GPT2, TrOCR, ...): the image only, no prompt.

**Batching never changes an answer**: GIT and BLIP give text tokens absolute positions, and BLIP's
question encoder output is attended without its padding mask, so a padded prompt would differ
from the prompt alone. Items therefore share a batch only when their processed pixels have one
shape and their prompts one length (:attr:`Feature.group`): nothing is padded. Captions without
a prompt all have the same length and batch freely. An image costs its patches in the token
budget (for every beam or returned sequence, as the vision work is repeated per row).
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from sluice.errors import ConfigError, ItemError
from sluice.families.base import Feature
from sluice.families.generation import GENERATE_DEFAULTS, GenerationFamily
from sluice.families.hf import Prepared
from sluice.families.images import DEFAULT_PATCH, load_image

#: model types whose generation from an image this module knows how to drive
KINDS = ("git", "blip", "vision-encoder-decoder")


def architectures(path: str) -> tuple[str, ...] | None:
    """``config.architectures`` of a local model directory, read without transformers (None when unreadable:
    a hub id, or no ``config.json``). Read once per version of the file: every item of a job asks."""
    try:
        changed = (Path(path) / "config.json").stat().st_mtime_ns
    except OSError:
        return None
    return _architectures(path, changed)


@cache
def _architectures(path: str, changed: int) -> tuple[str, ...] | None:
    try:
        config = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    names = config.get("architectures") if isinstance(config, dict) else None
    return tuple(str(n) for n in names) if isinstance(names, list) else None


class ImagePromptGeneration(GenerationFamily):
    """Generate from an item's ``image`` and a prompt the subclass tokenises (:meth:`prompt_ids`)."""

    options: ClassVar[tuple[str, ...]] = (
        "max_new_tokens", "min_new_tokens", "num_beams", "length_penalty", "do_sample", "seed", "temperature",
        "top_k", "top_p", "repetition_penalty", "no_repeat_ngram_size",
    )  # fmt: skip

    processor: Any
    image_processor: Any

    def setup(self) -> None:
        import transformers

        super().setup()
        if self.custom_generate is not None:
            raise ConfigError(f"registry model {self.spec.name!r}: custom_generate is not supported for {self.task}")
        self.processor = transformers.AutoProcessor.from_pretrained(  # type: ignore[no-untyped-call]
            self.spec.path, trust_remote_code=self.spec.trust_remote_code
        )
        # A checkpoint without a processor config (ViT-GPT2) saves its image processor and tokenizer apart.
        self.image_processor = getattr(self.processor, "image_processor", None)
        if self.image_processor is None:
            self.image_processor = transformers.AutoImageProcessor.from_pretrained(  # type: ignore[no-untyped-call]
                self.spec.path, trust_remote_code=self.spec.trust_remote_code
            )
        tokenizer = getattr(self.processor, "tokenizer", None)
        self.tokenizer = self.tokenizer if tokenizer is None else tokenizer
        config = self.model.config
        self.kind = str(config.model_type)
        if self.kind not in KINDS:
            raise ConfigError(
                f"registry model {self.spec.name!r}: model type {self.kind!r} is not supported for {self.task} "
                f"(supported: {', '.join(KINDS)}); chat vision-language models belong to task image-text-to-text"
            )
        text = config.get_text_config(decoder=True)
        limits = [self.spec.max_length, getattr(text, "max_position_embeddings", None), self.max_length]
        self.max_length = min(x for x in limits if x)  # the text model's positions, not only the tokenizer's limit
        vision = getattr(config, "vision_config", None) or getattr(config, "encoder", None) or config
        patch = getattr(vision, "patch_size", None)
        self.patch = patch if isinstance(patch, int) and patch > 0 else DEFAULT_PATCH
        if self.kind == "blip":
            # BLIP's generate stops at [SEP] whatever its generation config says, and its text decoder
            # generates under its own generation config: the defaults of unset options are that one's.
            self.eos_ids = {int(config.text_config.sep_token_id)}
            own = self.model.text_decoder.generation_config.to_dict()
            own = {k: v for k, v in own.items() if v is not None and not k.startswith("_")}
            self.model_defaults = {**GENERATE_DEFAULTS, **own}

    def prompt_ids(self, item: int, fields: dict[str, Any]) -> list[int]:
        """The token ids generation starts from (or, for BLIP, that its ``generate`` is given)."""
        raise NotImplementedError

    def fit(self, ids: list[int], options: dict[str, Any]) -> list[int]:
        """The prompt as it is; one that leaves no room for the new tokens fails (cutting it would change it)."""
        new = self.new_token_limit(options)
        if len(ids) + new > self.max_length:
            raise ItemError(
                f"the prompt takes {len(ids)} tokens; with {new} new tokens that is over the model's "
                f"{self.max_length}-token limit: shorten it or lower max_new_tokens"
            )
        return ids

    # run time ----------------------------------------------------------------------------
    def preprocess_many(self, items: list[tuple[int, dict[str, Any]]]) -> Prepared:
        """One item at a time: each has its own image, which may fail alone."""
        return self.preprocess_each(items)

    def preprocess(self, item: int, fields: dict[str, Any]) -> list[Feature]:
        image = load_image(str(fields.get("image", "")), item, self.settings.image_url_prefixes)
        pixels = self.image_processor(images=image, return_tensors="np")["pixel_values"][0]
        feature = self.feature(item, fields, self.prompt_ids(item, fields))
        options = feature.meta["options"]
        width = max(int(self.effective(options)["num_beams"]), self.sequences_per_item(options))
        feature.length += width * max(1, int(pixels.shape[-2] * pixels.shape[-1]) // (self.patch * self.patch))
        feature.meta["pixel_values"] = pixels
        feature.group = (tuple(pixels.shape), len(feature.ids["input_ids"]))
        return [feature]

    def collate(self, features: list[Feature]) -> dict[str, Any]:
        """Token rows as every generation family pads them (all one length here), and the stacked pixels."""
        import torch

        batch = super().collate(features)
        pixels = torch.from_numpy(np.stack([f.meta["pixel_values"] for f in features]))
        batch["pixel_values"] = pixels.to(self.device, dtype=self.model.dtype)
        return batch

    def rows_of(self, batch: dict[str, Any], rows: list[int]) -> dict[str, Any]:
        """Those rows' tokens and pixels; a vision-encoder-decoder model gets its pixels only."""
        import torch

        inputs = super().rows_of({k: v for k, v in batch.items() if k != "pixel_values"}, rows)
        pixels = batch["pixel_values"]
        inputs["pixel_values"] = pixels.index_select(0, torch.tensor(rows, device=pixels.device))
        if self.kind == "vision-encoder-decoder":
            return {"pixel_values": inputs["pixel_values"]}
        return inputs

    def call_generate(self, inputs: dict[str, Any], **kwargs: Any) -> tuple[Any, int]:
        """BLIP's ``generate`` sets ``pad_token_id`` itself (a second one is an error) and returns the prompt
        without its last token; the others are plain ``generate``."""
        if self.kind != "blip":
            return super().call_generate(inputs, **kwargs)
        kwargs.pop("pad_token_id", None)
        start = self.blip_new_tokens_start(inputs)
        return self.model.generate(**inputs, **kwargs), start

    def blip_new_tokens_start(self, inputs: dict[str, Any]) -> int:
        """Where BLIP's new tokens start: its captioner returns the prompt less its last token ([SEP])."""
        return int(inputs["input_ids"].shape[1]) - 1

    def release(self) -> None:
        super().release()
        self.processor = self.image_processor = None
