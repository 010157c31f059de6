"""Submit-time validation: everything that can be checked without loading a model."""

from __future__ import annotations

from typing import Any

from producer.inputs import InvalidRecord
from sluice.errors import ValidationError
from sluice.families.base import TaskFamily
from sluice.registry import ModelSpec
from sluice.settings import Settings

MAX_REPORTED = 10


def normalise(record: Any, item: int) -> dict[str, Any] | InvalidRecord:
    """A record as a fields dict: a bare string is a document's text."""
    if isinstance(record, InvalidRecord | dict):
        return record
    if isinstance(record, str):
        return {"text": record}
    return InvalidRecord(f"item {item}: expected a string or an object, got {type(record).__name__}")


def check_item(
    family: type[TaskFamily],
    spec: ModelSpec,
    params: dict[str, Any],
    record: dict[str, Any] | InvalidRecord,
    item: int,
    settings: Settings,
) -> str | None:
    """The error message for an item, or None when it is fine, under the submitter's ``settings``.

    Text fields are bounded by ``settings.max_item_chars``; the family checks the rest, with the
    same settings (image URL prefixes, for one).
    """
    if isinstance(record, InvalidRecord):
        return record.error
    max_chars = settings.max_item_chars
    fields = {**params, **record}
    for name in family.text_fields:
        value = fields.get(name)
        if isinstance(value, str) and len(value) > max_chars:
            return (
                f"item {item}: field {name!r} has {len(value):,} characters, over the limit of "
                f"{max_chars:,}; split the document or raise SLUICE_MAX_ITEM_CHARS"
            )
    try:
        family.validate_item(fields, item, spec, settings)
    except ValidationError as exc:
        return str(exc)
    return None


def rejection(errors: list[str], total_bad: int) -> ValidationError:
    """One error that lists the first problems and says how to proceed."""
    shown = "\n  ".join(errors[:MAX_REPORTED])
    more = f"\n  ... and {total_bad - MAX_REPORTED} more" if total_bad > MAX_REPORTED else ""
    return ValidationError(
        f"{total_bad} invalid item(s); nothing was submitted:\n  {shown}{more}\n"
        "Fix the input, or submit with skip_invalid (CLI: --skip-invalid) to store them as failed items."
    )
