"""The Python floor: a minimal allow-all ext_authz server (what any Python authorizer costs).

`floor_server.py PORT [grpcio|native]`: on grpc.aio (the default), or on pygrpc-native.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import grpc
from envoy.service.auth.v3 import external_auth_pb2_grpc
from envoy.service.auth.v3.external_auth_pb2 import CheckResponse, OkHttpResponse
from google.rpc.status_pb2 import Status

_OK = CheckResponse(status=Status(code=0), ok_response=OkHttpResponse())


class AllowAll(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    async def Check(self, request: Any, context: Any) -> Any:
        return _OK


async def main(port: int, transport: str) -> None:
    if transport == "native":  # the same servicer behind pygrpc-native's Rust HTTP/2 front
        import pygrpc_native.aio

        server = pygrpc_native.aio.server()
    else:
        server = grpc.aio.server()
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(AllowAll(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "grpcio"))
