"""A grpcio (PyPI grpcio==1.85.1) Greeter server over plaintext HTTP/2 (h2c), for ringside's
gRPC / Triple tests.

Usage: python server.py --port P [--host 127.0.0.1] [--name NAME] [--delay-ms MS]
       [--status CODE --message TEXT]
Prints `READY port=P name=NAME` once listening. Every reply carries --name (so a test knows which
upstream answered), the request metadata whose keys start with tri- or x- (and the trace context
keys traceparent, tracestate, b3, and authorization), and echoes the request payload; trailers carry x-server=NAME. --delay-ms sleeps before each reply (deadline tests);
--status makes every call fail with that gRPC status (e.g. NOT_FOUND) after the delay;
--initial-metadata k=v (repeatable) is sent in every call's response headers.
--on-command (retry tests): a SayHello call's metadata says what happens to it: `x-key: K` names
the call (its tries are counted and their arrival times kept, in ms since the server started),
`x-fail-first: N` fails the first N tries of K with UNAVAILABLE (trailers-only, before any
message), `x-hold-ms: M` holds a try that is answered OK for M ms; a call with `x-dump: 1`
gets the arrival times of every key's tries as JSON ({"K": [ms, ...]}) in its reply's message.
Exits 0 on SIGTERM or SIGINT.
"""
import asyncio
import json
import time
import signal
import sys

import grpc

import stubs

pb2, pb2_grpc = stubs.load()

MAX_MESSAGE = 64 * 1024 * 1024
# Trace context headers (W3C, B3 single) echoed too: tracing tests check what the server saw.
TRACE_KEYS = ("traceparent", "tracestate", "b3")


def seen_metadata(context):
    return sorted(
        f"{k}={v}"
        for k, v in context.invocation_metadata()
        if (k.startswith("tri-") or k.startswith("x-") or k in TRACE_KEYS or k == "authorization")
        and not k.endswith("-bin")
    )


class Greeter(pb2_grpc.GreeterServicer):
    def __init__(self, args):
        self.name = args.name
        self.delay = args.delay_ms / 1000.0
        self.status = getattr(grpc.StatusCode, args.status) if args.status else None
        self.message = args.message
        self.initial = tuple(tuple(kv.split("=", 1)) for kv in args.initial_metadata)
        self.on_command = args.on_command
        self.tries = {}
        self.t0 = time.monotonic()

    async def _on_command(self, context):
        """--on-command: records the try; returns the dump to reply with, if asked for."""
        md = dict(context.invocation_metadata())
        if md.get("x-dump") == "1":
            return json.dumps(self.tries)
        key = md.get("x-key")
        if key is None:
            return None
        tries = self.tries.setdefault(key, [])
        tries.append(round((time.monotonic() - self.t0) * 1000.0, 3))
        if len(tries) <= int(md.get("x-fail-first", "0")):
            context.set_trailing_metadata((("x-server", self.name),))
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"try {len(tries)} failed on command")
        hold = int(md.get("x-hold-ms", "0"))
        if hold:
            await asyncio.sleep(hold / 1000.0)
        return None

    async def _before_reply(self, context):
        if self.initial:
            await context.send_initial_metadata(self.initial)
        context.set_trailing_metadata((("x-server", self.name),))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.status is not None:
            await context.abort(self.status, self.message)

    def reply(self, context, req, seq, received=None, message=None):
        return pb2.HelloReply(
            message=message or f"Hello {req.name}",
            payload=req.payload,
            server=self.name,
            seq=seq,
            metadata=seen_metadata(context),
            received_bytes=len(req.payload) if received is None else received,
        )

    async def SayHello(self, request, context):
        if self.on_command:
            dump = await self._on_command(context)
            if dump is not None:
                return self.reply(context, request, 0, message=dump)
        await self._before_reply(context)
        return self.reply(context, request, 0)

    async def SayHelloStream(self, request, context):
        await self._before_reply(context)
        for i in range(max(request.count, 1)):
            yield self.reply(context, request, i)

    async def SayHelloClientStream(self, request_iterator, context):
        names, received = [], 0
        async for req in request_iterator:
            names.append(req.name)
            received += len(req.payload)
        await self._before_reply(context)
        return pb2.HelloReply(
            message="Hello " + ",".join(names),
            server=self.name,
            seq=len(names),
            metadata=seen_metadata(context),
            received_bytes=received,
        )

    async def SayHelloBidi(self, request_iterator, context):
        await self._before_reply(context)
        i = 0
        async for req in request_iterator:
            yield self.reply(context, req, i)
            i += 1


async def serve(args):
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
            ("grpc.so_reuseport", 0),
        ]
    )
    pb2_grpc.add_GreeterServicer_to_server(Greeter(args), server)
    port = server.add_insecure_port(f"{args.host}:{args.port}")
    if port == 0:
        print(f"cannot listen on {args.host}:{args.port}", file=sys.stderr, flush=True)
        sys.exit(1)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"READY port={port} name={args.name}", flush=True)
    await stop.wait()
    await server.stop(grace=0.5)


def main():
    p = stubs.server_args("grpc-server")
    p.add_argument("--status", default=None, help="grpc.StatusCode name every call fails with")
    p.add_argument("--message", default="failed on purpose")
    p.add_argument("--initial-metadata", action="append", default=[], help="k=v, repeatable")
    p.add_argument("--on-command", action="store_true",
                   help="x-key / x-fail-first / x-hold-ms / x-dump metadata (see above)")
    args = p.parse_args()
    if args.status and not hasattr(grpc.StatusCode, args.status):
        p.error(f"--status: no grpc.StatusCode.{args.status}")
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
