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

An item is a prompt ``{"text": ...}`` or a conversation ``{"messages": [{"role", "content"}, ...]}``,
rendered with the tokenizer's chat template and ``add_generation_prompt=True``, then tokenised
without adding special tokens (the template writes its own, so no second bos), exactly as
``tokenizer.apply_chat_template(messages, add_generation_prompt=True)``. A model whose tokenizer
has no chat template refuses ``messages`` at submit time.

``stop`` (a string or up to four) stops generation when one appears, and the text ends before it,
with ``finish_reason`` ``"stop"``; ``n_new_tokens`` and the score then count the fewest new tokens
whose text holds it. The other strategies and options (several sequences, assisted decoding,
prompt lookup, bad words, ...) are described in :mod:`sluice.families.generation`.
"""

from __future__ import annotations

from typing import Any

from sluice.errors import ItemError, ValidationError
from sluice.families.common import has_chat_template, messages_field
from sluice.families.generation import CUSTOM_OPTIONS, GenerationFamily
from sluice.registry import ModelSpec
from sluice.settings import Settings


class TextGeneration(GenerationFamily):
    task = "text-generation"
    auto_class = "AutoModelForCausalLM"
    options = ("max_new_tokens", "min_new_tokens", "do_sample", "seed", "num_beams", "num_return_sequences",
               "temperature", "top_p", "top_k", "typical_p", "epsilon_cutoff", "repetition_penalty",
               "no_repeat_ngram_size", "bad_words", "suppress_tokens", "stop", "assistant_model",
               "prompt_lookup_num_tokens", *CUSTOM_OPTIONS)  # fmt: skip
    default_max_new_tokens = 32
    padding_side = "left"

    @classmethod
    def validate_item(cls, fields: dict[str, Any], item: int, spec: ModelSpec, settings: Settings) -> None:
        if "messages" in fields:
            cls.validate_chat(fields, item, spec, settings)
        else:
            super().validate_item(fields, item, spec, settings)
        new = fields.get("max_new_tokens") or cls.default_max_new_tokens
        if spec.max_length and new >= spec.max_length:
            raise ValidationError(
                f"item {item}: 'max_new_tokens' ({new}) leaves no room for a prompt within model "
                f"{spec.name!r}'s max_length of {spec.max_length} tokens"
            )

    @classmethod
    def validate_chat(cls, fields: dict[str, Any], item: int, spec: ModelSpec, settings: Settings) -> None:
        """A conversation item: well-formed messages, no ``text`` beside them, a model that has a chat template."""
        if fields.get("text") is not None:
            raise ValidationError(f"item {item}: give either 'text' or 'messages', not both")
        messages_field(fields, item, settings.max_item_chars)
        if has_chat_template(spec.path) is False:
            raise ValidationError(
                f"item {item}: model {spec.name!r} has no chat template (its tokenizer defines none), so "
                "'messages' cannot be rendered; send a 'text' prompt or use a chat model"
            )
        cls.check_generation(fields, item, spec, settings)

    def encode_many(self, items: list[tuple[int, dict[str, Any]]]) -> list[list[int]]:
        """Prompts as the pipeline tokenises them (the tokenizer's defaults, special tokens included,
        no truncation here); conversations through the chat template, without special tokens added."""
        out: list[list[int]] = [[] for _ in items]
        chats = [n for n, (_, fields) in enumerate(items) if "messages" in fields]
        plain = [n for n, (_, fields) in enumerate(items) if "messages" not in fields]
        if plain:
            for n, ids in zip(plain, self.tokenizer([str(items[n][1]["text"]) for n in plain])["input_ids"],
                              strict=True):  # fmt: skip
                out[n] = ids
        if chats:
            rendered = self.tokenizer.apply_chat_template(
                [items[n][1]["messages"] for n in chats], tokenize=False, add_generation_prompt=True
            )
            encoded = self.tokenizer(rendered, add_special_tokens=False)["input_ids"]
            for n, ids in zip(chats, encoded, strict=True):
                out[n] = ids
        return out

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
