"""The decision log's sinks: a file takes orjson's UTF-8 bytes as they are, a text stream takes text; and
the records a Check leaves to the background writer."""

from __future__ import annotations

import io
import json
import re
import secrets
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ext_authz.model import (
    EMPTY_MAP,
    Credentials,
    Decision,
    HttpRequest,
    Identity,
    Principal,
    RequestContext,
    ShadowResult,
)
from ext_authz.observe.decision_log import (
    MAX_LOGGED_PATH,
    DecisionLog,
    Pending,
    Redactor,
    _size,
    encode,
    logged_request,
    pending_record,
    record,
    redact_path,
)
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


def _pending(
    i: int, *, decision: object = None, fault: str = "", headers: dict[str, str] | None = None
) -> Pending:
    http = HttpRequest(
        "GET", f"/api/orders?token=secret{i}", "api.example.org", "https", "HTTP/2", headers or EMPTY_MAP
    )
    ctx = RequestContext(http, "10.0.0.1:4000", "", EMPTY_MAP, Credentials(), request_id=f"req-{i:03d}")
    if decision is None and not fault:
        decision = Decision(f"{i:032x}", allowed=i % 2 == 0, status=200 if i % 2 == 0 else 403, reason="r")
    revision = Revision("cfg", TrustRevision("trust"))
    at = datetime(2031, 3, 14, 12, 0, i % 60, tzinfo=UTC)
    req = logged_request(ctx, Redactor(), headers is not None)
    return (f"{i:032x}", at, req, decision, 0.0002, revision, fault, 7, 2, f"trace{i}")  # type: ignore[return-value]


_ALICE = Identity(kind="oidc", subject="alice ✓", issuer="https://idp.example.com")
_WEB = Identity(kind="x509_svid", spiffe_id="spiffe://example.org/web", trust_domain="example.org")
_SHADOW = (ShadowResult("s1", "allow", True), ShadowResult("s2", "deny", False, "no such key"))
# Decisions with every section a record can have, the same sections twice over (the writer keeps
# encoded sections and must not hand one decision's to another).
_FULL_DECISIONS = [
    Decision(
        "d" * 32,
        allowed=True,
        status=200,
        reason="exception",
        rule="r1",
        principal=Principal((_WEB, _ALICE)),
        shadow=_SHADOW,
        shadow_allowed=True,
        exception_id="exc-1",
        grant_ids=("g1", "g2"),
        signals_read=("device.managed",),
        policy_errors=(("r2", "no such key: x"),),
        detail="because",
    ),
    Decision(
        "e" * 32,
        allowed=False,
        status=403,
        reason="revoked",
        principal=Principal((_ALICE,)),
        shadow=_SHADOW[1:],
        shadow_allowed=False,
        revocation_id="rev-1",
        revocation_kind="sub",
    ),
    Decision("f" * 32, allowed=False, status=401, reason="token_expired", principal=Principal((_WEB,))),
]
_FULL_DECISIONS += _FULL_DECISIONS


@pytest.mark.parametrize("background", [False, True])
def test_a_record_left_to_the_writer_is_the_record_the_check_would_write(
    tmp_path: Path, background: bool
) -> None:
    path = tmp_path / "decisions.jsonl"
    log = DecisionLog.open(str(path), background=background)
    items = [_pending(i) for i in range(40)] + [_pending(40, fault="RuntimeError")]
    items += [_pending(41 + i, decision=d) for i, d in enumerate(_FULL_DECISIONS)]
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
    assert written[40]["decision"] == "error" and written[40]["fault"] == "RuntimeError"
    full = written[41]
    assert full["shadow"][1] == {"rule": "s2", "effect": "deny", "matched": False}
    assert (full["grant_ids"], full["identity"]["subject"]) == (["g1", "g2"], "alice ✓")
    assert written[42]["revocation"] == {"id": "rev-1", "kind": "sub"}
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
    """Records with large headers (`headers: true`) queued behind a stuck sink: the count alone (10,000)
    would let them hold hundreds of MiB; the byte bound drops what is over it, and counts it."""
    sink = _StuckSink()
    log = DecisionLog(sink, background=True, max_queue=10_000, max_queue_bytes=1_000_000)
    log.write_later(_pending(0))
    assert sink.entered.wait(5), "the writer took the first record and is stuck writing it"
    big = {f"x-big-{j}": "\U0001f510" * 1000 for j in range(20)}
    items = [_pending(i, headers=big) for i in range(1, 41)]
    room = 1_000_000 // _size(items[0])
    assert 0 < room < 40
    for item in items:
        log.write_later(item)
    assert log.dropped == 40 - room
    sink.release.set()
    log.close()
    assert len(sink.getvalue().splitlines()) == 1 + room


def _held(value: object) -> int:
    """Bytes a queued record's request holds, as Python stores it."""
    if isinstance(value, dict):
        return sys.getsizeof(value) + sum(_held(k) + _held(v) for k, v in value.items())
    if isinstance(value, tuple):
        return sys.getsizeof(value) + sum(_held(v) for v in value)
    return sys.getsizeof(value)


@pytest.mark.parametrize(
    "headers",
    [
        {f"h{j}": "v" for j in range(200)},  # many tiny headers: the entries, not the text
        {f"h{j}": "\U0001f510" * 8 for j in range(200)},  # 4 bytes a character
        {"x-big": "\u00e9" * 50_000},
    ],
)
def test_the_byte_bound_counts_at_least_what_a_queued_request_holds(headers: dict[str, str]) -> None:
    item = _pending(1, headers=headers)
    assert _size(item) >= _held(item[2])


def test_a_queued_record_holds_no_unredacted_header_and_no_credential() -> None:
    item = _pending(1, headers={"authorization": "Bearer abc.def.ghi", "x-ok": "fine"})
    assert item[2] is not None and item[2][5] == {"authorization": "[REDACTED]", "x-ok": "fine"}
    plain = _pending(1)[2]
    assert plain is not None and plain[5] is None  # headers: false keeps none
    assert all(isinstance(v, str) for v in item[2][:5])  # strings of the request, no RequestContext


def test_a_record_says_of_the_request_what_logged_request_took_from_it() -> None:
    http = HttpRequest("GET", "/a?b=c", "h", "https", "HTTP/2", EMPTY_MAP)
    ctx = RequestContext(http, "1.2.3.4:5", "", EMPTY_MAP, Credentials(), request_id="r")
    decision = Decision("d" * 32, allowed=True, status=200, reason="allowed")
    revision = Revision("cfg", TrustRevision("trust"))
    at = datetime(2031, 1, 1, tzinfo=UTC)
    rec = record("d" * 32, at, logged_request(ctx, None, False), decision, 0.001, revision, "", 0)
    assert {k: rec[k] for k in ("request_id", "method", "host", "path", "source")} == {
        "request_id": "r",
        "method": "GET",
        "host": "h",
        "path": "/a",  # never the query string
        "source": "1.2.3.4:5",
    }
    assert "headers" not in rec
    assert (
        pending_record(
            ("d" * 32, at, logged_request(ctx, None, False), decision, 0.001, revision, "", 0, None, "")
        )
        == rec
    )


# -- paths: a token inside one is replaced before it is logged, streamed, traced or reported ----------
JWS = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"


@pytest.mark.parametrize(
    ("path", "logged"),
    [
        ("/api/orders/123", "/api/orders/123"),
        (f"/{JWS}", "/[REDACTED]"),
        (f"/reset/{JWS}/confirm", "/reset/[REDACTED]/confirm"),
        ("/reset/eyJhbGciOiJFUzI1NiJ9.eyJzdWI", "/reset/[REDACTED]"),  # cut short
        ("/p;jsessionid=SECRET", "/p;[REDACTED]"),
        ("/p;jsessionid=SECRET/q;v=1", "/p;[REDACTED]/q;[REDACTED]"),
        ("/a%3Fb%3Dsecret", "/a[REDACTED]"),
        ("/a%3fb", "/a[REDACTED]"),
        ("/a%23b", "/a[REDACTED]"),
        ("/a/k%3Dv/b", "/a/k[REDACTED]"),
        ("/a%2Fb", "/a%2Fb"),  # an encoded slash is no secret
        ("/reset%253Fcode%253D839201", "/reset[REDACTED]"),  # encoded twice
        ("/r%25253Fx", "/r[REDACTED]"),  # three times
        ("/reset/token=abcdefghijklmnopqrstuvwxyz", "/reset/token=[REDACTED]"),  # a value in the path
        ("/x;k=v/p=q", "/x;[REDACTED]/p=[REDACTED]"),
        ("/files/RxFwyPK-tOe0OpdRITivlUxta5soBob_2I-limiRUCM", "/files/[REDACTED]"),  # base64url, 256 bits
        ("/v/010da569a072b9391a1019b421b6a926", "/v/[REDACTED]"),  # hex, 128 bits
        ("/keys/AKIAIOSFODNN7EXAMPLE", "/keys/[REDACTED]"),
        ("/orders/0b956be1-c462-4ea6-99a9-cda0387b07d0", "/orders/0b956be1-c462-4ea6-99a9-cda0387b07d0"),
        ("/api/customer-account-settings-2024", "/api/customer-account-settings-2024"),
        ("/pkg/ext-authz-0.4.1-py3-none-any.whl", "/pkg/ext-authz-0.4.1-py3-none-any.whl"),
        ("/apis/listNamespacedPodTemplates", "/apis/listNamespacedPodTemplates"),
        ("/" + "x" * 200, "/[REDACTED]"),
    ],
)
def test_path_redaction(path: str, logged: str) -> None:
    assert redact_path(path) == logged


def test_random_tokens_in_paths_are_caught() -> None:
    """The heuristic, measured on tokens as applications make them (secrets.token_urlsafe): at 24 bytes
    and more at most 1 in 500 may slip through; at 16 bytes (22 characters) 1 in 50."""
    for size, allowed in ((16, 0.02), (24, 0.002), (32, 0.002)):
        tokens = [secrets.token_urlsafe(size) for _ in range(5000)]
        missed = [t for t in tokens if redact_path(f"/r/{t}") != "/r/[REDACTED]"]
        assert len(missed) <= allowed * len(tokens), (size, missed[:5])
    hexes = [secrets.token_hex(16) for _ in range(1000)]
    assert all(redact_path(f"/r/{h}") == "/r/[REDACTED]" for h in hexes)


def test_a_long_path_is_cut() -> None:
    long = "/a" * 5000
    assert redact_path(long) == long[:MAX_LOGGED_PATH] + "[TRUNCATED]"


def test_operators_add_path_patterns(tmp_path: Path) -> None:
    extra = (re.compile(r"/invite/[^/]+"),)
    assert redact_path("/invite/abc/accept", extra) == "[REDACTED]/accept"
    from ext_authz.settings import DecisionLogSettings

    with pytest.raises(ValueError, match="matches the empty string"):
        DecisionLogSettings.model_validate({"redact_paths": ["x*"]})
    with pytest.raises(ValueError, match="not a regular expression"):
        DecisionLogSettings.model_validate({"redact_paths": ["(unclosed"]})


def test_url_headers_lose_their_query_and_path_tokens() -> None:
    r = Redactor()
    jws = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.sig"
    assert r.header("referer", f"https://app.example.com/reset/{jws}?token=abc") == (
        "https://app.example.com/reset/[REDACTED]"
    )
    assert r.header("x-envoy-original-path", "/login?code=SECRET") == "/login"
    assert r.header("x-forwarded-uri", "/a;jsessionid=S?x=1") == "/a;[REDACTED]"
