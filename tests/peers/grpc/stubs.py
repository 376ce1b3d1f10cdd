"""Loads the Python stubs of helloworld.proto, generating them with grpcio-tools into
<repo>/.cache/grpc when they are missing or older than the proto (scripts/install-test-deps does
the same at install time; generation here keeps a peer usable right after a proto edit).
"""
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


if __name__ == "__main__":
    # `python stubs.py [--body FILE NAME]`: generate; optionally also write one gRPC-framed
    # HelloRequest (5-byte prefix: flag 0, big-endian length) for h2load's --data.
    generate()
    if len(sys.argv) == 4 and sys.argv[1] == "--body":
        pb2, _ = load()
        msg = pb2.HelloRequest(name=sys.argv[3]).SerializeToString()
        with open(sys.argv[2], "wb") as f:
            f.write(b"\x00" + len(msg).to_bytes(4, "big") + msg)
