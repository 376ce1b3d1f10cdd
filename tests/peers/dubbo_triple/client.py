"""A Dubbo3 Triple client from the Python Dubbo SDK (PyPI apache-dubbo==3.0.0b1) calling the
Greeter of tests/peers/grpc/helloworld.proto directly (tri://host:port/service, no registry).
Same CLI and JSON line as tests/peers/grpc/client.py:

Usage: python client.py --target host:port [--call unary|server_stream|client_stream|bidi]
       [--count N] [--payload-bytes B] [--timeout-s T] [--metadata k=v]... [--name NAME]
       [--service helloworld.Greeter]
Prints one JSON line {"ok", "code", "code_number", "details", "replies", "payload_ok",
"trailers", "elapsed_ms"} and exits 0 when ok, 1 otherwise.

What the SDK lacks, and how this client makes up for it (each by wrapping one SDK method):
- it sends no tri-service-version / tri-service-group / grpc-timeout / custom headers from its
  config ("TODO add more metadata" in TripleInvoker._create_metadata): --metadata pairs and
  grpc-timeout (from --timeout-s) are added to the request headers there;
- it never times a call out: the client waits --timeout-s and reports DEADLINE_EXCEEDED itself
  (details say "client-side");
- a streaming call's non-OK status is swallowed (the read stream just ends) and trailers are not
  exposed: the listeners' on_close is wrapped to keep the status and trailers;
- it cannot connect lazily: no server -> the SDK raises RemotingError at construction (after
  its own 3 s connect timeout), reported as UNAVAILABLE (14) with the SDK's message.
Left as the SDK does it (a proxy must pass it through): every request stream, unary included,
ends with one extra zero-length gRPC message carrying END_STREAM (done_writing sends
encode(b"")), so a grpcio server counts client_stream --count N as N+1 messages.
"""
import concurrent.futures
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "grpc"))
import stubs  # noqa: E402

pb2, _ = stubs.load()

import dubbo  # noqa: E402
from dubbo.configs import ReferenceConfig  # noqa: E402
from dubbo.protocol.triple.call import client_call  # noqa: E402
from dubbo.protocol.triple.constants import GRpcCode  # noqa: E402
from dubbo.protocol.triple.invoker import TripleInvoker  # noqa: E402

EXTRA_HEADERS = []
TIMEOUT_S = [None]
CLOSES = []  # (status, trailers) of every finished call, in order

_orig_create_metadata = TripleInvoker._create_metadata


def _create_metadata(self, invocation):
    md = _orig_create_metadata(self, invocation)
    for k, v in EXTRA_HEADERS:
        md.attachments[k] = v
    if TIMEOUT_S[0]:
        md.timeout = f"{max(1, int(TIMEOUT_S[0] * 1000))}m"
    return md


TripleInvoker._create_metadata = _create_metadata


def _recording(cls):
    orig = cls.on_close

    def on_close(self, status, trailers):
        CLOSES.append((status, dict(trailers or {})))
        try:
            orig(self, status, trailers)
        except Exception:
            pass  # the SDK's read stream raises after ending itself; the status is kept above

    cls.on_close = on_close


_recording(client_call.FutureToClientCallListenerAdapter)
_recording(client_call.ReadStreamToClientCallListenerAdapter)


class CallFailed(Exception):
    def __init__(self, code, details):
        super().__init__(details)
        self.code, self.details = code, details


def last_close(before):
    """Raises CallFailed if the call that ended after `before` closes failed; returns trailers."""
    if len(CLOSES) <= before:
        return {}
    status, trailers = CLOSES[-1]
    if status.code != GRpcCode.OK:
        raise CallFailed(status.code, status.description or "")
    return {k: v for k, v in trailers.items() if not k.startswith(":")}


def main():
    a, metadata = stubs.client_args()
    EXTRA_HEADERS.extend(metadata)
    TIMEOUT_S[0] = a.timeout_s

    out = stubs.new_outcome()
    ser = pb2.HelloRequest.SerializeToString
    de = pb2.HelloReply.FromString
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)

    def request(seq, count=0):
        return stubs.request(pb2, a, seq, count)

    def timed(fn, deadline):
        try:
            return pool.submit(fn).result(timeout=max(0.0, deadline - time.monotonic()))
        except concurrent.futures.TimeoutError:
            raise CallFailed(GRpcCode.DEADLINE_EXCEEDED, "client-side: no answer within --timeout-s")

    start = time.monotonic()
    try:
        try:
            client = dubbo.Client(ReferenceConfig.from_url(f"tri://{a.target}/{a.service}"))
        except Exception as e:
            raise CallFailed(GRpcCode.UNAVAILABLE, f"{type(e).__name__}: {e}")
        if a.call == "unary":
            call = client.unary("SayHello", ser, de)
            for i in range(max(a.count, 1)):
                req = request(i)
                before = len(CLOSES)
                deadline = time.monotonic() + a.timeout_s
                try:
                    reply = timed(lambda: call(req), deadline)
                except CallFailed:
                    raise
                except Exception:
                    last_close(before)  # raises the status the call closed with
                    raise
                out["trailers"] = last_close(before)
                out["replies"].append(stubs.reply_json(reply))
                out["payload_ok"] &= reply.payload == req.payload
        else:
            before = len(CLOSES)
            deadline = time.monotonic() + a.timeout_s
            if a.call == "server_stream":
                reqs = [request(0, count=a.count)]
                stream = client.server_stream("SayHelloStream", ser, de)(reqs[0])
            elif a.call == "client_stream":
                reqs = [request(i) for i in range(max(a.count, 1))]
                stream = client.client_stream("SayHelloClientStream", ser, de)(iter(reqs))
            else:
                reqs = [request(i) for i in range(max(a.count, 1))]
                stream = client.bi_stream("SayHelloBidi", ser, de)(iter(reqs))
            replies = timed(lambda: list(stream), deadline)
            out["trailers"] = last_close(before)
            for i, reply in enumerate(replies):
                out["replies"].append(stubs.reply_json(reply))
                if a.call == "client_stream":
                    out["payload_ok"] &= reply.received_bytes == sum(len(r.payload) for r in reqs)
                else:
                    want = reqs[0] if a.call == "server_stream" else (reqs[i] if i < len(reqs) else None)
                    out["payload_ok"] &= want is not None and reply.payload == want.payload
    except CallFailed as e:
        out.update(ok=False, code=e.code.name, code_number=e.code.value, details=e.details)
    except Exception as e:  # anything else the SDK raised: reported, not a traceback
        out.update(ok=False, code="UNKNOWN", code_number=2, details=f"{type(e).__name__}: {e}")
    out["elapsed_ms"] = round((time.monotonic() - start) * 1000.0, 3)
    print(json.dumps(out, default=str), flush=True)
    # The SDK's event loop thread never ends by itself.
    os._exit(0 if out["ok"] else 1)


if __name__ == "__main__":
    main()
