"""The decision log's sinks: a file takes orjson's UTF-8 bytes as they are, a text stream takes text; and
the records a Check leaves to the background writer."""

from __future__ import annotations

import io
import json
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ext_authz.model import EMPTY_MAP, Credentials, Decision, HttpRequest, RequestContext
from ext_authz.observe.decision_log import DecisionLog, Pending, Redactor, encode, pending_record
from ext_authz.trust.revision import Revision, TrustRevision

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


# ---------------------------------------------------------------------------------------------------
# Records a Check leaves to the writer (write_later): built there from the Check's inputs, all frozen.


def _pending(i: int, *, decision: object = None, fault: str = "", header_bytes: int = 0) -> Pending:
    http = HttpRequest("GET", f"/api/orders?token=secret{i}", "api.example.org", "https", "HTTP/2", EMPTY_MAP)
    ctx = RequestContext(
        http, "10.0.0.1:4000", "", EMPTY_MAP, Credentials(), request_id=f"req-{i}", header_bytes=header_bytes
    )
    if decision is None and not fault:
        decision = Decision(f"{i:032x}", allowed=i % 2 == 0, status=200 if i % 2 == 0 else 403, reason="r")
    revision = Revision("cfg", TrustRevision("trust"))
    at = datetime(2031, 3, 14, 12, 0, i % 60, tzinfo=UTC)
    return (f"{i:032x}", at, ctx, decision, 0.0002, revision, fault, 7, Redactor(), False, 2, f"trace{i}")  # type: ignore[return-value]


@pytest.mark.parametrize("background", [False, True])
def test_a_record_left_to_the_writer_is_the_record_the_check_would_write(
    tmp_path: Path, background: bool
) -> None:
    path = tmp_path / "decisions.jsonl"
    log = DecisionLog.open(str(path), background=background)
    items = [_pending(i) for i in range(40)] + [_pending(40, fault="RuntimeError")]
    for item in items:
        log.write_later(item)
    log.close()  # everything queued is built and written before the writer stops

    written = [json.loads(line) for line in path.read_text().splitlines()]
    assert written == [json.loads(encode(pending_record(item))) for item in items]
    first = written[0]
    assert (first["path"], first["worker"], first["trace_id"], first["revision"]["state"]) == (
        "/api/orders",  # never the query string
        2,
        "trace0",
        7,
    )
    assert written[-1]["decision"] == "error" and written[-1]["fault"] == "RuntimeError"
    assert "secret" not in path.read_text()


def test_a_record_the_writer_cannot_build_is_dropped_and_counted_and_the_rest_are_written(
    tmp_path: Path,
) -> None:
    path = tmp_path / "decisions.jsonl"
    drops: list[int] = []
    log = DecisionLog.open(str(path), background=True, on_drop=lambda: drops.append(1))
    log.write_later(_pending(0))
    log.write_later(_pending(1, decision=object()))  # not a Decision: building its record raises
    log.write_later(_pending(2))
    log.close()

    assert [json.loads(line)["decision_id"] for line in path.read_text().splitlines()] == [
        f"{0:032x}",
        f"{2:032x}",
    ]
    assert (log.dropped, len(drops)) == (1, 1)


class _StuckSink(io.StringIO):
    """A sink whose writes hang until released (a blocked pipe, a full disk on a network mount)."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def write(self, s: str) -> int:
        self.entered.set()
        self.release.wait(10)
        return super().write(s)


def test_while_the_sink_is_stuck_the_queue_holds_at_most_its_bytes() -> None:
    """Requests as large as the limits allow, queued behind a stuck sink: the count alone (10,000)
    would let them hold a GiB; the byte bound drops what is over it, and counts it."""
    sink = _StuckSink()
    log = DecisionLog(sink, background=True, max_queue=10_000, max_queue_bytes=1_000_000)
    log.write_later(_pending(0))
    assert sink.entered.wait(5), "the writer took the first record and is stuck writing it"
    for i in range(1, 41):
        log.write_later(_pending(i, header_bytes=90_000))
    room = 1_000_000 // (90_000 + 1024)
    assert (log.dropped, room) == (40 - 10, 10)
    sink.release.set()
    log.close()
    assert len(sink.getvalue().splitlines()) == 1 + room
