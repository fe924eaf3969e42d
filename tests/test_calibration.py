from __future__ import annotations

import json
from pathlib import Path

import pytest
from quantforge.model.calibration import (
    CalibrationError,
    CalibrationSpec,
    fingerprint,
    make_rows,
    read_local,
)


def test_text_and_jsonl_sources(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("some text")
    assert read_local(tmp_path / "a.txt", "text") == ["some text"]
    lines = [json.dumps({"text": "one"}), "", json.dumps({"text": "two", "other": 1})]
    (tmp_path / "b.jsonl").write_text("\n".join(lines))
    assert read_local(tmp_path / "b.jsonl", "text") == ["one", "two"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.jsonl", '{"text": "ok"}\n{not json}\n', "bad.jsonl:2: not valid JSON"),
        ("col.jsonl", '{"text": "ok"}\n{"body": "x"}\n', "col.jsonl:2: no string field 'text'"),
        ("empty.txt", "  \n", "is empty"),
        ("data.csv", "a,b", "is neither .txt nor .jsonl"),
    ],
)
def test_bad_local_sources(tmp_path: Path, name: str, content: str, message: str) -> None:
    (tmp_path / name).write_text(content)
    with pytest.raises(CalibrationError, match=message.replace(".", r"\.")):
        read_local(tmp_path / name, "text")


def test_missing_source(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match="does not exist"):
        fingerprint(CalibrationSpec(str(tmp_path / "none.txt")))


def test_fingerprint_follows_content_and_sampling(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_text("alpha")
    first = fingerprint(CalibrationSpec(str(path), samples=4, seq_len=16))
    assert first == fingerprint(CalibrationSpec(str(path), samples=4, seq_len=16))
    assert first != fingerprint(CalibrationSpec(str(path), samples=8, seq_len=16))
    path.write_text("beta")
    assert first != fingerprint(CalibrationSpec(str(path), samples=4, seq_len=16))


def test_rows_and_too_short_text() -> None:
    spec = CalibrationSpec("x.txt", samples=3, seq_len=4)
    assert make_rows([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11, 12, 13]], spec) == [
        [1, 2, 3, 4],
        [5, 6, 7, 8],
        [9, 10, 11, 12],
    ]
    with pytest.raises(CalibrationError, match="gives 5 tokens; 3 samples of 4 tokens need 12"):
        make_rows([[1, 2, 3, 4, 5]], spec)
