"""Helpers the task families share: field and option checks, label lists, score maths.

One module, so that no family imports another family for a helper. Everything here is plain
Python and NumPy: submit-time validation imports it without torch, transformers or PIL.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from string import Formatter
from typing import Any

import numpy as np

from sluice.errors import ValidationError
from sluice.registry import ModelSpec

# fields and options ------------------------------------------------------------------------


def text_field(fields: dict[str, Any], name: str, item: int, required: bool = True) -> str | None:
    """Fetch a string field, with a message naming the item and the field when it is wrong."""
    value = fields.get(name)
    if value is None:
        if required:
            raise ValidationError(f"item {item}: missing required field {name!r}")
        return None
    if not isinstance(value, str):
        raise ValidationError(f"item {item}: field {name!r} must be a string, got {type(value).__name__}")
    return value


def messages_field(fields: dict[str, Any], item: int, max_chars: int) -> list[dict[str, str]]:
    """A conversation: a non-empty list of ``{"role": str, "content": str}`` within ``max_chars`` in all."""
    messages = fields.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValidationError(f"item {item}: field 'messages' must be a non-empty list of role/content objects")
    total = 0
    for n, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ValidationError(f"item {item}: messages[{n}] must be an object with a string 'role'")
        if not isinstance(message.get("content"), str):
            raise ValidationError(f"item {item}: messages[{n}].content must be a string")
        total += len(message["content"])
    if total > max_chars:
        raise ValidationError(
            f"item {item}: field 'messages' has {total:,} characters of content, over the limit of {max_chars:,}; "
            "shorten the conversation or raise SLUICE_MAX_ITEM_CHARS"
        )
    return messages


@cache
def has_chat_template(path: str) -> bool | None:
    """Whether the tokenizer saved in the model directory ``path`` has a chat template (read from its
    files, without transformers); None when ``path`` is not a local directory (a hub id)."""
    folder = Path(path)
    if not folder.is_dir():
        return None
    saved = ("chat_template.jinja", "chat_template.json", "additional_chat_templates")
    if any((folder / name).exists() for name in saved):
        return True
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return bool(isinstance(config, dict) and config.get("chat_template"))


def int_option(fields: dict[str, Any], name: str, where: str, default: Any, minimum: int) -> Any:
    """An integer option of at least ``minimum`` (``default`` when absent); ``where`` names the item or job params."""
    value = fields.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValidationError(f"{where}: field {name!r} must be an integer >= {minimum}, got {value!r}")
    return value


def bool_option(fields: dict[str, Any], name: str, where: str, default: bool = False) -> bool:
    """A true/false option (``default`` when absent); strings like "yes" are refused, not guessed."""
    value = fields.get(name, default)
    if not isinstance(value, bool):
        raise ValidationError(f"{where}: field {name!r} must be true or false, got {value!r}")
    return value


# candidate labels and hypotheses -----------------------------------------------------------


def candidate_labels(fields: dict[str, Any], item: int) -> list[str]:
    """The labels to rank: a list of distinct non-empty strings, or one comma-separated string."""
    labels = fields.get("candidate_labels")
    if isinstance(labels, str):
        labels = [part.strip() for part in labels.split(",") if part.strip()]
    if not labels or not isinstance(labels, list) or not all(isinstance(x, str) and x for x in labels):
        raise ValidationError(
            f"item {item}: 'candidate_labels' must be a non-empty list of strings; "
            'give it for the job with --param \'candidate_labels=["a","b"]\' or per item'
        )
    if len(set(labels)) != len(labels):
        raise ValidationError(f"item {item}: 'candidate_labels' has duplicates: {labels}")
    return labels


def hypothesis_template(fields: dict[str, Any], where: str, default: str) -> str:
    """The template each label is put in: a string with exactly one bare ``{}`` and no other field.

    Escaped braces (``{{``/``}}``) are literal text. Anything else is refused, because with no
    ``{}`` every label would get the same hypothesis, and any other field (``{0}``, ``{x}``, a
    second ``{}``) is either an error at ``format`` time or not the one slot the label fills.
    """
    template = fields.get("hypothesis_template", default)
    must = (
        f"{where}: field 'hypothesis_template' must be a string with {{}} where the label goes, "
        f"like {default!r}; got {template!r}"
    )
    if not isinstance(template, str):
        raise ValidationError(must)
    try:
        slots = ["{" + _field_text(name, spec, conv) + "}" for _, name, spec, conv in Formatter().parse(template)
                 if name is not None]  # fmt: skip
    except ValueError as exc:
        raise _unformattable(where, template, str(exc)) from None
    if not slots:
        raise ValidationError(f"{must} (no placeholder: every label would get the same hypothesis)")
    if slots != ["{}"]:
        raise _unformattable(where, template, f"it has {', '.join(slots)}")
    return template


def _unformattable(where: str, template: str, problem: str) -> ValidationError:
    return ValidationError(
        f"{where}: field 'hypothesis_template' {template!r} cannot be formatted with a label ({problem}); "
        "use {} once and double any other braces"
    )


def _field_text(name: str, spec: str | None, conversion: str | None) -> str:
    """A replacement field as written, from ``Formatter.parse``'s parts."""
    return name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")


# labels and scores -------------------------------------------------------------------------


def score_function(problem_type: str | None, num_labels: int) -> str:
    """Which function turns logits into scores, exactly as the classification pipelines choose it."""
    if problem_type == "regression":
        return "none"
    if problem_type == "multi_label_classification" or num_labels == 1:
        return "sigmoid"
    return "softmax"


def apply_score_function(logits: np.ndarray, function: str) -> np.ndarray:
    """``sigmoid``, ``softmax`` (over the last axis, numerically stable) or ``none`` of ``logits``."""
    if function == "sigmoid":
        return np.asarray(1.0 / (1.0 + np.exp(-logits)))
    if function == "softmax":
        shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return np.asarray(shifted / shifted.sum(axis=-1, keepdims=True))
    return logits


def model_labels(spec: ModelSpec, config: Any) -> list[str]:
    """Output labels: the registry's ``labels`` when given, else the model config's ``id2label``."""
    labels = list(spec.labels or [config.id2label[i] for i in range(config.num_labels)])
    if len(labels) != config.num_labels:
        raise ValidationError(
            f"registry model {spec.name!r} names {len(labels)} labels but the model has {config.num_labels} outputs"
        )
    return labels


def ranked(labels: list[str], scores: np.ndarray) -> list[dict[str, Any]]:
    """Labels with scores, best first (ties keep label order, as a stable sort does)."""
    order = sorted(range(len(labels)), key=lambda i: -float(scores[i]))
    return [{"label": labels[i], "score": float(scores[i])} for i in order]
