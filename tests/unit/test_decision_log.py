"""The decision log's sinks: a file takes orjson's UTF-8 bytes as they are, a text stream takes text."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from ext_authz.observe.decision_log import DecisionLog

RECORDS = [
    {"decision_id": f"{i:032x}", "identity": {"subject": "zoë ✓ \U0001f510"}, "path": "/ä"} for i in range(50)
]


@pytest.mark.parametrize("background", [False, True])
def test_a_file_gets_one_utf8_json_line_per_record(tmp_path: Path, background: bool) -> None:
    path = tmp_path / "logs" / "decisions.jsonl"
    log = DecisionLog.open(str(path), background=background)
    for rec in RECORDS:
        log.write(rec)
    log.close()

    lines = path.read_bytes().decode("utf-8").splitlines()
    assert [json.loads(line) for line in lines] == RECORDS


def test_a_file_is_appended_to_not_truncated(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    path.write_text('{"earlier": true}\n')
    log = DecisionLog.open(str(path))
    log.write(RECORDS[0])
    log.close()

    assert [json.loads(line) for line in path.read_text().splitlines()] == [{"earlier": True}, RECORDS[0]]


@pytest.mark.parametrize("background", [False, True])
def test_a_text_stream_gets_text(background: bool) -> None:
    sink = io.StringIO()
    log = DecisionLog(sink, background=background)
    for rec in RECORDS:
        log.write(rec)
    log.close()

    assert [json.loads(line) for line in sink.getvalue().splitlines()] == RECORDS
