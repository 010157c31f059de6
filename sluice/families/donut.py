"""Donut for document question answering: the prompt, greedy generation with scores, the answer.

Not a family itself: ``document-question-answering`` runs a Donut checkpoint (a
``VisionEncoderDecoderModel`` with a ``donut-swin`` encoder) through :class:`DonutReader`, the way
``pipeline("document-question-answering")`` does: the decoder starts from
``<s_docvqa><s_question>{question}</s_question><s_answer>`` and generates greedily; the answer is
what the pipeline's post-processing extracts from the decoded sequence (None when the model
closes no ``<s_answer>``). ``score`` is the mean log-probability of the generated tokens up to and
including the end-of-sequence token, as the generation families define it
(:class:`~sluice.families.generation.TokenScorer`).

Rows whose prompts have the same length (and the same token limit) share a ``generate`` call, so
no prompt is padded (Donut's decoder gives tokens absolute positions) and batching never changes
an answer. An image costs the positions the decoder attends to in the token budget: its patches,
merged 2x2 after each Swin stage, plus the prompt and the new tokens.
"""

from __future__ import annotations

import re
from typing import Any

from sluice.errors import ItemError
from sluice.families.base import Feature, ItemResult
from sluice.families.hf import load_model
from sluice.families.images import load_image
from sluice.registry import ModelSpec

PROMPT = "<s_docvqa><s_question>{}</s_question><s_answer>"
#: the pipeline's limit when neither the job nor the model's generation config sets one
DEFAULT_NEW_TOKENS = 256


def is_donut(config: Any) -> bool:
    """Whether a loaded ``AutoConfig`` is Donut's."""
    return bool(config.model_type == "vision-encoder-decoder" and config.encoder.model_type == "donut-swin")


class DonutReader:
    """Loads a Donut checkpoint and answers questions about images, batched."""

    processor: Any
    tokenizer: Any
    image_processor: Any
    model: Any

    def __init__(self, spec: ModelSpec, device: str, image_url_prefixes: list[str]) -> None:
        self.spec = spec
        self.device = device
        self.prefixes = image_url_prefixes

    def setup(self) -> None:
        from transformers import AutoProcessor

        remote = self.spec.trust_remote_code
        processor = AutoProcessor.from_pretrained(self.spec.path, trust_remote_code=remote)  # type: ignore[no-untyped-call]
        self.image_processor, self.tokenizer = processor.image_processor, processor.tokenizer
        self.model = load_model(self.spec, "VisionEncoderDecoderModel", self.device)
        encoder = self.model.config.encoder
        self.reduction = encoder.patch_size**2 * 4 ** (len(encoder.depths) - 1)
        config = self.model.generation_config
        # The pipeline's limit: the generation config's max_new_tokens, else its max_length (prompt included), else 256.
        self.default_new = config.max_new_tokens
        self.default_total = config.max_length if "max_length" in config.to_diff_dict() else None
        eos = config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])

    def feature(self, item: int, fields: dict[str, Any], max_new_tokens: int | None) -> Feature:
        """The item's row: processed pixels, prompt ids and token limit; no image fails the item."""
        if fields.get("image") is None:
            raise ItemError(f"item {item}: model {self.spec.name!r} reads the document from its 'image'; give one")
        image = load_image(str(fields["image"]), item, self.prefixes)
        pixels = self.image_processor(images=image, return_tensors="np")["pixel_values"][0]
        prompt = self.tokenizer(PROMPT.format(fields["question"]), add_special_tokens=False)["input_ids"]
        total = max(1, self.default_total - len(prompt)) if self.default_total else DEFAULT_NEW_TOKENS
        new = max_new_tokens or self.default_new or total
        cost = max(1, int(pixels.shape[-2] * pixels.shape[-1]) // self.reduction)
        meta = {"pixel_values": pixels, "prompt": prompt, "new": new}
        return Feature(item=item, ids={}, length=cost + len(prompt) + new, meta=meta, group=tuple(pixels.shape))

    def collate(self, features: list[Feature]) -> dict[str, Any]:
        import numpy as np
        import torch

        pixels = torch.from_numpy(np.stack([f.meta["pixel_values"] for f in features]))
        return {"pixel_values": pixels.to(self.device, dtype=self.model.dtype),
                "rows": [(f.meta["prompt"], f.meta["new"]) for f in features]}  # fmt: skip

    def forward(self, batch: dict[str, Any]) -> list[tuple[list[int], list[float]]]:
        """Per row: its new token ids and their log-probabilities; one ``generate`` per prompt length and limit."""
        import torch
        from transformers import LogitsProcessorList

        from sluice.families.generation import TokenScorer

        groups: dict[tuple[int, int], list[int]] = {}
        for row, (prompt, new) in enumerate(batch["rows"]):
            groups.setdefault((len(prompt), new), []).append(row)
        out: list[Any] = [None] * len(batch["rows"])
        for (_, new), rows in groups.items():
            prompts = torch.tensor([batch["rows"][r][0] for r in rows], device=batch["pixel_values"].device)
            scorer = TokenScorer("greedy", self.device)
            sequences = self.model.generate(
                pixel_values=batch["pixel_values"][rows], decoder_input_ids=prompts, max_new_tokens=new,
                do_sample=False, num_beams=1, logits_processor=LogitsProcessorList([scorer]),
            )  # fmt: skip
            tokens = sequences[:, sequences.shape[1] - len(scorer.steps) :]
            logprobs = scorer.transition_logprobs(tokens).float().cpu().tolist()
            for r, ids, lp in zip(rows, tokens.tolist(), logprobs, strict=True):
                out[r] = (ids, lp)
        return out

    def result(self, feature: Feature, ids: list[int], logprobs: list[float]) -> ItemResult:
        """The stored row: the answer as label, the mean log-probability as score."""
        end = next((i for i, t in enumerate(ids) if t in self.eos_ids), None)
        n = len(ids) if end is None else end + 1
        answer = self.answer(self.tokenizer.decode(feature.meta["prompt"] + ids[:n]))
        score = sum(logprobs[:n]) / n if n else None
        output = {"answers": [{"answer": answer, "score": score}], "n_new_tokens": n,
                  "finish_reason": "length" if end is None else "eos"}  # fmt: skip
        return ItemResult(item=feature.item, label=answer, score=score, output=output, n_tokens=feature.length)

    def answer(self, sequence: str) -> str | None:
        """The answer in a decoded sequence, extracted as the pipeline extracts it."""
        for token in (self.tokenizer.eos_token, self.tokenizer.pad_token):
            sequence = sequence.replace(token, "") if token else sequence
        sequence = re.sub(r"<.*?>", "", sequence, count=1).strip()  # the task's start token
        found = re.search(r"<s_answer>(.*)</s_answer>", sequence)
        return found.group(1).strip() if found else None

    def release(self) -> None:
        self.model = None
        self.tokenizer = self.image_processor = None
