"""``zero-shot-classification``: candidate labels scored by an NLI model, as the pipeline does.

Each candidate label becomes a hypothesis (``hypothesis_template``, default ``"This example is
{}."``) paired with the item's ``text`` as premise; every pair is one feature, so the pairs of many
items share batches. The premise alone is truncated. :meth:`ZeroShotClassification.combine`
applies ``pipeline("zero-shot-classification")``'s maths to an item's pairs: a softmax of the
entailment logits over the labels, or with ``multi_label`` (or a single label) a softmax of
entailment against contradiction for each label on its own.

The model must be an NLI ``AutoModelForSequenceClassification`` with an entailment label (its
``id2label``, or the registry's ``labels``); contradiction is the label named so, else the one
the pipeline assumes (the last when entailment is first, the first otherwise).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sluice.errors import ConfigError, ValidationError
from sluice.families.base import Feature, ItemResult
from sluice.families.common import apply_score_function, bool_option, candidate_labels, hypothesis_template, text_field
from sluice.families.hf import Prepared, SequenceClassifier
from sluice.registry import ModelSpec
from sluice.settings import Settings

DEFAULT_TEMPLATE = "This example is {}."


def template(fields: dict[str, Any], item: int) -> str:
    """The item's hypothesis template (:func:`sluice.families.common.hypothesis_template`)."""
    return hypothesis_template(fields, f"item {item}", DEFAULT_TEMPLATE)


def multi_label(fields: dict[str, Any], item: int) -> bool:
    """Whether each label is scored on its own (entailment against contradiction)."""
    return bool_option(fields, "multi_label", f"item {item}")


def _label_id(labels: list[str], prefix: str) -> int | None:
    return next((i for i, label in enumerate(labels) if label.lower().startswith(prefix)), None)


class ZeroShotClassification(SequenceClassifier):
    task = "zero-shot-classification"

    @classmethod
    def validate_item(cls, fields: dict[str, Any], item: int, spec: ModelSpec, settings: Settings) -> None:
        text_field(fields, "text", item)
        candidate_labels(fields, item)
        template(fields, item)
        multi_label(fields, item)

    def setup(self) -> None:
        super().setup()
        entailment = _label_id(self.labels, "entail")
        if entailment is None:
            raise ConfigError(
                f"registry model {self.spec.name!r} is not an NLI model: none of its labels {self.labels} "
                "starts with 'entail'; name them with `labels = [...]` in the registry if the config does not"
            )
        contradiction = _label_id(self.labels, "contradict")
        if contradiction is None:
            contradiction = len(self.labels) - 1 if entailment == 0 else 0
        self.entailment, self.contradiction = entailment, contradiction

    def preprocess_many(self, items: list[tuple[int, dict[str, Any]]]) -> Prepared:
        """One premise/hypothesis pair per candidate label, every item's pairs tokenised in one call."""
        return self.batched(items, self._pair_features)

    def _pair_features(self, items: list[tuple[int, dict[str, Any]]]) -> Prepared:
        """The pairs of ``items`` in one tokenizer call; an item with bad labels or template fails alone."""
        premises: list[str] = []
        hypotheses: list[str] = []
        owners: list[int] = []
        out: Prepared = []
        for pos, (item, fields) in enumerate(items):
            try:
                labels = candidate_labels(fields, item)
                hypothesis = template(fields, item)
            except ValidationError as exc:
                out.append(ItemResult(item=item, error=str(exc)))
                continue
            out.append([])
            premises.extend([str(fields.get("text", ""))] * len(labels))
            hypotheses.extend(hypothesis.format(label) for label in labels)
            owners.extend([pos] * len(labels))
        if not owners:
            return out
        # only_first: the hypothesis (the label) is never cut, as in the pipeline.
        enc = self.tokenizer(premises, hypotheses, truncation="only_first", max_length=self.max_length)
        names = [name for name in self.tokenizer.model_input_names if name in enc]
        for row, pos in enumerate(owners):
            ids = {name: enc[name][row] for name in names}
            out[pos].append(Feature(item=items[pos][0], ids=ids, length=len(ids["input_ids"])))  # type: ignore[union-attr]
        return out

    def postprocess(self, features: list[Feature], outputs: Any) -> list[Any]:
        """Each pair's logits and length; the scores need all of an item's pairs (:meth:`combine`)."""
        return [(np.asarray(row, dtype=np.float32), f.length) for f, row in zip(features, outputs, strict=True)]

    def combine(self, item: int, fields: dict[str, Any], partials: list[Any]) -> ItemResult:
        labels = candidate_labels(fields, item)
        logits = np.stack([row for row, _ in partials])
        if multi_label(fields, item) or len(labels) == 1:
            pairs = logits[:, [self.contradiction, self.entailment]]
            scores = apply_score_function(pairs, "softmax")[:, 1]
        else:
            scores = apply_score_function(logits[:, self.entailment], "softmax")
        order = sorted(range(len(labels)), key=lambda i: -float(scores[i]))
        return ItemResult(
            item=item,
            label=labels[order[0]],
            score=float(scores[order[0]]),
            output={"labels": [labels[i] for i in order], "scores": [float(scores[i]) for i in order]},
            n_tokens=sum(length for _, length in partials),
        )
