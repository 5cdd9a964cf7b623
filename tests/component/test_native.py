"""``transport: native``: Check answered from pygrpc-native's batch callback (serve/native.py).

A real pygrpc-native front on a unix socket, called by a real grpc client: the direct path is the one
taken, and it refuses what pygrpc-native's own path refuses, the same way.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator
from pathlib import Path

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


def native_config(demo_dir: Path, tmp_path: Path) -> Path:
    return write_config(demo_dir, tmp_path, listen=f"unix://{tmp_path}/check.sock", transport="native")


@pytest.fixture
async def native(demo_dir: Path, tmp_path: Path) -> AsyncIterator[Running]:
    r = await start(
        write_config(demo_dir, tmp_path, listen=f"unix://{tmp_path}/check.sock", transport="native")
    )
    yield r
    await r.channel.close()
    await r.server.stop(0)


def raw_check(r: Running) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
    """Check without the client's serializer: any bytes go out as the request."""
    return r.channel.unary_unary(CHECK, request_serializer=None, response_deserializer=None)


def direct(r: Running) -> int:
    server = r.server.grpc
    assert isinstance(server, NativeServer)
    return server.direct_answers


async def test_check_is_answered_from_the_batch_callback(native: Running, demo_dir: Path) -> None:
    frontend = check_request(demo_dir, workload="frontend")
    nobody = check_request(demo_dir)
    answers = await asyncio.gather(*(native.stub.Check(frontend if i % 2 else nobody) for i in range(40)))
    assert [a.status.code for a in answers] == [16 if i % 2 == 0 else 0 for i in range(40)]
    ids = {a.dynamic_metadata.fields["decision_id"].string_value for a in answers}
    assert len(ids) == 40  # one decision each, none answered twice or crossed
    assert direct(native) == 40
    health = await native.health.Check(health_pb2.HealthCheckRequest())
    assert (
        health.status == health_pb2.HealthCheckResponse.SERVING
    )  # SERVING: the other methods still take pygrpc-native's path
    await until(lambda: len(native.records()) == 40, "every decision recorded")


async def test_a_request_over_the_receive_limit_is_resource_exhausted(native: Running) -> None:
    limits = native.runtime.engine.config.limits
    largest = limits.max_header_bytes + limits.max_body_bytes + 64 * 1024
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await raw_check(native)(b"\x00" * (largest + 1))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"({largest + 1} vs. {largest})" in (err.value.details() or "")
    assert direct(native) == 1
    assert native.records() == []  # refused before it was a request: nothing decided


async def test_bytes_that_are_not_a_checkrequest_are_refused_without_a_traceback(
    native: Running, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, "ext_authz"), pytest.raises(grpc.aio.AioRpcError) as err:
        await raw_check(native)(b"\xff\xff\xff\xff")
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert "not a CheckRequest" in caplog.text and "Traceback" not in caplog.text
    assert direct(native) == 1


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
        await native.stub.Check(frontend)
    assert err.value.code() == grpc.StatusCode.INTERNAL
    await until(lambda: len(native.records()) == 1, "the fault recorded")
    (rec,) = native.records()
    assert rec["decision"] == "error" and rec["fault"] == "RuntimeError"
    assert f"(decision {rec['decision_id']})" in (err.value.details() or "")
    native.runtime.engine = good
    assert (await native.stub.Check(frontend)).status.code == 0


async def test_a_fault_outside_the_decision_fails_that_call_only(
    native: Running, demo_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception that escapes answer() (here from recording it) must not leave the rest of the
    batch unanswered: each call gets INTERNAL, and Checks after it are answered again."""
    observe = native.runtime.metrics.observe

    def broken(*args: object) -> None:
        raise RuntimeError("metrics down")

    monkeypatch.setattr(native.runtime.metrics, "observe", broken)
    frontend = check_request(demo_dir, workload="frontend")
    calls = (native.stub.Check(frontend, timeout=10) for _ in range(8))  # unanswered: DEADLINE_EXCEEDED
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(r, grpc.aio.AioRpcError) and r.code() == grpc.StatusCode.INTERNAL for r in results)
    monkeypatch.setattr(native.runtime.metrics, "observe", observe)
    assert (await native.stub.Check(frontend)).status.code == 0


async def test_without_the_internals_it_reads_check_takes_pygrpc_natives_own_path(
    demo_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Were a pygrpc-native release to rename what serve/native.py reads, Check still works (and the
    operator is told it is slower)."""
    monkeypatch.setattr(native_module, "_INTERNALS", (*native_module._INTERNALS, "_renamed_in_a_release"))
    r = await start(
        write_config(demo_dir, tmp_path, listen=f"unix://{tmp_path}/check.sock", transport="native")
    )
    try:
        assert "has no _renamed_in_a_release: Check is served through its grpc.aio path" in caplog.text
        resp = await r.stub.Check(check_request(demo_dir, workload="frontend"))
        assert resp.status.code == 0
        assert direct(r) == 0
    finally:
        await r.channel.close()
        await r.server.stop(0)
