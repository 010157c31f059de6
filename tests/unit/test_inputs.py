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


def test_csv_is_read_a_line_at_a_time_with_quoted_newlines_bom_and_crlf(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_bytes(b'\xef\xbb\xbftext,lang\r\n"two\r\nlines, one cell",en\r\nok,fr\r\nbad \xff here,de\r\n')
    rows = read_input(path)
    assert next(rows) == {"text": "two\r\nlines, one cell", "lang": "en"}  # the bad line 5 is not read yet
    assert next(rows) == {"text": "ok", "lang": "fr"}
    with pytest.raises(ValidationError, match=r"c\.csv line 5: not valid UTF-8 \(byte 0xff at column 5\)"):
        next(rows)
    (tmp_path / "mac.csv").write_bytes(b"text,lang\rold,mac\r")  # classic Mac line endings
    assert list(read_input(tmp_path / "mac.csv")) == [{"text": "old", "lang": "mac"}]
