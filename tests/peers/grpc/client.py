"""A grpcio (PyPI grpcio==1.85.1) Greeter client over plaintext HTTP/2 (h2c with prior
knowledge: grpcio's insecure channels never use HTTP/1.1 Upgrade), or over TLS with --tls-ca
(mutual with --tls-cert/--tls-key), for ringside's gRPC / Triple tests.

Usage: python client.py --target host:port [--call unary|server_stream|client_stream|bidi]
       [--count N] [--payload-bytes B] [--timeout-s T] [--metadata k=v]... [--name NAME]
       [--service helloworld.Greeter] [--transparent-retries] [--authority A]
       [--vary-metadata KEY]...
--count: unary: N calls one after another on one channel (stops at the first failure);
server_stream: N replies asked for; client_stream and bidi: N requests sent.
Prints one JSON line:
  {"ok": bool, "code": "OK", "code_number": 0, "details": "", "replies": [{"server", "seq",
   "message", "payload_bytes", "received_bytes", "metadata": ["k=v"]}], "payload_ok": bool,
   "trailers": {"k": "v"}, "elapsed_ms": float}
and exits 0 when ok, 1 otherwise.
"""
import json
import sys
import time

import grpc

import stubs

pb2, pb2_grpc = stubs.load()

MAX_MESSAGE = 64 * 1024 * 1024


def main():
    a, metadata = stubs.client_args()
    options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE),
        ("grpc.max_send_message_length", MAX_MESSAGE),
        # Off: a call ringside fails must fail here, not be retried away. With
        # --transparent-retries only calls the server never saw are retried (grpc-core
        # transparent retries: no retry policy is configured).
        ("grpc.enable_retries", 1 if a.transparent_retries else 0),
    ]
    if a.authority:
        options.append(("grpc.default_authority", a.authority))
    if a.tls_ca:
        read = lambda p: open(p, "rb").read() if p else None
        creds = grpc.ssl_channel_credentials(
            root_certificates=read(a.tls_ca),
            private_key=read(a.tls_key),
            certificate_chain=read(a.tls_cert),
        )
        if a.tls_authority:
            options.append(("grpc.ssl_target_name_override", a.tls_authority))
        channel = grpc.secure_channel(a.target, creds, options=options)
    else:
        channel = grpc.insecure_channel(a.target, options=options)
    ser = pb2.HelloRequest.SerializeToString
    de = pb2.HelloReply.FromString

    def method(kind, name):
        return getattr(channel, kind)(f"/{a.service}/{name}", request_serializer=ser,
                                      response_deserializer=de)

    def request(seq, count=0):
        return stubs.request(pb2, a, seq, count)

    out = stubs.new_outcome()
    kw = {"timeout": a.timeout_s, "metadata": metadata}
    start = time.monotonic()
    try:
        if a.call == "unary":
            call_fn = method("unary_unary", "SayHello")
            for i in range(max(a.count, 1)):
                req = request(i)
                if a.vary_metadata:
                    kw["metadata"] = metadata + [(k.lower(), f"v{i}") for k in a.vary_metadata]
                reply, call = call_fn.with_call(req, **kw)
                out["replies"].append(stubs.reply_json(reply))
                out["payload_ok"] &= reply.payload == req.payload
                out["trailers"] = dict(call.trailing_metadata() or ())
                out["initial"] = dict(call.initial_metadata() or ())
        elif a.call == "server_stream":
            req = request(0, count=a.count)
            call = method("unary_stream", "SayHelloStream")(req, **kw)
            for reply in call:
                out["replies"].append(stubs.reply_json(reply))
                out["payload_ok"] &= reply.payload == req.payload
            out["trailers"] = dict(call.trailing_metadata() or ())
            out["initial"] = dict(call.initial_metadata() or ())
        elif a.call == "client_stream":
            reqs = [request(i) for i in range(max(a.count, 1))]
            reply, call = method("stream_unary", "SayHelloClientStream").with_call(iter(reqs), **kw)
            out["replies"].append(stubs.reply_json(reply))
            out["payload_ok"] &= reply.received_bytes == sum(len(r.payload) for r in reqs)
            out["trailers"] = dict(call.trailing_metadata() or ())
            out["initial"] = dict(call.initial_metadata() or ())
        else:
            reqs = [request(i) for i in range(max(a.count, 1))]
            call = method("stream_stream", "SayHelloBidi")(iter(reqs), **kw)
            for i, reply in enumerate(call):
                out["replies"].append(stubs.reply_json(reply))
                out["payload_ok"] &= i < len(reqs) and reply.payload == reqs[i].payload
            out["trailers"] = dict(call.trailing_metadata() or ())
            out["initial"] = dict(call.initial_metadata() or ())
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
