"""Many concurrent grpcio (PyPI grpcio==1.85.1) callers on a schedule, for ringside's retry
tests: unary SayHello calls, each started at its own time over one of several channels (h2c).

Usage: python burst_client.py --target host:port --plan PLAN_JSON [--channels N] [--timeout-s T]
PLAN_JSON: [{"at_ms": 0, "metadata": {"x-key": "k1", ...}}, ...]: call i starts at_ms after the
first one, on channel i % N, with that metadata.
Prints one JSON line: [{"code_number": 0, "server": "P", "start_ms": float, "elapsed_ms": float},
...] in plan order, and exits 0.
"""
import argparse
import asyncio
import json
import time

import grpc

import stubs

pb2, pb2_grpc = stubs.load()


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--target", required=True)
    p.add_argument("--plan", required=True)
    p.add_argument("--channels", type=int, default=4)
    p.add_argument("--timeout-s", type=float, default=20.0)
    a = p.parse_args()
    plan = json.loads(a.plan)
    # Off: a call the proxy fails must fail here, not be retried away by grpc-core.
    options = [("grpc.enable_retries", 0)]
    channels = [grpc.aio.insecure_channel(a.target, options=options) for _ in range(a.channels)]
    for ch in channels:
        await asyncio.wait_for(ch.channel_ready(), 10)
    stubs_ = [pb2_grpc.GreeterStub(ch) for ch in channels]
    t0 = time.monotonic()

    async def one(i, call):
        await asyncio.sleep(max(0.0, call["at_ms"] / 1000.0 - (time.monotonic() - t0)))
        start = time.monotonic()
        md = tuple((k, str(v)) for k, v in call.get("metadata", {}).items())
        out = {"code_number": 0, "server": "", "start_ms": (start - t0) * 1000.0}
        try:
            r = await stubs_[i % len(stubs_)].SayHello(
                pb2.HelloRequest(name=f"c{i}"), metadata=md, timeout=a.timeout_s
            )
            out["server"] = r.server
        except grpc.aio.AioRpcError as e:
            out["code_number"] = e.code().value[0]
            out["details"] = e.details()
        out["elapsed_ms"] = (time.monotonic() - start) * 1000.0
        return out

    results = await asyncio.gather(*(one(i, c) for i, c in enumerate(plan)))
    for ch in channels:
        await ch.close()
    print(json.dumps(results), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
