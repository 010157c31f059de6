"""The model contract every task family implements, kept apart from batching and queue glue.

A family turns one item's fields into one or more :class:`Feature` rows (a long document split
into windows gives several), runs a padded batch of features through the model, and combines
the per-feature outputs of an item into one :class:`ItemResult`. The batching loop
(:mod:`worker.engine`) never looks inside features; the queue code never looks inside families.

Submit-time validation is a classmethod so producers can check input without loading weights.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from sluice.errors import ValidationError
from sluice.registry import ModelSpec


@dataclass
class Feature:
    """One model input row. ``length`` is what the token budget counts and sorting orders by."""

    item: int
    ids: dict[str, list[int]]
    length: int
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class ItemResult:
    """What gets stored for one item. ``embedding`` is stored as float32 bytes."""

    item: int
    label: str | None = None
    score: float | None = None
    output: dict[str, Any] | None = None
    embedding: np.ndarray | None = None
    error: str | None = None
    n_tokens: int | None = None
    compute_ms: float | None = None


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


class TaskFamily(ABC):
    """Base class of a task family: ``setup`` / ``preprocess`` / ``forward`` / ``postprocess``."""

    task: ClassVar[str]
    #: fields of an item (after job params are merged in) that hold text to bound by size
    text_fields: ClassVar[tuple[str, ...]] = ("text",)

    def __init__(self, spec: ModelSpec, device: str = "cpu") -> None:
        self.spec = spec
        self.device = device

    # submit time -------------------------------------------------------------------------
    @classmethod
    def validate_params(cls, params: dict[str, Any], spec: ModelSpec) -> None:
        """Check job-level options. Default: anything goes."""

    @classmethod
    def validate_item(cls, fields: dict[str, Any], item: int, spec: ModelSpec) -> None:
        """Check one item's fields (job params already merged in). Default: a ``text`` string."""
        text_field(fields, "text", item)

    # run time ----------------------------------------------------------------------------
    @abstractmethod
    def setup(self) -> None:
        """Load weights with ``from_pretrained`` onto ``self.device``; called once per process."""

    @abstractmethod
    def preprocess(self, item: int, fields: dict[str, Any]) -> list[Feature]:
        """Tokenise one item. Raise :class:`sluice.errors.ItemError` to fail it alone."""

    @abstractmethod
    def forward(self, batch: dict[str, Any]) -> Any:
        """Run the model on a collated batch (under ``torch.inference_mode``)."""

    @abstractmethod
    def postprocess(self, features: list[Feature], outputs: Any) -> list[Any]:
        """Turn batch outputs into one partial result per feature, in ``features`` order."""

    def combine(self, item: int, fields: dict[str, Any], partials: list[Any]) -> ItemResult:
        """Merge an item's partial results; single-window families return the only one."""
        (result,) = partials
        return result  # type: ignore[no-any-return]

    def collate(self, features: list[Feature]) -> dict[str, Any]:
        """Pad features into tensors on the device. Families with odd inputs override this."""
        from sluice.families.collate import pad_features

        return pad_features(features, self.pad_values(), self.device)

    def pad_values(self) -> dict[str, int]:
        """Padding value per input name; ``input_ids`` pads with the tokenizer's pad id."""
        return {"input_ids": 0, "attention_mask": 0, "token_type_ids": 0}

    def release(self) -> None:
        """Drop references to weights so memory can be reclaimed."""
