"""A sidecar speaking Istio's in-band TCP metadata exchange, written from istio-proxy's
`istio.metadata_exchange` network filter (istio/proxy, before it moved to Envoy's contrib:
source/extensions/filters/network/metadata_exchange/metadata_exchange.cc and
metadata_exchange_initial_header.h):

  once TLS negotiated the ALPN protocol `istio-peer-exchange`, each side writes, before any
  application byte, an 8-byte header (magic 0x3D230467, then the size of what follows, both
  big-endian) and a google.protobuf.Any (type_url type.googleapis.com/google.protobuf.Struct)
  whose value is a Struct {"x-envoy-peer-metadata": <the node's workload Struct>,
  "x-envoy-peer-metadata-id": <the node id>} serialized deterministically. Without that ALPN
  nothing is exchanged and the bytes are the application's.

server: python tcp_exchange.py server --listen PORT --forward H:P --cert C --key K --ca CA
            --alpn A,B --metadata JSON --id ID
  A TLS server (client certificate required): per connection it reads the peer's header and
  Any (when the ALPN is istio-peer-exchange), writes its own, prints one JSON line
  {"alpn": NAME|null, "received": BASE64 of the peer's header and Any, "peer": the peer's
  Struct as JSON}, then relays the rest both ways to H:P (plaintext).
client: python tcp_exchange.py client --listen PORT --target H:P (the same TLS and node options)
  A plaintext listener: per connection it opens TLS to H:P (client certificate), writes its
  header and Any first (istio-peer-exchange), reads the peer's, prints the same line and
  relays.
frame: python tcp_exchange.py frame --metadata JSON --id ID
  Prints the base64 of the header and Any this node sends.
Prints "ready" once listening. --bad-magic sends a header with a wrong magic; --size N
declares N bytes of data (sends none): hostile peers.
"""
import argparse
import base64
import json
import socket
import ssl
import struct
import sys
import threading

import os

os.environ["PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"] = "python"
from google.protobuf import any_pb2, struct_pb2, json_format  # noqa: E402

MAGIC = 0x3D230467
ALPN = "istio-peer-exchange"
LOCK = threading.Lock()


def frame(a):
    node = struct_pb2.Struct()
    node.update({"x-envoy-peer-metadata": json.loads(a.metadata)})
    if a.id:
        node.update({"x-envoy-peer-metadata-id": a.id})
    any_ = any_pb2.Any(type_url="type.googleapis.com/google.protobuf.Struct",
                       value=node.SerializeToString(deterministic=True))
    data = any_.SerializeToString()
    magic = 0x01020304 if a.bad_magic else MAGIC
    if a.size is not None:
        return struct.pack(">II", magic, a.size)
    return struct.pack(">II", magic, len(data)) + data


def read_exact(s, n):
    out = b""
    while len(out) < n:
        got = s.recv(n - len(out))
        if not got:
            raise EOFError("closed after %d of %d bytes" % (len(out), n))
        out += got
    return out


def read_frame(s):
    head = read_exact(s, 8)
    magic, size = struct.unpack(">II", head)
    if magic != MAGIC:
        raise ValueError("bad magic %x" % magic)
    data = read_exact(s, size)
    any_ = any_pb2.Any()
    any_.ParseFromString(data)
    st = struct_pb2.Struct()
    any_.Unpack(st)
    return head + data, json_format.MessageToDict(st)


def relay(a, b):
    try:
        while True:
            d = a.recv(65536)
            if not d:
                break
            b.sendall(d)
    except OSError:
        pass
    try:
        b.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def report(alpn, received, peer):
    line = {"alpn": alpn, "received": base64.b64encode(received).decode() if received else None,
            "peer": peer}
    with LOCK:
        print(json.dumps(line), flush=True)


def context(a, server):
    c = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    c.load_cert_chain(a.cert, a.key)
    c.load_verify_locations(a.ca)
    c.check_hostname = False
    c.verify_mode = ssl.CERT_REQUIRED
    c.set_alpn_protocols(a.alpn.split(","))
    return c


def serve_server(a, ctx, raw):
    try:
        s = ctx.wrap_socket(raw, server_side=True)
    except (ssl.SSLError, OSError) as e:
        report("error: %s" % e, None, None)
        return
    alpn = s.selected_alpn_protocol()
    received, peer = None, None
    if alpn == ALPN:
        try:
            received, peer = read_frame(s)
        except Exception as e:  # the test reads what went wrong
            report(alpn, None, "error: %s" % e)
            s.close()
            return
        s.sendall(frame(a))
    report(alpn, received, peer)
    host, port = a.forward.rsplit(":", 1)
    up = socket.create_connection((host, int(port)))
    threading.Thread(target=relay, args=(s, up), daemon=True).start()
    relay(up, s)


def serve_client(a, ctx, down):
    host, port = a.target.rsplit(":", 1)
    raw = socket.create_connection((host, int(port)))
    s = ctx.wrap_socket(raw, server_hostname="peer")
    alpn = s.selected_alpn_protocol()
    received, peer = None, None
    if alpn == ALPN:
        s.sendall(frame(a))
        if a.size is not None or a.bad_magic:
            # A hostile peer: it sent its bad header; reports what came back and whether the
            # connection was closed ("closed") or left open ("open", after 15 s).
            s.settimeout(15)
            got, state = b"", "open"
            try:
                while True:
                    d = s.recv(65536)
                    if not d:
                        state = "closed"
                        break
                    got += d
            except socket.timeout:
                pass
            except OSError:
                state = "closed"
            report(alpn, got, state)
            s.close()
            down.close()
            return
        received, peer = read_frame(s)
    report(alpn, received, peer)
    threading.Thread(target=relay, args=(down, s), daemon=True).start()
    relay(s, down)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["server", "client", "frame"])
    p.add_argument("--listen", type=int)
    p.add_argument("--forward")
    p.add_argument("--target")
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--ca")
    p.add_argument("--alpn", default=ALPN + ",istio")
    p.add_argument("--metadata", default="{}")
    p.add_argument("--id", default="")
    p.add_argument("--bad-magic", action="store_true")
    p.add_argument("--size", type=int)
    a = p.parse_args()
    if a.mode == "frame":
        print(base64.b64encode(frame(a)).decode())
        return
    ctx = context(a, a.mode == "server")
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", a.listen))
    ls.listen(64)
    print("ready", flush=True)
    handler = serve_server if a.mode == "server" else serve_client
    while True:
        c, _ = ls.accept()
        threading.Thread(target=handler, args=(a, ctx, c), daemon=True).start()


if __name__ == "__main__":
    main()
