"""An OTLP/gRPC trace receiver (PyPI grpcio + opentelemetry-proto) for ringside's tracing tests:
the collector end of `TraceService/Export`, decoding each request with the OpenTelemetry
project's own generated protobuf classes.

Usage: python receiver.py [--port P] [--host 127.0.0.1]
Prints `READY port=P` once listening, then one JSON line per span received:
{"service": ..., "trace_id": hex, "span_id": hex, "parent_span_id": hex ("" for a root),
 "name": ..., "kind": int, "start": ns, "end": ns, "status_code": int, "attributes": {...}}
Exits 0 on SIGTERM or SIGINT.
"""
import argparse
import json
import os
import signal
import sys
from concurrent import futures

# opentelemetry-proto lives in .cache/otlp, apart from the venv: xds-protos installs an older
# copy of the same opentelemetry/proto files there (scripts/install-test-deps).
OTLP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", ".cache", "otlp")
if not os.path.isdir(os.path.join(OTLP, "opentelemetry", "proto")):
    sys.exit(f"receiver.py: {os.path.normpath(OTLP)} is missing: run scripts/install-test-deps")
sys.path.insert(0, OTLP)

import grpc  # noqa: E402
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc  # noqa: E402


def value(v):
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


def attributes(kvs):
    return {kv.key: value(kv.value) for kv in kvs}


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def Export(self, request, context):
        for rs in request.resource_spans:
            service = attributes(rs.resource.attributes).get("service.name")
            for ss in rs.scope_spans:
                for s in ss.spans:
                    line = {
                        "service": service,
                        "scope": ss.scope.name,
                        "trace_id": s.trace_id.hex(),
                        "span_id": s.span_id.hex(),
                        "parent_span_id": s.parent_span_id.hex(),
                        "name": s.name,
                        "kind": s.kind,
                        "start": s.start_time_unix_nano,
                        "end": s.end_time_unix_nano,
                        "status_code": s.status.code,
                        "attributes": attributes(s.attributes),
                    }
                    print(json.dumps(line), flush=True)
        return trace_service_pb2.ExportTraceServiceResponse()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--host", default="127.0.0.1")
    args = p.parse_args()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Receiver(), server)
    port = server.add_insecure_port(f"{args.host}:{args.port}")
    server.start()
    print(f"READY port={port}", flush=True)

    def stop(*_):
        server.stop(0)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
