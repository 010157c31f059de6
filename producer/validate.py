"""Submit-time validation: everything that can be checked without loading a model."""

from __future__ import annotations

import json
import math
import re
from typing import Any

from producer.inputs import InvalidRecord
from sluice.errors import ValidationError
from sluice.families.base import TaskFamily
from sluice.registry import ModelSpec
from sluice.settings import Settings
from sluice.webhooks import callback_problem

MAX_REPORTED = 10
#: Deepest nesting of lists and objects accepted in an item field or a job param (a value that
#: contains itself is refused as too deep too).
MAX_DEPTH = 64
#: Largest integer magnitude stored (Python converts at most 4300 digits to text by default).
MAX_INT_BITS = 4096

_SURROGATE = re.compile("[\ud800-\udfff]")


def normalise(record: Any, item: int) -> dict[str, Any] | InvalidRecord:
    """A record as a fields dict: a bare string is a document's text."""
    if isinstance(record, InvalidRecord | dict):
        return record
    if isinstance(record, str):
        return {"text": record}
    return InvalidRecord(f"item {item}: expected a string or an object, got {type(record).__name__}")


def _where(path: str) -> str:
    return f" at {path}" if path else ""


def _value_problem(value: Any, depth: int = 0, path: str = "") -> str | None:
    """Why ``value`` cannot be stored as JSON (the database's JSON columns), or None.

    ``json.dumps(allow_nan=False)`` semantics, stricter on keys (strings only) and bounded in
    depth, integer size and Unicode (no lone surrogates, which no UTF-8 database accepts).
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):
        if _SURROGATE.search(value):
            return f"has a lone surrogate character{_where(path)} (not valid Unicode)"
        return None
    if isinstance(value, int):
        if value.bit_length() > MAX_INT_BITS:
            return f"has an integer of over {MAX_INT_BITS} bits{_where(path)}; give it as a string"
        return None
    if isinstance(value, float):
        if not math.isfinite(value):
            return f"is {value}{_where(path)}; JSON has no NaN or Infinity (use null or a number)"
        return None
    if isinstance(value, list | tuple | dict):
        if depth >= MAX_DEPTH:
            return f"is nested more than {MAX_DEPTH} levels deep{_where(path)} (or contains itself)"
        if isinstance(value, dict):
            for key, sub in value.items():
                if not isinstance(key, str):
                    return f"has a key {key!r} of type {type(key).__name__}{_where(path)}; keys must be strings"
                if problem := _value_problem(key, depth + 1, path) or _value_problem(
                    sub, depth + 1, f"{path}[{key!r}]"
                ):
                    return problem
        else:
            for n, sub in enumerate(value):
                if problem := _value_problem(sub, depth + 1, f"{path}[{n}]"):
                    return problem
        return None
    kind = type(value).__name__
    return f"is a {kind}{_where(path)}, which is not JSON (use a string, number, bool, null, list or object)"


def json_problem(fields: Any, where: str) -> str | None:
    """Why a fields dict (an item's, or the job params) cannot be stored as JSON, naming the field; or None."""
    if not isinstance(fields, dict):
        return f"{where}: expected an object of fields, got {type(fields).__name__}"
    for name, value in fields.items():
        if not isinstance(name, str):
            return f"{where}: field names must be strings, got {name!r} ({type(name).__name__})"
        problem = _value_problem(name) or _value_problem(value)
        if problem:
            return f"{where}: field {name!r} {problem}"
    return None


def check_params(params: Any) -> dict[str, Any]:
    """The job params as a dict of JSON values; a :class:`ValidationError` naming the field otherwise."""
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise ValidationError(f"job params must be an object of fields, got {type(params).__name__}")
    problem = json_problem(params, "job params")
    if problem:
        raise ValidationError(problem)
    return dict(params)


def check_callback_url(url: Any, settings: Settings) -> str | None:
    """The job's ``callback_url`` (None: no callback); a :class:`ValidationError` saying what to fix
    when it is not an allowed http(s) URL or no secret is configured to sign its callbacks."""
    if url is None:
        return None
    problem = callback_problem(url, settings)
    if problem:
        raise ValidationError(problem)
    return str(url)


def check_item(
    family: type[TaskFamily],
    spec: ModelSpec,
    params: dict[str, Any],
    record: dict[str, Any] | InvalidRecord,
    item: int,
    settings: Settings,
) -> str | None:
    """The error message for an item, or None when it is fine, under the submitter's ``settings``.

    Every field must be storable as JSON (no NaN or Infinity, no sets or bytes, bounded nesting).
    Text fields are bounded by ``settings.max_item_chars``, and so are all other fields together
    (as JSON); the family checks the rest, with the same settings (image URL prefixes, for one).
    """
    if isinstance(record, InvalidRecord):
        return record.error
    problem = json_problem(record, f"item {item}") or _oversize(family, params, record, item, settings)
    if problem:
        return problem
    try:
        family.validate_item({**params, **record}, item, spec, settings)
    except ValidationError as exc:
        return str(exc)
    return None


def _oversize(
    family: type[TaskFamily], params: dict[str, Any], record: dict[str, Any], item: int, settings: Settings
) -> str | None:
    """Why an item is too large to store: a text field over ``max_item_chars``, or all its other
    fields together over it as JSON; or None."""
    max_chars = settings.max_item_chars
    fields = {**params, **record}
    for name in family.text_fields:
        value = fields.get(name)
        if isinstance(value, str) and len(value) > max_chars:
            return (
                f"item {item}: field {name!r} has {len(value):,} characters, over the limit of "
                f"{max_chars:,}; split the document or raise SLUICE_MAX_ITEM_CHARS"
            )
    rest = {k: v for k, v in record.items() if not (k in family.text_fields and isinstance(v, str))}
    size = len(json.dumps(rest, ensure_ascii=False)) if rest else 0
    if size > max_chars:
        names = ", ".join(map(repr, list(rest)[:5])) + (", ..." if len(rest) > 5 else "")
        return (
            f"item {item}: field(s) {names} take {size:,} characters as JSON, over the limit of "
            f"{max_chars:,}; make them smaller or raise SLUICE_MAX_ITEM_CHARS"
        )
    return None


def stored_input(
    family: type[TaskFamily], params: dict[str, Any], record: dict[str, Any] | InvalidRecord, settings: Settings
) -> dict[str, Any]:
    """What a failed item's ``input`` column gets: its fields, or ``{}`` when they cannot or
    should not be stored (unreadable, not JSON, too large); its error says what was wrong."""
    if not isinstance(record, dict) or json_problem(record, "") or _oversize(family, params, record, 0, settings):
        return {}
    return record


def rejection(errors: list[str], total_bad: int) -> ValidationError:
    """One error that lists the first problems and says how to proceed."""
    shown = "\n  ".join(errors[:MAX_REPORTED])
    more = f"\n  ... and {total_bad - MAX_REPORTED} more" if total_bad > MAX_REPORTED else ""
    return ValidationError(
        f"{total_bad} invalid item(s); nothing was submitted:\n  {shown}{more}\n"
        "Fix the input, or submit with skip_invalid (CLI: --skip-invalid) to store them as failed items."
    )
