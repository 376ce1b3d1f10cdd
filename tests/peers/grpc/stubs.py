"""Loads the Python stubs of helloworld.proto, generating them with grpcio-tools into
<repo>/.cache/grpc when they are missing or older than the proto (scripts/install-test-deps does
the same at install time; generation here keeps a peer usable right after a proto edit). Also the
CLI and JSON conventions the grpcio and apache-dubbo peers share.
"""
import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
PROTO = os.path.join(HERE, "helloworld.proto")
OUT = os.environ.get("RINGSIDE_GRPC_STUBS", os.path.join(ROOT, ".cache", "grpc"))


def _stale():
    target = os.path.join(OUT, "helloworld_pb2_grpc.py")
    return not os.path.exists(target) or os.path.getmtime(target) < os.path.getmtime(PROTO)


def generate():
    from grpc_tools import protoc

    os.makedirs(OUT, exist_ok=True)
    # Write to a temp dir and rename, so concurrent peers never import a half-written file.
    tmp = f"{OUT}/.gen-{os.getpid()}"
    os.makedirs(tmp, exist_ok=True)
    rc = protoc.main(["protoc", f"-I{HERE}", f"--python_out={tmp}", f"--grpc_python_out={tmp}", PROTO])
    if rc != 0:
        raise RuntimeError(f"grpc_tools.protoc failed ({rc}) on {PROTO}")
    for name in ("helloworld_pb2.py", "helloworld_pb2_grpc.py"):
        os.replace(os.path.join(tmp, name), os.path.join(OUT, name))
    os.rmdir(tmp)


def load():
    """Returns (helloworld_pb2, helloworld_pb2_grpc)."""
    if _stale():
        generate()
    if OUT not in sys.path:
        sys.path.insert(0, OUT)
    import helloworld_pb2
    import helloworld_pb2_grpc

    return helloworld_pb2, helloworld_pb2_grpc


def server_args(default_name):
    """The servers' flags: --port (0: a free one, see READY), --host, --name, --delay-ms."""
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True, help="0 picks a free port (see READY)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--name", default=default_name)
    p.add_argument("--delay-ms", type=int, default=0)
    return p


def client_args():
    """Parses the clients' flags; returns (args, metadata as [(lowercase key, value)])."""
    p = argparse.ArgumentParser()
    p.add_argument("--target", required=True)
    p.add_argument("--call", default="unary",
                   choices=["unary", "server_stream", "client_stream", "bidi"])
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--payload-bytes", type=int, default=0)
    p.add_argument("--timeout-s", type=float, default=5.0)
    p.add_argument("--metadata", action="append", default=[], help="k=v, repeatable")
    p.add_argument("--name", default="ringside")
    p.add_argument("--service", default="helloworld.Greeter",
                   help="the service part of :path (another name tests an unknown service)")
    p.add_argument("--transparent-retries", action="store_true",
                   help="grpcio only: keep gRPC's transparent retries of calls the server never "
                        "saw (off by default, so that every failure ringside causes shows)")
    p.add_argument("--tls-ca", help="grpcio only: a TLS channel trusting this PEM CA bundle")
    p.add_argument("--tls-cert", help="grpcio only: client certificate (mutual TLS)")
    p.add_argument("--tls-key", help="grpcio only: its private key")
    p.add_argument("--tls-authority",
                   help="grpcio only: the DNS name the server certificate must carry")
    p.add_argument("--authority",
                   help="grpcio only: the :authority of the calls (grpc.default_authority; "
                        "default: the target), as a client that dialled a service name")
    p.add_argument("--vary-metadata", action="append", default=[],
                   help="KEY, repeatable: unary call i also sends KEY=v{i} (one value per call, "
                        "for consistent-hash tests)")
    a = p.parse_args()
    metadata = []
    for kv in a.metadata:
        k, sep, v = kv.partition("=")
        if not sep:
            p.error(f"--metadata {kv!r}: want k=v")
        metadata.append((k.lower(), v))
    return a, metadata


def payload_of(n, seq):
    """n bytes of a pattern that differs per request, so a mixed-up echo is caught."""
    base = bytes((i + seq) % 251 for i in range(251))
    return (base * (n // 251 + 1))[:n]


def request(pb2, a, seq, count=0):
    return pb2.HelloRequest(name=f"{a.name}-{seq}" if seq else a.name,
                            payload=payload_of(a.payload_bytes, seq), count=count)


def reply_json(r):
    return {"server": r.server, "seq": r.seq, "message": r.message,
            "payload_bytes": len(r.payload), "received_bytes": r.received_bytes,
            "metadata": list(r.metadata)}


def new_outcome():
    return {"ok": True, "code": "OK", "code_number": 0, "details": "", "replies": [],
            "payload_ok": True, "trailers": {}, "initial": {}}


if __name__ == "__main__":
    # `python stubs.py [--body FILE NAME]`: generate; optionally also write one gRPC-framed
    # HelloRequest (5-byte prefix: flag 0, big-endian length) for h2load's --data.
    generate()
    if len(sys.argv) == 4 and sys.argv[1] == "--body":
        pb2, _ = load()
        msg = pb2.HelloRequest(name=sys.argv[3]).SerializeToString()
        with open(sys.argv[2], "wb") as f:
            f.write(b"\x00" + len(msg).to_bytes(4, "big") + msg)
