from __future__ import annotations

from pathlib import Path

import pytest

from producer.inputs import InvalidRecord, read_input
from sluice.errors import ValidationError


def test_jsonl_txt_csv(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_bytes(b'\xef\xbb\xbf{"text": "one"}\n\n{"text": "two", "text_pair": "x"}\n')
    assert list(read_input(tmp_path / "a.jsonl")) == [{"text": "one"}, {"text": "two", "text_pair": "x"}]
    (tmp_path / "a.txt").write_text("first line\r\n\nsecond\n", encoding="utf-8")
    assert list(read_input(tmp_path / "a.txt")) == [{"text": "first line"}, {"text": "second"}]
    (tmp_path / "a.csv").write_text('text,lang\n"hello, world",en\nbye,fr\n', encoding="utf-8")
    assert list(read_input(tmp_path / "a.csv")) == [
        {"text": "hello, world", "lang": "en"},
        {"text": "bye", "lang": "fr"},
    ]


def test_unreadable_lines_keep_their_position(tmp_path: Path) -> None:
    (tmp_path / "b.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "\xff"}\nnot json\n[1, 2]\n')
    records = list(read_input(tmp_path / "b.jsonl"))
    assert records[0] == {"text": "ok"}
    assert isinstance(records[1], InvalidRecord) and "line 2: not valid UTF-8 (byte 0xff" in records[1].error
    assert isinstance(records[2], InvalidRecord) and "line 3: not valid JSON" in records[2].error
    assert isinstance(records[3], InvalidRecord) and "expected a JSON object" in records[3].error


def test_unsupported_or_missing_file(tmp_path: Path) -> None:
    (tmp_path / "x.xlsx").write_bytes(b"")
    with pytest.raises(ValidationError, match=r"unsupported extension '.xlsx'"):
        read_input(tmp_path / "x.xlsx")
    with pytest.raises(ValidationError, match="does not exist"):
        read_input(tmp_path / "missing.jsonl")
