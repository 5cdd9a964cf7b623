"""The Python floor: a minimal allow-all ext_authz server (what any Python authorizer costs).

`floor_server.py PORT [grpcio|native|direct] [MAX_RECEIVE_BYTES]`: on grpc.aio (the default), on
pygrpc-native, or on pygrpc-native with Check answered from its batch callback as ext-authz's
`transport: native` does (serve/native.py): the floor of that path, without its task per call. With
MAX_RECEIVE_BYTES, that is its `grpc.max_receive_message_length` (bench/receive_limit.py).
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import grpc
from google.rpc.status_pb2 import Status

from ext_authz._proto.envoy import external_auth_pb2_grpc
from ext_authz._proto.envoy.external_auth_pb2 import CheckResponse, OkHttpResponse

_OK = CheckResponse(status=Status(code=0), ok_response=OkHttpResponse())
_OK_BYTES = _OK.SerializeToString()


class AllowAll(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    async def Check(self, request: Any, context: Any) -> Any:
        return _OK


async def main(port: int, transport: str, max_receive: int | None) -> None:
    options = [] if max_receive is None else [("grpc.max_receive_message_length", max_receive)]
    server: Any
    if transport == "native":  # the same servicer behind pygrpc-native's Rust HTTP/2 front
        import pygrpc_native.aio

        server = pygrpc_native.aio.server(options=options)
    elif transport == "direct":
        from ext_authz.serve.native import NativeServer

        server = NativeServer(options)
        server.answer_check_with(lambda request: _OK_BYTES)  # parsed, as any authorizer must
    else:
        server = grpc.aio.server(options=options)
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(AllowAll(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    transport = sys.argv[2] if len(sys.argv) > 2 else "grpcio"
    asyncio.run(main(int(sys.argv[1]), transport, int(sys.argv[3]) if len(sys.argv) > 3 else None))
