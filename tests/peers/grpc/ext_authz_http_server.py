"""An HTTP external authorization server (what Envoy's ext_authz `http_service` asks) over
plaintext HTTP/1.1 with keep-alive, for ringside's ext_authz tests. Plain asyncio, so that
every byte of its answers is the test's (no framework adds `server` or `date`).

Usage: python ext_authz_http_server.py --record FILE [--port P]
Prints `READY port=P` once listening. Each request is appended to FILE as one JSON line:
{"method", "path", "headers": {name (lower case): value, repeated ones joined with ","},
"body"}; then answered by its `x-authz` header:
  allow       200 with `x-authz-added: yes`, `x-prefix-up: 1`, `authorization: Bearer
              replaced`, `x-not-allowed: no`, `set-cookie: s=1`,
              `x-envoy-auth-headers-to-remove: x-remove-me`
  deny        401 `Unauthorized`, body `denied by test`, with `x-deny-reason: nope`,
              `set-cookie: d=1`, `www-authenticate: Basic`, `x-prefix-deny: 2`
  error       503 with body `oops` (an error for Envoy's filter)
  slow        200 after 1.5 s (past the filter's timeout)
  close       the connection closed without an answer
  (absent)    200, nothing else
Exits 0 on SIGTERM or SIGINT.
"""
import argparse
import asyncio
import json
import signal

ANSWERS = {
    "allow": (200, "OK", [
        ("x-authz-added", "yes"),
        ("x-prefix-up", "1"),
        ("authorization", "Bearer replaced"),
        ("x-not-allowed", "no"),
        ("set-cookie", "s=1"),
        ("x-envoy-auth-headers-to-remove", "x-remove-me"),
    ], b""),
    "deny": (401, "Unauthorized", [
        ("x-deny-reason", "nope"),
        ("set-cookie", "d=1"),
        ("www-authenticate", "Basic"),
        ("x-prefix-deny", "2"),
    ], b"denied by test"),
    "error": (503, "Service Unavailable", [], b"oops"),
    "": (200, "OK", [], b""),
}


async def read_request(reader):
    """(method, path, headers, body) or None at EOF."""
    line = await reader.readline()
    if not line:
        return None
    method, path, _ = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
    headers = {}
    while True:
        h = await reader.readline()
        if h in (b"\r\n", b"\n", b""):
            break
        name, value = h.decode("latin-1").rstrip("\r\n").split(":", 1)
        name, value = name.strip().lower(), value.strip()
        headers[name] = headers[name] + "," + value if name in headers else value
    body = b""
    n = int(headers.get("content-length", "0") or 0)
    if n:
        body = await reader.readexactly(n)
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readline()).split(b";")[0].strip(), 16)
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b""):
                    pass
                break
            body += await reader.readexactly(size)
            await reader.readline()
    return method, path, headers, body


class Server:
    def __init__(self, record):
        self.record = record

    async def serve(self, reader, writer):
        try:
            while True:
                req = await read_request(reader)
                if req is None:
                    break
                method, path, headers, body = req
                with open(self.record, "a") as f:
                    f.write(json.dumps({"method": method, "path": path, "headers": headers,
                                        "body": body.decode("utf-8", "replace")}) + "\n")
                what = headers.get("x-authz", "")
                if what == "close":
                    break
                if what == "slow":
                    await asyncio.sleep(1.5)
                    what = ""
                code, reason, fields, text = ANSWERS.get(what, ANSWERS[""])
                out = f"HTTP/1.1 {code} {reason}\r\ncontent-length: {len(text)}\r\n"
                out += "".join(f"{k}: {v}\r\n" for k, v in fields) + "\r\n"
                writer.write(out.encode("latin-1") + text)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--record", required=True)
    args = ap.parse_args()
    server = await asyncio.start_server(Server(args.record).serve, args.host, args.port)
    port = server.sockets[0].getsockname()[1]
    print(f"READY port={port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for s in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(s, stop.set)
    await stop.wait()
    server.close()


if __name__ == "__main__":
    asyncio.run(main())
