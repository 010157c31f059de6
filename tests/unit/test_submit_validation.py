"""Submit-time checks that keep what the database cannot store out of it, with a message naming
the item and the field: NaN and Infinity, values that are not JSON, deep nesting, huge fields."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from producer.client import Client
from producer.inputs import InvalidRecord, read_input
from producer.validate import MAX_DEPTH, check_item, check_params, json_problem, stored_input
from sluice.errors import ValidationError
from sluice.families.feature_extraction import FeatureExtraction
from sluice.registry import BUNDLED_REGISTRY, load_registry
from sluice.settings import Settings

SETTINGS = Settings(max_item_chars=1000)
SPEC = load_registry(BUNDLED_REGISTRY).get("minilm")


def error(record: dict[str, Any] | InvalidRecord, params: dict[str, Any] | None = None, item: int = 3) -> str | None:
    return check_item(FeatureExtraction, SPEC, params or {}, record, item, SETTINGS)


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"text": "t", "score": float("nan")}, "item 3: field 'score' is nan; JSON has no NaN or Infinity"),
        ({"text": "t", "meta": {"a": [1, float("inf")]}}, "item 3: field 'meta' is inf at ['a'][1]; JSON has no NaN"),
        ({"text": float("-inf")}, "item 3: field 'text' is -inf"),
        ({"text": "t", "tags": {"a", "b"}}, "item 3: field 'tags' is a set, which is not JSON"),
        ({"text": b"bytes"}, "item 3: field 'text' is a bytes, which is not JSON"),
        ({"text": "t", "m": {1: "x"}}, "item 3: field 'm' has a key 1 of type int; keys must be strings"),
        ({"text": "t", 7: "x"}, "item 3: field names must be strings, got 7 (int)"),
        ({"text": "t", "deep": nested(MAX_DEPTH + 1)}, f"item 3: field 'deep' is nested more than {MAX_DEPTH} levels"),
        ({"text": "lone \ud800 surrogate"}, "item 3: field 'text' has a lone surrogate character"),
        ({"text": "t", "n": 10**2000}, "item 3: field 'n' has an integer of over 4096 bits"),
        ({"text": "t", "blob": "x" * 1001}, "item 3: field(s) 'blob' take 1,013 characters as JSON, over the limit"),
        ({"text": "t", "list": list(range(400))}, "item 3: field(s) 'list' take"),
        ({"text": ["not", "a", "string"] * 200}, "item 3: field(s) 'text' take"),
    ],
)
def test_item_fields_must_be_storable_json(record: dict[str, Any], expected: str) -> None:
    message = error(record)
    assert message is not None and message.startswith(expected), message


def test_fine_items_pass_and_text_is_bounded_alone() -> None:
    assert error({"text": "x" * 1000, "meta": {"a": [1, 2.5, None, True, "s"]}, "t": (1, 2)}) is None
    assert error({"text": "t", "deep": nested(MAX_DEPTH - 1)}) is None
    assert "has 1,001 characters, over the limit of 1,000" in str(error({"text": "x" * 1001}))


def test_a_value_that_contains_itself_is_refused_not_a_crash() -> None:
    loop: list[Any] = []
    loop.append(loop)
    assert "is nested more than" in str(error({"text": "t", "loop": loop}))
    assert json_problem({"loop": loop}, "job params") is not None


def test_job_params_are_checked_by_name() -> None:
    assert check_params(None) == {}
    assert check_params({"candidate_labels": ["a"]}) == {"candidate_labels": ["a"]}
    with pytest.raises(ValidationError, match=r"^job params: field 'threshold' is nan; JSON has no NaN"):
        check_params({"threshold": float("nan")})
    with pytest.raises(ValidationError, match=r"^job params: field 'labels' is a frozenset"):
        check_params({"labels": frozenset("ab")})
    with pytest.raises(ValidationError, match=r"^job params must be an object of fields, got list"):
        check_params([("a", 1)])


def test_a_failed_item_stores_its_fields_only_when_they_are_json() -> None:
    assert stored_input(FeatureExtraction, {}, {"txt": "typo"}, SETTINGS) == {"txt": "typo"}
    assert stored_input(FeatureExtraction, {}, {"text": float("nan")}, SETTINGS) == {}
    assert stored_input(FeatureExtraction, {}, {"text": "t", "x": "y" * 5000}, SETTINGS) == {}
    assert stored_input(FeatureExtraction, {}, InvalidRecord("line 1: bad"), SETTINGS) == {}


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"priority": 10}, "priority must be a whole number from 0 to 9"),
        ({"priority": "3"}, "priority must be a whole number from 0 to 9 .* got '3'"),
        ({"priority": True}, "priority must be a whole number"),
        ({"params": {"x": float("inf")}}, "job params: field 'x' is inf"),
        ({"params": "candidate_labels=a"}, "job params must be an object"),
        ({"items": "one document"}, "items must be a list .* got str"),
        ({"items": None}, "items must be a list .* got NoneType"),
        ({"items": {"text": "a"}}, "items must be a list .* got dict"),
        ({"model": 5}, "model must be a registered model's name, got int"),
    ],
)
def test_submit_arguments_of_the_wrong_type_are_validation_errors(
    kwargs: dict[str, Any], expected: str, tmp_path: Path
) -> None:
    client = Client(Settings(database_url=f"sqlite:///{tmp_path / 'never-created.db'}", broker_url="redis://unused"))
    call = {"model": "minilm", "items": ["doc"], **kwargs}
    with pytest.raises(ValidationError, match=expected):
        client.submit(**call)
    assert not (tmp_path / "never-created.db").exists()  # nothing was even connected to


# reading files ----------------------------------------------------------------------------


def test_jsonl_values_the_database_refuses_are_read_then_refused_by_item(tmp_path: Path) -> None:
    path = tmp_path / "odd.jsonl"
    lines = ['{"text": NaN}', '{"text": "t", "x": Infinity}', '{"text": "t", "n": ' + "9" * 5000 + "}",
             '{"text": "t", "d": ' + "[" * 5000 + "]" * 5000 + "}", '{"text": "\\ud800"}']  # fmt: skip
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    records = list(read_input(path))
    assert len(records) == 5
    assert (
        error(records[0], item=0) == "item 0: field 'text' is nan; JSON has no NaN or Infinity (use null or a number)"
    )
    assert str(error(records[1], item=1)).startswith("item 1: field 'x' is inf")
    assert isinstance(records[2], InvalidRecord) and records[2].error.startswith("odd.jsonl line 3: cannot be read")
    assert isinstance(records[3], InvalidRecord) and records[3].error == "odd.jsonl line 4: nested too deeply to read"
    assert str(error(records[4], item=4)).startswith("item 4: field 'text' has a lone surrogate")


def test_csv_cells_longer_than_the_csv_modules_default_limit_are_read(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    path.write_text("text,lang\n" + "w" * 200_000 + ",en\n", encoding="utf-8")
    assert list(read_input(path)) == [{"text": "w" * 200_000, "lang": "en"}]


def test_cli_param_values_reach_the_client_as_json(tmp_path: Path) -> None:
    from sluice.cli import build_parser

    args = build_parser().parse_args(["submit", "x.txt", "--model", "m", "--param", 'candidate_labels=["a","b"]'])
    assert json.dumps(dict(args.param)) == '{"candidate_labels": ["a", "b"]}'
