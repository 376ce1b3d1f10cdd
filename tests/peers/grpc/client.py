"""A grpcio (PyPI grpcio==1.85.1) Greeter client over plaintext HTTP/2 (h2c with prior
knowledge: grpcio's insecure channels never use HTTP/1.1 Upgrade), for ringside's gRPC / Triple
tests.

Usage: python client.py --target host:port [--call unary|server_stream|client_stream|bidi]
       [--count N] [--payload-bytes B] [--timeout-s T] [--metadata k=v]... [--name NAME]
       [--service helloworld.Greeter]
--count: unary: N calls one after another on one channel (stops at the first failure);
server_stream: N replies asked for; client_stream and bidi: N requests sent.
Prints one JSON line:
  {"ok": bool, "code": "OK", "code_number": 0, "details": "", "replies": [{"server", "seq",
   "message", "payload_bytes", "received_bytes", "metadata": ["k=v"]}], "payload_ok": bool,
   "trailers": {"k": "v"}, "elapsed_ms": float}
and exits 0 when ok, 1 otherwise.
"""
import argparse
import json
import sys
import time

import grpc

import stubs

pb2, pb2_grpc = stubs.load()

MAX_MESSAGE = 64 * 1024 * 1024


def payload_of(n, seq):
    base = bytes((i + seq) % 251 for i in range(251))
    return (base * (n // 251 + 1))[:n]


def reply_json(r):
    return {
        "server": r.server,
        "seq": r.seq,
        "message": r.message,
        "payload_bytes": len(r.payload),
        "received_bytes": r.received_bytes,
        "metadata": list(r.metadata),
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--target", required=True)
    p.add_argument("--call", default="unary", choices=["unary", "server_stream", "client_stream", "bidi"])
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--payload-bytes", type=int, default=0)
    p.add_argument("--timeout-s", type=float, default=5.0)
    p.add_argument("--metadata", action="append", default=[], help="k=v, repeatable")
    p.add_argument("--name", default="ringside")
    p.add_argument("--service", default="helloworld.Greeter",
                   help="the service part of :path (another name tests an unknown service)")
    a = p.parse_args()
    metadata = []
    for kv in a.metadata:
        k, sep, v = kv.partition("=")
        if not sep:
            p.error(f"--metadata {kv!r}: want k=v")
        metadata.append((k.lower(), v))

    channel = grpc.insecure_channel(
        a.target,
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
            ("grpc.enable_retries", 0),
        ],
    )
    ser = pb2.HelloRequest.SerializeToString
    de = pb2.HelloReply.FromString

    def method(kind, name):
        return getattr(channel, kind)(f"/{a.service}/{name}", request_serializer=ser,
                                      response_deserializer=de)

    # The requests this call sends, in order, so the echoed payloads can be checked.
    def request(seq, count=0):
        return pb2.HelloRequest(name=f"{a.name}-{seq}" if seq else a.name,
                                payload=payload_of(a.payload_bytes, seq), count=count)

    out = {"ok": True, "code": "OK", "code_number": 0, "details": "", "replies": [],
           "payload_ok": True, "trailers": {}}
    sent = []
    kw = {"timeout": a.timeout_s, "metadata": metadata}
    start = time.monotonic()
    try:
        if a.call == "unary":
            call_fn = method("unary_unary", "SayHello")
            for i in range(max(a.count, 1)):
                req = request(i)
                sent.append(req.payload)
                reply, call = call_fn.with_call(req, **kw)
                out["replies"].append(reply_json(reply))
                out["payload_ok"] &= reply.payload == req.payload
                out["trailers"] = dict(call.trailing_metadata() or ())
        elif a.call == "server_stream":
            req = request(0, count=a.count)
            call = method("unary_stream", "SayHelloStream")(req, **kw)
            for reply in call:
                out["replies"].append(reply_json(reply))
                out["payload_ok"] &= reply.payload == req.payload
            out["trailers"] = dict(call.trailing_metadata() or ())
        elif a.call == "client_stream":
            reqs = [request(i) for i in range(max(a.count, 1))]
            reply, call = method("stream_unary", "SayHelloClientStream").with_call(iter(reqs), **kw)
            out["replies"].append(reply_json(reply))
            out["payload_ok"] &= reply.received_bytes == sum(len(r.payload) for r in reqs)
            out["trailers"] = dict(call.trailing_metadata() or ())
        else:
            reqs = [request(i) for i in range(max(a.count, 1))]
            call = method("stream_stream", "SayHelloBidi")(iter(reqs), **kw)
            for i, reply in enumerate(call):
                out["replies"].append(reply_json(reply))
                out["payload_ok"] &= i < len(reqs) and reply.payload == reqs[i].payload
            out["trailers"] = dict(call.trailing_metadata() or ())
    except grpc.RpcError as e:
        code = e.code()
        out.update(ok=False, code=code.name, code_number=code.value[0], details=e.details() or "")
        try:
            out["trailers"] = dict(e.trailing_metadata() or ())
        except Exception:
            pass
    out["elapsed_ms"] = round((time.monotonic() - start) * 1000.0, 3)
    # Binary trailers (-bin) are bytes; keep the line JSON.
    out["trailers"] = {k: (v if isinstance(v, str) else v.hex()) for k, v in out["trailers"].items()}
    print(json.dumps(out), flush=True)
    channel.close()
    sys.exit(0 if out["ok"] else 1)


if __name__ == "__main__":
    main()
