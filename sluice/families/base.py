"""The model contract every task family implements, kept apart from batching and queue glue.

A family turns one item's fields into one or more :class:`Feature` rows (a long document split
into windows gives several), runs a padded batch of features through the model, and combines
the per-feature outputs of an item into one :class:`ItemResult`. The batching loop
(:mod:`worker.engine`) never looks inside features; the queue code never looks inside families.

Submit-time validation is a classmethod so producers can check input without loading weights.
Both sides get the caller's :class:`~sluice.settings.Settings` (the producer's at submit time, the
worker's at run time), never the process-wide cached ones.

An item fails alone in one way: :meth:`TaskFamily.preprocess` raises :class:`ItemError`, and
:meth:`TaskFamily.preprocess_many` (what the engine calls) turns that into a failed
:class:`ItemResult`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from sluice.errors import ItemError
from sluice.families.common import text_field
from sluice.registry import ModelSpec
from sluice.settings import Settings


@dataclass
class Feature:
    """One model input row. ``length`` is what the token budget counts and sorting orders by.

    ``group``: features with different groups never share a batch (images whose processed pixels
    differ in shape, which cannot be stacked); None, the default, batches with anything.
    """

    item: int
    ids: dict[str, list[int]]
    length: int
    meta: dict[str, Any] = field(default_factory=dict)
    group: Hashable = None


@dataclass(frozen=True)
class Artifact:
    """A binary result of an item (a depth map, a mask, a waveform), stored beside its row.

    ``media_type`` is what it is (``image/png``, ``application/x-npy``, ``audio/wav``); ``name``
    optionally says which of several it is (a mask's label), for exports and the client.
    """

    media_type: str
    data: bytes
    name: str | None = None


@dataclass
class ItemResult:
    """What gets stored for one item. ``embedding`` is stored as float32 bytes; ``artifacts``
    (binary results) go to their own table in the same transaction as the row."""

    item: int
    label: str | None = None
    score: float | None = None
    output: dict[str, Any] | None = None
    embedding: np.ndarray | None = None
    error: str | None = None
    n_tokens: int | None = None
    compute_ms: float | None = None
    artifacts: list[Artifact] = field(default_factory=list)


class TaskFamily(ABC):
    """Base class of a task family: ``setup`` / ``preprocess`` / ``forward`` / ``postprocess``."""

    task: ClassVar[str]
    #: fields of an item (after job params are merged in) that hold text to bound by size
    text_fields: ClassVar[tuple[str, ...]] = ("text",)

    def __init__(self, spec: ModelSpec, device: str = "cpu", settings: Settings | None = None) -> None:
        """``settings`` are the worker's; without them (tests), ``Settings()`` read from the environment now."""
        self.spec = spec
        self.device = device
        self.settings = settings if settings is not None else Settings()

    # submit time -------------------------------------------------------------------------
    @classmethod
    def validate_params(cls, params: dict[str, Any], spec: ModelSpec) -> None:
        """Check job-level options. Default: anything goes."""

    @classmethod
    def validate_item(cls, fields: dict[str, Any], item: int, spec: ModelSpec, settings: Settings) -> None:
        """Check one item's fields (job params already merged in) under the submitter's ``settings``.

        Default: a ``text`` string. Overrides take ``settings`` too, used or not, so callers need
        not know which families read them (image sources do).
        """
        text_field(fields, "text", item)

    # run time ----------------------------------------------------------------------------
    @abstractmethod
    def setup(self) -> None:
        """Load weights with ``from_pretrained`` onto ``self.device``; called once per process."""

    @abstractmethod
    def preprocess(self, item: int, fields: dict[str, Any]) -> list[Feature]:
        """Tokenise one item. Raise :class:`sluice.errors.ItemError` to fail it alone."""

    def preprocess_many(self, items: list[tuple[int, dict[str, Any]]]) -> list[list[Feature] | ItemResult]:
        """Features of every item, in order; a failed :class:`ItemResult` in place of an item that fails.

        What the engine calls on a whole chunk. The default is :meth:`preprocess_each`; families
        that tokenise many items in one call (far faster) override it.
        """
        return self.preprocess_each(items)

    def preprocess_each(self, items: list[tuple[int, dict[str, Any]]]) -> list[list[Feature] | ItemResult]:
        """:meth:`preprocess` item by item, so that an item that raises fails alone.

        An :class:`ItemError`'s message is stored as it is; any other exception is stored with its
        type name (``"ValueError: ..."``), since it is not a message written for the user.
        """
        out: list[list[Feature] | ItemResult] = []
        for item, fields in items:
            try:
                out.append(self.preprocess(item, fields))
            except ItemError as exc:
                out.append(ItemResult(item=item, error=str(exc)))
            except Exception as exc:
                out.append(ItemResult(item=item, error=f"{type(exc).__name__}: {exc}"))
        return out

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
