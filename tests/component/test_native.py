"""``transport: native``: Check answered from pygrpc-native's batch callback (serve/native.py).

A real pygrpc-native front on a unix socket, called by a real grpc client: the direct path is the one
taken, and it refuses what pygrpc-native's own path refuses, the same way. Every call has a deadline,
so a call left unanswered fails the test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2

import ext_authz.serve.native as native_module
from ext_authz.serve.check import AUTH_SERVICE
from ext_authz.serve.native import NativeServer
from tests.component.checkreq import check_request
from tests.component.test_server import Running, start, write_config
from tests.waiting import until

CHECK = f"/{AUTH_SERVICE}/Check"
T = 10  # seconds: the deadline of every call here


def native_config(demo_dir: Path, tmp_path: Path) -> Path:
    return write_config(demo_dir, tmp_path, listen=f"unix://{tmp_path}/check.sock", transport="native")


@pytest.fixture
async def native(demo_dir: Path, tmp_path: Path) -> AsyncIterator[Running]:
    r = await start(native_config(demo_dir, tmp_path))
    yield r
    await r.channel.close()
    await r.server.stop(0)


def raw_check(r: Running) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
    """Check without the client's serializer: any bytes go out as the request."""
    return r.channel.unary_unary(CHECK, request_serializer=None, response_deserializer=None)


def server_of(r: Running) -> NativeServer:
    server = r.server.grpc
    assert isinstance(server, NativeServer)
    return server


async def test_check_is_answered_from_the_batch_callback(native: Running, demo_dir: Path) -> None:
    frontend = check_request(demo_dir, workload="frontend")
    nobody = check_request(demo_dir)
    calls = (native.stub.Check(frontend if i % 2 else nobody, timeout=T) for i in range(40))
    answers = await asyncio.gather(*calls)
    assert [a.status.code for a in answers] == [16 if i % 2 == 0 else 0 for i in range(40)]
    ids = {a.dynamic_metadata.fields["decision_id"].string_value for a in answers}
    assert len(ids) == 40  # one decision each, none answered twice or crossed
    assert server_of(native).direct_answers == 40
    health = await native.health.Check(health_pb2.HealthCheckRequest(), timeout=T)
    assert health.status == health_pb2.HealthCheckResponse.SERVING  # health takes pygrpc-native's path
    await until(lambda: len(native.records()) == 40, "every decision recorded")


async def test_a_request_over_the_receive_limit_is_resource_exhausted(native: Running) -> None:
    limits = native.runtime.engine.config.limits
    largest = limits.max_header_bytes + limits.max_body_bytes + 64 * 1024
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await raw_check(native)(b"\x00" * (largest + 1), timeout=T)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"({largest + 1} vs. {largest})" in (err.value.details() or "")
    assert server_of(native).direct_answers == 1
    assert native.records() == []  # refused before it was a request: nothing decided


async def test_bytes_that_are_not_a_checkrequest_are_refused_with_one_warning_and_no_traceback(
    native: Running, caplog: pytest.LogCaptureFixture
) -> None:
    for _ in range(5):
        with caplog.at_level(logging.WARNING, "ext_authz"), pytest.raises(grpc.aio.AioRpcError) as err:
            await raw_check(native)(b"\xff\xff\xff\xff", timeout=T)
        assert err.value.code() == grpc.StatusCode.INTERNAL
    warnings = [r.getMessage() for r in caplog.records if "not a CheckRequest" in r.getMessage()]
    assert warnings == ["Check refused 1 request(s) that were not a CheckRequest"]  # not one per request
    assert "Traceback" not in caplog.text
    assert server_of(native).direct_answers == 5


class _ExplodingPolicy:
    uses_cel = False

    def evaluate(self, *args: object) -> None:
        raise RuntimeError("boom")


async def test_a_fault_is_internal_names_its_decision_and_the_next_check_is_answered(
    native: Running, demo_dir: Path
) -> None:
    good = native.runtime.engine
    native.runtime.engine = dataclasses.replace(good, policy=_ExplodingPolicy())  # type: ignore[arg-type]
    frontend = check_request(demo_dir, workload="frontend")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await native.stub.Check(frontend, timeout=T)
    assert err.value.code() == grpc.StatusCode.INTERNAL
    await until(lambda: len(native.records()) == 1, "the fault recorded")
    (rec,) = native.records()
    assert rec["decision"] == "error" and rec["fault"] == "RuntimeError"
    assert f"(decision {rec['decision_id']})" in (err.value.details() or "")
    native.runtime.engine = good
    assert (await native.stub.Check(frontend, timeout=T)).status.code == 0


async def test_a_failing_recorder_changes_no_answer_and_skips_no_other_record(
    native: Running, demo_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("metrics down")

    monkeypatch.setattr(native.runtime.metrics, "observe", broken)
    resp = await native.stub.Check(check_request(demo_dir, workload="frontend"), timeout=T)
    assert resp.status.code == 0
    await until(lambda: len(native.records()) == 1, "the decision still recorded")
    assert native.records()[0]["decision_id"] == resp.dynamic_metadata.fields["decision_id"].string_value
    assert "the metrics failed" in caplog.text


async def test_an_exception_out_of_answer_fails_that_call_and_the_batch_goes_on(
    native: Running, demo_dir: Path
) -> None:
    """Whatever escapes the answering function (it should only raise CheckFailed) must not leave the
    rest of the batch unanswered: each call gets INTERNAL, and Checks after it are answered again."""
    server = server_of(native)
    answer = server._answer
    calls = 0

    def broken(request: Any) -> bytes:
        nonlocal calls
        calls += 1
        raise RuntimeError("a bug")

    server._answer = broken
    frontend = check_request(demo_dir, workload="frontend")
    results = await asyncio.gather(
        *(native.stub.Check(frontend, timeout=T) for _ in range(8)), return_exceptions=True
    )
    assert calls == 8
    assert all(isinstance(r, grpc.aio.AioRpcError) and r.code() == grpc.StatusCode.INTERNAL for r in results)
    assert {r.details() for r in results if isinstance(r, grpc.aio.AioRpcError)} == {
        "ext-authz internal error"
    }
    server._answer = answer
    assert (await native.stub.Check(frontend, timeout=T)).status.code == 0


async def test_a_check_while_stopping_is_unavailable(native: Running, demo_dir: Path) -> None:
    server = server_of(native)
    server._stopping = True  # what stop() sets first; its path refuses new calls
    try:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await native.stub.Check(check_request(demo_dir, workload="frontend"), timeout=T)
    finally:
        server._stopping = False
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert server.direct_answers == 0 and native.records() == []


async def test_without_the_internals_it_reads_check_takes_pygrpc_natives_own_path(
    demo_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Were a pygrpc-native release to rename what serve/native.py reads, Check still works (and the
    operator is told it is slower)."""
    monkeypatch.setattr(native_module, "_INTERNALS", (*native_module._INTERNALS, "_renamed_in_a_release"))
    r = await start(native_config(demo_dir, tmp_path))
    try:
        assert "has no _renamed_in_a_release: Check is served through its grpc.aio path" in caplog.text
        resp = await r.stub.Check(check_request(demo_dir, workload="frontend"), timeout=T)
        assert resp.status.code == 0
        assert server_of(r).direct_answers == 0
    finally:
        await r.channel.close()
        await r.server.stop(0)
