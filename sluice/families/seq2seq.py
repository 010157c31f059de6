"""``summarization``, ``translation`` and ``text2text-generation``: ``AutoModelForSeq2SeqLM``.

transformers 5 removed these pipelines; Sluice keeps what they did in 4.x. The encoder input is
``prefix + text``, truncated to the model's length limit. The prefix is the ``prefix`` option,
else the model's task-specific one (``config.task_specific_params["summarization"]`` or
``["translation_{src_lang}_to_{tgt_lang}"]``, as T5 ships them), else ``config.prefix``. The
task-specific entry's generation options (``num_beams``, ``max_length``, ...) are defaults under
the job's. For translation with a multilingual tokenizer (one with a ``src_lang`` attribute:
mBART, NLLB, M2M100), ``src_lang`` sets the tokenizer's source language and ``tgt_lang`` forces
the target language code as the first generated token.

Output: ``generated_text`` (plus ``summary_text`` or ``translation_text``, the names the 4.x
pipelines used), ``n_new_tokens`` and ``finish_reason``; ``score`` is the mean log-probability of
the generated tokens (:mod:`sluice.families.generation`). Unset options are the model's
generation config, as for a plain ``model.generate()``; that is the oracle the tests use.
"""

from __future__ import annotations

from typing import Any, ClassVar

from sluice.errors import ItemError
from sluice.families.generation import CUSTOM_OPTIONS, GenerationFamily

#: keys of a task-specific params entry that are generation options
_TASK_DEFAULTS = ("max_new_tokens", "max_length", "min_length", "num_beams", "length_penalty",
                  "no_repeat_ngram_size", "early_stopping", "repetition_penalty", "do_sample",
                  "temperature", "top_k", "top_p")  # fmt: skip


class Seq2SeqGeneration(GenerationFamily):
    """Base of the encoder-decoder families; subclasses differ in ``task`` and output names."""

    auto_class = "AutoModelForSeq2SeqLM"
    options: ClassVar[tuple[str, ...]] = (
        "max_new_tokens", "max_length", "min_length", "num_beams", "length_penalty", "no_repeat_ngram_size",
        "early_stopping", "repetition_penalty", "do_sample", "seed", "temperature", "top_k", "top_p", "prefix",
        "min_new_tokens", "num_return_sequences", "typical_p", "epsilon_cutoff", "bad_words", "suppress_tokens",
        "stop", "assistant_model", "prompt_lookup_num_tokens", *CUSTOM_OPTIONS,
    )  # fmt: skip
    #: the 4.x pipeline's name for the generated text, stored beside ``generated_text``
    text_key: ClassVar[str | None] = None

    def task_params_key(self, fields: dict[str, Any]) -> str | None:
        """Which ``config.task_specific_params`` entry applies to an item, if any."""
        return None

    def task_entry(self, fields: dict[str, Any]) -> dict[str, Any]:
        """The model's ``task_specific_params`` entry for this task (and languages), if any."""
        key = self.task_params_key(fields)
        params = getattr(self.model.config, "task_specific_params", None) or {}
        return dict(params.get(key) or {}) if key else {}

    def generate_options(self, fields: dict[str, Any]) -> dict[str, Any]:
        entry = self.task_entry(fields)
        chosen = super().generate_options(fields)
        defaults = {k: entry[k] for k in _TASK_DEFAULTS if entry.get(k) is not None}
        if "max_new_tokens" in chosen or "max_length" in chosen:
            defaults.pop("max_new_tokens", None)
            defaults.pop("max_length", None)
        return {**defaults, **chosen}

    def prefix(self, fields: dict[str, Any]) -> str:
        if fields.get("prefix") is not None:
            return str(fields["prefix"])
        return str(self.task_entry(fields).get("prefix") or getattr(self.model.config, "prefix", None) or "")

    def encode_many(self, items: list[tuple[int, dict[str, Any]]]) -> list[list[int]]:
        texts = [self.prefix(fields) + str(fields["text"]) for _, fields in items]
        return self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]  # type: ignore[no-any-return]

    def output(self, output: dict[str, Any]) -> dict[str, Any]:
        if self.text_key:
            output[self.text_key] = output["generated_text"]
        return output


class Text2TextGeneration(Seq2SeqGeneration):
    task = "text2text-generation"


class Summarization(Seq2SeqGeneration):
    task = "summarization"
    text_key = "summary_text"

    def task_params_key(self, fields: dict[str, Any]) -> str | None:
        return "summarization"


class Translation(Seq2SeqGeneration):
    task = "translation"
    text_key = "translation_text"
    options = (*Seq2SeqGeneration.options, "src_lang", "tgt_lang")

    def task_params_key(self, fields: dict[str, Any]) -> str | None:
        src, tgt = fields.get("src_lang"), fields.get("tgt_lang")
        return f"translation_{src}_to_{tgt}" if src and tgt else None

    def multilingual(self) -> bool:
        return hasattr(self.tokenizer, "src_lang")

    def generate_options(self, fields: dict[str, Any]) -> dict[str, Any]:
        options = super().generate_options(fields)
        tgt = fields.get("tgt_lang")
        if tgt and self.multilingual():
            lang_id = getattr(self.tokenizer, "get_lang_id", None)
            token = lang_id(tgt) if lang_id else self.tokenizer.convert_tokens_to_ids(tgt)
            if token is None or token == self.tokenizer.unk_token_id:
                raise ItemError(f"tgt_lang {tgt!r} is not a language code this model's tokenizer knows")
            options["forced_bos_token_id"] = int(token)
        return options

    def encode_many(self, items: list[tuple[int, dict[str, Any]]]) -> list[list[int]]:
        if not self.multilingual():
            return super().encode_many(items)
        # The source language is tokenizer state (its language-code tokens): encode per language.
        out: list[list[int]] = [[] for _ in items]
        by_lang: dict[Any, list[int]] = {}
        for row, (_, fields) in enumerate(items):
            by_lang.setdefault(fields.get("src_lang"), []).append(row)
        default = self.tokenizer.src_lang
        try:
            for lang, rows in by_lang.items():
                self.tokenizer.src_lang = lang or default
                for row, ids in zip(rows, super().encode_many([items[r] for r in rows]), strict=True):
                    out[row] = ids
        finally:
            self.tokenizer.src_lang = default
        return out
