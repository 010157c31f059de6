"""``multiple-choice``: ``AutoModelForMultipleChoice`` picks the best of an item's ``choices``.

An item is ``{"question": "...", "choices": ["...", "...", ...]}`` with 2 to 16 choices; the
question is optional. Each choice is encoded as the model's head was trained on it: the question
and the choice as a sentence pair (token type 0 and 1, as ``run_swag``), or the choice alone
without a question; truncated to the model's length limit. The head gives one logit per choice;
``output["scores"]`` is their softmax over the item's choices, aligned with ``choices``,
``output["choice"]`` the index of the best, ``label`` its text and ``score`` its probability.

**Batching.** Every multiple-choice head in transformers reshapes its input ``(batch, choices,
seq)`` to ``(batch * choices, seq)``, scores each row on its own, and reshapes the logits back;
a row's logit never depends on the other rows. So each choice is its own feature (one row):
choices are length-sorted and batched with every other item's, a batch runs as one "item" of all
its rows, shape ``(1, rows, seq)``, and each item's softmax is taken over its own choices when
they are all back. No item is ever padded with dummy choices, so padding choices cannot change
a score, items with different numbers of choices share batches, and the token budget counts
exactly the rows that run. The oracle is the model's softmax over one item's choices alone.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sluice.errors import ValidationError
from sluice.families.base import Feature, ItemResult
from sluice.families.common import apply_score_function, text_field
from sluice.families.hf import HFTextFamily, Prepared
from sluice.registry import ModelSpec
from sluice.settings import Settings

MIN_CHOICES, MAX_CHOICES = 2, 16


def choices_field(fields: dict[str, Any], item: int) -> list[str]:
    """An item's ``choices``: a list of 2 to 16 strings, with a message naming the item otherwise."""
    choices = fields.get("choices")
    if not isinstance(choices, list) or not MIN_CHOICES <= len(choices) <= MAX_CHOICES:
        raise ValidationError(
            f"item {item}: field 'choices' must be a list of {MIN_CHOICES} to {MAX_CHOICES} strings, got "
            f"{len(choices) if isinstance(choices, list) else type(choices).__name__}"
        )
    for n, choice in enumerate(choices):
        if not isinstance(choice, str):
            raise ValidationError(f"item {item}: field 'choices'[{n}] must be a string, got {type(choice).__name__}")
    return choices


class MultipleChoice(HFTextFamily):
    task = "multiple-choice"
    auto_class = "AutoModelForMultipleChoice"
    text_fields = ("question",)

    @classmethod
    def validate_item(cls, fields: dict[str, Any], item: int, spec: ModelSpec, settings: Settings) -> None:
        text_field(fields, "question", item, required=False)
        choices_field(fields, item)

    def preprocess_many(self, items: list[tuple[int, dict[str, Any]]]) -> Prepared:
        """One feature per choice, every choice of the window tokenised in (at most) two calls."""
        return self.batched(items, self._choice_features)

    def _choice_features(self, items: list[tuple[int, dict[str, Any]]]) -> Prepared:
        """Pairs (question, choice) in one tokenizer call, lone choices (no question) in another."""
        rows = [(item, n, fields.get("question"), str(choice))
                for item, fields in items for n, choice in enumerate(choices_field(fields, item))]  # fmt: skip
        encoded: dict[tuple[int, int], dict[str, list[int]]] = {}
        for paired in (True, False):
            group = [r for r in rows if (r[2] is not None) == paired]
            if not group:
                continue
            firsts = [str(q) for _, _, q, _ in group] if paired else [c for _, _, _, c in group]
            enc = self.encode(firsts, [c for _, _, _, c in group] if paired else None)
            for row, (item, n, _, _) in enumerate(group):
                encoded[item, n] = {name: values[row] for name, values in enc.items()}
        out: Prepared = []
        for item, fields in items:
            ids = [encoded[item, n] for n in range(len(fields["choices"]))]
            out.append([Feature(item=item, ids=x, length=len(x["input_ids"]), meta={"choice": n})
                        for n, x in enumerate(ids)])  # fmt: skip
        return out

    def forward(self, batch: dict[str, Any]) -> Any:
        """One logit per row: the batch's rows run as the choices of one item, shape ``(1, rows, seq)``."""
        inputs = {name: tensor.unsqueeze(0) for name, tensor in self.model_inputs(batch).items()}
        return self.model(**inputs).logits[0].float().cpu().numpy()

    def postprocess(self, features: list[Feature], outputs: Any) -> list[tuple[float, int]]:
        """Each choice's logit and token count; the softmax waits for all of an item's choices."""
        return [(float(logit), f.length) for f, logit in zip(features, np.asarray(outputs), strict=True)]

    def combine(self, item: int, fields: dict[str, Any], partials: list[Any]) -> ItemResult:
        """Softmax over the item's choices (partials come in choice order); the best is the label."""
        logits = np.asarray([logit for logit, _ in partials], dtype=np.float32)
        scores = apply_score_function(logits, "softmax")
        best = int(scores.argmax())
        return ItemResult(
            item=item,
            label=str(fields["choices"][best]),
            score=float(scores[best]),
            output={"scores": [float(s) for s in scores], "choice": best},
            n_tokens=sum(n for _, n in partials),
        )
