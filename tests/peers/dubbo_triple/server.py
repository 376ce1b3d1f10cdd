"""A Dubbo3 Triple server from the Python Dubbo SDK (PyPI apache-dubbo==3.0.0b1), serving the
Greeter of tests/peers/grpc/helloworld.proto with protobuf (de)serializer functions, as the SDK's
samples do. Same CLI and conventions as tests/peers/grpc/server.py:

Usage: python server.py --port P [--host 127.0.0.1] [--name NAME] [--delay-ms MS]
       [--service helloworld.Greeter]
Prints `READY port=P name=NAME` once listening; exits 0 on SIGTERM or SIGINT. Every reply carries
--name and the tri-*/x-* request headers; unary, server, client and bidi streaming.

The SDK does not hand request headers to handlers; on_headers is wrapped below to keep them in a
thread-local for the handler that runs on the SDK's executor thread (reading only). A handler
failure becomes grpc-status INTERNAL (13), the SDK's only error path.
"""
import os
import signal
import socket
import sys
import threading
import time

# SIGTERM/SIGINT are blocked in every thread (threads inherit the mask, so block before the SDK
# starts any) and taken synchronously by sigwait in main(): no Python-level handler that depends on
# which thread the kernel picks or on the main thread getting the GIL back.
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "grpc"))
import stubs  # noqa: E402

pb2, _ = stubs.load()

import dubbo  # noqa: E402
from dubbo.configs import ServiceConfig  # noqa: E402
from dubbo.proxy.handlers import RpcMethodHandler, RpcServiceHandler  # noqa: E402
from dubbo.protocol.triple.call.server_call import TripleServerCall  # noqa: E402

_request = threading.local()
_orig_on_headers = TripleServerCall.on_headers


def _on_headers(self, headers):
    runner = self._method_runner
    seen = headers

    def run():
        _request.headers = seen
        runner.run()

    self._executor.submit(run)


TripleServerCall.on_headers = _on_headers


def seen_metadata():
    headers = getattr(_request, "headers", None) or {}
    items = headers.items() if hasattr(headers, "items") else headers
    return sorted(
        f"{k}={v}" for k, v in items
        if isinstance(k, str) and (k.startswith("tri-") or k.startswith("x-"))
    )


class Greeter:
    def __init__(self, args):
        self.name = args.name
        self.delay = args.delay_ms / 1000.0

    def _wait(self):
        if self.delay:
            time.sleep(self.delay)

    def reply(self, req, seq, message=None, received=None, payload=None):
        return pb2.HelloReply(
            message=message or f"Hello {req.name}",
            payload=req.payload if payload is None else payload,
            server=self.name,
            seq=seq,
            metadata=seen_metadata(),
            received_bytes=len(req.payload) if received is None else received,
        )

    def say_hello(self, req):
        self._wait()
        return self.reply(req, 0)

    def say_hello_stream(self, stream):
        req = stream.read()
        self._wait()
        return [self.reply(req, i) for i in range(max(req.count, 1))]

    def say_hello_client_stream(self, stream):
        names, received = [], 0
        for req in stream:
            names.append(req.name)
            received += len(req.payload)
        self._wait()
        return pb2.HelloReply(message="Hello " + ",".join(names), server=self.name,
                              seq=len(names), metadata=seen_metadata(), received_bytes=received)

    def say_hello_bidi(self, stream):
        self._wait()
        i = 0
        for req in stream:
            stream.write(self.reply(req, i))
            i += 1
        # handle_result: a bidi method's return value is written as one more message; write
        # nothing more (an empty iterable).
        return []


def free(host, port):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        return s.getsockname()[1]


def wait_listening(host, port, within=10.0):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=0.2).close()
            return True
        except OSError:
            time.sleep(0.02)
    return False


def main():
    p = stubs.server_args("dubbo-triple-server")
    p.add_argument("--service", default="helloworld.Greeter")
    a = p.parse_args()
    port = a.port or free(a.host, 0)
    g = Greeter(a)
    de = pb2.HelloRequest.FromString
    ser = pb2.HelloReply.SerializeToString
    handlers = [
        RpcMethodHandler.unary(g.say_hello, "SayHello", de, ser),
        RpcMethodHandler.server_stream(g.say_hello_stream, "SayHelloStream", de, ser),
        RpcMethodHandler.client_stream(g.say_hello_client_stream, "SayHelloClientStream", de, ser),
        RpcMethodHandler.bi_stream(g.say_hello_bidi, "SayHelloBidi", de, ser),
    ]
    service = RpcServiceHandler(service_name=a.service, method_handlers=handlers)
    dubbo.Server(ServiceConfig(service_handler=service, host=a.host, port=port)).start()
    if not wait_listening(a.host, port):
        print(f"not listening on {a.host}:{port}", file=sys.stderr, flush=True)
        os._exit(1)
    print(f"READY port={port} name={a.name}", flush=True)
    signal.sigwait(STOP_SIGNALS)
    # The SDK has no stop(); its event loop thread would keep the process alive.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
