"""Tracing: a real server exports one span per Check over OTLP/HTTP to a real receiver, continuing the
trace the request carries (W3C traceparent, B3), with decision attributes and no secrets, and the trace
id lands in the decision log."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import yaml

from ext_authz.config import parse_settings
from ext_authz.errors import ConfigError
from ext_authz.settings import Settings
from tests.component.checkreq import check_request
from tests.component.test_server import Running
from tests.component.test_streams import start
from tests.otlp import OtlpReceiver, ReceivedSpan
from tests.waiting import until

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
SERVER = 2  # SpanKind.SPAN_KIND_SERVER in OTLP


@pytest.fixture
def otlp() -> Iterator[OtlpReceiver]:
    r = OtlpReceiver().start()
    yield r
    r.stop()


@pytest.fixture
async def traced(demo_dir: Path, tmp_path: Path, otlp: OtlpReceiver) -> AsyncIterator[Running]:
    r = await start(
        demo_dir,
        tmp_path,
        tracing={"endpoint": otlp.endpoint, "flush_interval": "50ms", "service_name": "authz-test"},
    )
    yield r
    await r.channel.close()
    await r.server.stop(0)


def records(r: Running) -> list[dict[str, object]]:
    return [json.loads(line) for line in r.log.getvalue().splitlines() if line.startswith("{")]


async def one_span(otlp: OtlpReceiver, trace_id: str) -> ReceivedSpan:
    await until(lambda: bool(otlp.by_trace(trace_id)), f"a span of trace {trace_id}")
    (span,) = otlp.by_trace(trace_id)
    return span


async def test_a_check_continues_the_w3c_trace(traced: Running, demo_dir: Path, otlp: OtlpReceiver) -> None:
    req = check_request(
        demo_dir, workload="frontend", headers={"traceparent": f"00-{TRACE}-{PARENT}-01", "tracestate": "a=b"}
    )
    await traced.stub.Check(req)
    span = await one_span(otlp, TRACE)
    assert span.parent_span_id == PARENT and span.kind == SERVER
    assert span.name == "envoy.service.auth.v3.Authorization/Check"
    assert span.attributes["ext_authz.decision"] == "allow"
    assert span.attributes["ext_authz.status"] == 200
    assert span.attributes["ext_authz.rule"] == "frontend-reads"
    assert span.attributes["ext_authz.credential_kinds"] == ["x509_svid"]
    assert span.attributes["url.path"] == "/api/orders" and span.attributes["http.request.method"] == "GET"
    assert span.resource["service.name"] == "authz-test"
    assert otlp.content_types == {"application/x-protobuf"}
    (rec,) = records(traced)
    assert rec["trace_id"] == TRACE
    assert span.attributes["ext_authz.decision_id"] == rec["decision_id"]


async def test_b3_headers_are_continued(traced: Running, demo_dir: Path, otlp: OtlpReceiver) -> None:
    multi = {"x-b3-traceid": "a" * 32, "x-b3-spanid": "b" * 16, "x-b3-sampled": "1"}
    await traced.stub.Check(check_request(demo_dir, workload="frontend", headers=multi))
    assert (await one_span(otlp, "a" * 32)).parent_span_id == "b" * 16
    single = {"b3": f"{'c' * 32}-{'d' * 16}-1"}
    await traced.stub.Check(check_request(demo_dir, workload="billing", headers=single))
    span = await one_span(otlp, "c" * 32)
    assert span.parent_span_id == "d" * 16
    assert (
        span.attributes["ext_authz.decision"] == "deny" and span.attributes["ext_authz.reason"] == "no_rule"
    )


async def test_traceparent_wins_over_b3(traced: Running, demo_dir: Path, otlp: OtlpReceiver) -> None:
    both = {"traceparent": f"00-{TRACE}-{PARENT}-01", "x-b3-traceid": "e" * 32, "x-b3-spanid": "f" * 16}
    await traced.stub.Check(check_request(demo_dir, workload="frontend", headers=both))
    assert (await one_span(otlp, TRACE)).parent_span_id == PARENT
    assert otlp.by_trace("e" * 32) == []


async def test_no_or_malformed_context_starts_a_new_trace(
    traced: Running, demo_dir: Path, otlp: OtlpReceiver
) -> None:
    await traced.stub.Check(check_request(demo_dir, workload="frontend"))
    await traced.stub.Check(
        check_request(demo_dir, workload="frontend", headers={"traceparent": "00-zz-not-a-trace-01"})
    )
    await until(lambda: len(records(traced)) == 2, "two decision records")
    ids = [str(r["trace_id"]) for r in records(traced)]
    assert len(set(ids)) == 2 and all(len(i) == 32 and int(i, 16) for i in ids)
    for trace_id in ids:
        span = await one_span(otlp, trace_id)
        assert span.parent_span_id == ""


async def test_an_unsampled_request_exports_nothing(
    traced: Running, demo_dir: Path, otlp: OtlpReceiver
) -> None:
    """The caller's sampling decision is kept: flags 00 is not recorded (but the log has its trace id)."""
    unsampled = "1" * 32
    await traced.stub.Check(
        check_request(demo_dir, workload="frontend", headers={"traceparent": f"00-{unsampled}-{PARENT}-00"})
    )
    sampled = "2" * 32
    await traced.stub.Check(
        check_request(demo_dir, workload="frontend", headers={"traceparent": f"00-{sampled}-{PARENT}-01"})
    )
    await one_span(otlp, sampled)  # exported after the unsampled one: had it been exported, it is here
    assert otlp.by_trace(unsampled) == []
    assert [r["trace_id"] for r in records(traced)] == [unsampled, sampled]


async def test_spans_carry_no_secrets(traced: Running, demo_dir: Path, otlp: OtlpReceiver) -> None:
    token = (demo_dir / "tokens/alice.jwt").read_text().strip()
    req = check_request(
        demo_dir,
        token=token,
        path="/user/profile;jsessionid=s3cret-matrix?access_token=s3cret-query",
        listener="edge",
        headers={"traceparent": f"00-{TRACE}-{PARENT}-01", "cookie": "session=s3cret-cookie"},
    )
    await traced.stub.Check(req)
    span = await one_span(otlp, TRACE)
    assert span.attributes["ext_authz.decision"] == "allow"
    assert span.attributes["url.path"] == "/user/profile;[REDACTED]"
    dumped = json.dumps([span.attributes, span.resource])
    for secret in (token, token.split(".")[1], "s3cret-query", "s3cret-matrix", "s3cret-cookie", "alice"):
        assert secret not in dumped


async def test_spans_are_flushed_at_stop(demo_dir: Path, tmp_path: Path, otlp: OtlpReceiver) -> None:
    r = await start(demo_dir, tmp_path, tracing={"endpoint": otlp.endpoint, "flush_interval": "60s"})
    try:
        await r.stub.Check(
            check_request(demo_dir, workload="frontend", headers={"traceparent": f"00-{TRACE}-{PARENT}-01"})
        )
    finally:
        await r.channel.close()
        await r.server.stop(0)
    assert len(otlp.by_trace(TRACE)) == 1  # a 60 s batch, yet exported by the shutdown


async def test_a_collector_that_is_down_never_fails_a_check(demo_dir: Path, tmp_path: Path) -> None:
    gone = OtlpReceiver().start()
    endpoint = gone.endpoint
    gone.stop()
    r = await start(
        demo_dir, tmp_path, tracing={"endpoint": endpoint, "flush_interval": "50ms", "timeout": "1s"}
    )
    try:
        for _ in range(20):
            resp = await r.stub.Check(check_request(demo_dir, workload="frontend"))
            assert resp.status.code == 0
    finally:
        await r.channel.close()
        await r.server.stop(0)


def test_tracing_settings_are_checked(tmp_path: Path) -> None:
    def parse(tracing: dict[str, object]) -> Settings:
        return parse_settings(yaml.safe_dump({"allow_empty": True, "tracing": tracing}), tmp_path / "c.yaml")

    with pytest.raises(ConfigError, match=r"tracing\.endpoint"):
        parse({"endpoint": "collector:4318"})
    with pytest.raises(ConfigError, match=r"tracing\.sample_ratio"):
        parse({"endpoint": "http://127.0.0.1:4318/v1/traces", "sample_ratio": 2})
    ok = parse({"endpoint": "http://127.0.0.1:4318/v1/traces"})
    assert ok.tracing is not None and ok.tracing.sample_ratio == 1.0
    # credentials or a query in the URL would be logged with every failed export
    for url in ("https://user:pw@collector/v1/traces", "https://collector/v1/traces?api_key=k"):
        with pytest.raises(ConfigError, match=r"tracing\.endpoint"):
            parse({"endpoint": url})
    # spans carry paths and decisions: plaintext across a network only when said
    with pytest.raises(ConfigError, match="plaintext"):
        parse({"endpoint": "http://otel-collector.monitoring:4318/v1/traces"})
    assert parse({"endpoint": "http://otel-collector.monitoring:4318/v1/traces", "plaintext": True}).tracing
    assert parse({"endpoint": "https://otel-collector.monitoring:4318/v1/traces"}).tracing


def test_only_bounded_trace_headers_reach_the_propagators() -> None:
    """OpenTelemetry's tracestate split is quadratic in a run of blanks (40,000 spaces: seconds): an
    oversized trace header is dropped unread, and no other header is handed over."""
    from ext_authz.observe.tracing import TRACE_HEADERS, trace_headers

    huge = dict.fromkeys(TRACE_HEADERS, " " * 40_000)
    assert trace_headers(huge) == {}
    ok = {"traceparent": f"00-{TRACE}-{PARENT}-01", "tracestate": "a=b", "authorization": "Bearer x"}
    assert trace_headers(ok) == {"traceparent": ok["traceparent"], "tracestate": "a=b"}
    assert all(bound <= 512 for bound in TRACE_HEADERS.values())


async def test_a_hostile_tracestate_is_ignored_and_never_logged(
    traced: Running, demo_dir: Path, otlp: OtlpReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "eyJhbGciOiJSUzI1NiJ9.c2VjcmV0.c2ln"
    for tracestate in (" " * 40_000 + "a=b", f"bad key={secret}"):
        await traced.stub.Check(
            check_request(
                demo_dir,
                workload="frontend",
                headers={"traceparent": f"00-{TRACE}-{PARENT}-01", "tracestate": tracestate},
            )
        )
    await until(lambda: len(otlp.by_trace(TRACE)) == 2, "both spans, continuing the traceparent")
    assert secret not in caplog.text


async def test_callers_cannot_force_sampling_when_told_not_to(
    demo_dir: Path, tmp_path: Path, otlp: OtlpReceiver
) -> None:
    """follow_caller_sampling: false with sample_ratio 0: a request that says sampled=1 is not recorded,
    yet its trace id is still the log's (the trace is continued, not recorded)."""
    r = await start(
        demo_dir,
        tmp_path,
        tracing={
            "endpoint": otlp.endpoint,
            "flush_interval": "50ms",
            "sample_ratio": 0,
            "follow_caller_sampling": False,
        },
    )
    try:
        await r.stub.Check(
            check_request(demo_dir, workload="frontend", headers={"traceparent": f"00-{TRACE}-{PARENT}-01"})
        )
    finally:
        await r.channel.close()
        await r.server.stop(0)  # flushes whatever was recorded
    assert otlp.by_trace(TRACE) == []
    assert [rec["trace_id"] for rec in records(r)] == [TRACE]
