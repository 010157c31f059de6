"""``text-generation``: ``AutoModelForCausalLM`` continues each item's ``text``.

``output["generated_text"]`` is what ``pipeline("text-generation", return_full_text=False)``
returns for the same options: the prompt is tokenised as the pipeline does (the tokenizer's
defaults, special tokens included), only the new tokens are decoded, with
``skip_special_tokens=True``. Prompts are left-padded so batched generation continues each one
from its own last token; ``forward`` and the scores are described in
:mod:`sluice.families.generation`.

Differences from the pipeline, all deliberate:

* defaults are ``max_new_tokens=32`` and the model's generation config, else greedy decoding
  (the pipeline samples at temperature 0.7 unless the model's generation config says otherwise);
* a prompt that would not fit the model's length limit together with ``max_new_tokens`` keeps
  its last ``limit - max_new_tokens`` tokens, which is the pipeline's
  ``handle_long_generation="hole"`` (without it the pipeline fails on such prompts);
* an empty prompt starts from the model's ``bos_token_id``, as ``generate()`` does.
"""

from __future__ import annotations

from typing import Any

from sluice.errors import ItemError, ValidationError
from sluice.families.generation import GenerationFamily
from sluice.registry import ModelSpec
from sluice.settings import Settings


class TextGeneration(GenerationFamily):
    task = "text-generation"
    auto_class = "AutoModelForCausalLM"
    options = ("max_new_tokens", "do_sample", "seed", "num_beams", "temperature", "top_p", "top_k",
               "repetition_penalty", "no_repeat_ngram_size")  # fmt: skip
    default_max_new_tokens = 32
    padding_side = "left"

    @classmethod
    def validate_item(cls, fields: dict[str, Any], item: int, spec: ModelSpec, settings: Settings) -> None:
        super().validate_item(fields, item, spec, settings)
        new = fields.get("max_new_tokens") or cls.default_max_new_tokens
        if spec.max_length and new >= spec.max_length:
            raise ValidationError(
                f"item {item}: 'max_new_tokens' ({new}) leaves no room for a prompt within model "
                f"{spec.name!r}'s max_length of {spec.max_length} tokens"
            )

    def encode_many(self, items: list[tuple[int, dict[str, Any]]]) -> list[list[int]]:
        # As the pipeline: the tokenizer's defaults (special tokens included), no truncation here.
        return self.tokenizer([str(fields["text"]) for _, fields in items])["input_ids"]  # type: ignore[no-any-return]

    def fit(self, ids: list[int], options: dict[str, Any]) -> list[int]:
        """The prompt's last tokens that fit beside the new ones; a bos token for an empty prompt."""
        new = self.new_token_limit(options)
        room = self.max_length - new
        if room <= 0:
            raise ItemError(
                f"max_new_tokens={new} leaves no room for a prompt within the model's {self.max_length}-token limit"
            )
        if not ids:
            bos = self.model.generation_config.bos_token_id
            if bos is None:
                raise ItemError("the prompt is empty and the model has no bos_token_id to start from")
            return [int(bos)]
        return ids[-room:]
