"""An external authorization server (envoy.service.auth.v3.Authorization, from PyPI
xds-protos) over plaintext HTTP/2 for ringside's ext_authz tests.

Usage: python ext_authz_server.py --port P --record FILE
Prints `READY port=P` once listening. Each CheckRequest is appended to FILE as one JSON line
(protobuf's JSON mapping with the proto field names), then answered by the request's `x-authz`
header:
  allow       OK: adds `x-authz-added: yes` (APPEND_IF_EXISTS_OR_ADD) and sets
              `x-authz-set: set` (OVERWRITE_IF_EXISTS_OR_ADD) on the request, removes
              `x-remove-me`, adds `x-authz-resp: r1` to the response
  deny        denied: HTTP 401, header `x-deny-reason: nope`, body `denied by test`
  deny-plain  denied with no http_response (Envoy: 403, no body)
  error       the call fails UNAVAILABLE (a gRPC error: status_on_error)
  slow        answered OK after 1.5 s (past the filter's timeout)
  (absent)    OK, nothing changed
A connection's CheckRequest (the network filter: no request attributes) is answered by its
source address: 127.0.0.2 allow, 127.0.0.3 deny, 127.0.0.4 error, 127.0.0.5 slow, any other OK.
Exits 0 on SIGTERM or SIGINT.
"""
import argparse
import asyncio
import json
import signal

import grpc
from google.protobuf import json_format
from google.rpc import code_pb2, status_pb2
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2 as auth_pb2
from envoy.service.auth.v3 import external_auth_pb2_grpc as auth_grpc
from envoy.type.v3 import http_status_pb2


TCP_BY_SOURCE = {"127.0.0.2": "allow", "127.0.0.3": "deny", "127.0.0.4": "error", "127.0.0.5": "slow"}


def header(key, value, action=None):
    h = base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=key, value=value))
    if action is not None:
        h.append_action = action
    return h


class Authz(auth_grpc.AuthorizationServicer):
    def __init__(self, record):
        self.record = record

    async def Check(self, request, context):
        with open(self.record, "a") as f:
            f.write(json.dumps(json_format.MessageToDict(request, preserving_proto_field_name=True)) + "\n")
        if request.attributes.request.HasField("http"):
            what = request.attributes.request.http.headers.get("x-authz", "")
        else:
            # A connection's check (the network filter): by the caller's source address.
            what = TCP_BY_SOURCE.get(request.attributes.source.address.socket_address.address, "")
        if what == "allow":
            ok = auth_pb2.OkHttpResponse(
                headers=[
                    header("x-authz-added", "yes"),
                    header("x-authz-set", "set", base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD),
                ],
                headers_to_remove=["x-remove-me"],
                response_headers_to_add=[header("x-authz-resp", "r1")],
            )
            return auth_pb2.CheckResponse(status=status_pb2.Status(code=code_pb2.OK), ok_response=ok)
        if what == "deny":
            denied = auth_pb2.DeniedHttpResponse(
                status=http_status_pb2.HttpStatus(code=http_status_pb2.Unauthorized),
                headers=[header("x-deny-reason", "nope")],
                body="denied by test",
            )
            return auth_pb2.CheckResponse(
                status=status_pb2.Status(code=code_pb2.PERMISSION_DENIED), denied_response=denied
            )
        if what == "deny-plain":
            return auth_pb2.CheckResponse(status=status_pb2.Status(code=code_pb2.PERMISSION_DENIED))
        if what == "error":
            await context.abort(grpc.StatusCode.UNAVAILABLE, "authorizer trouble")
        if what == "slow":
            await asyncio.sleep(1.5)
        return auth_pb2.CheckResponse(status=status_pb2.Status(code=code_pb2.OK))


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--record", required=True)
    args = ap.parse_args()
    server = grpc.aio.server()
    auth_grpc.add_AuthorizationServicer_to_server(Authz(args.record), server)
    port = server.add_insecure_port(f"{args.host}:{args.port}")
    await server.start()
    print(f"READY port={port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for s in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(s, stop.set)
    await stop.wait()
    await server.stop(0.5)


if __name__ == "__main__":
    asyncio.run(main())
