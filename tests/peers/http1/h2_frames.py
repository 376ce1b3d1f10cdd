"""A raw HTTP/2 (h2c, prior knowledge) test server that records the frames a client (a proxy's
HTTP/2 upstream connection) sends, for comparing what two proxies send given the same cluster.

python h2_frames.py --port P [--mute]
  Prints "ready" once listening, then one line per event, "CONN SECONDS WHAT ...", SECONDS
  since that connection was accepted: "ACCEPT"; "SETTINGS id=value,..." (the client's, not
  ACKs); "WINDOW_UPDATE STREAM INCREMENT"; "PING" (not ACKs); "HEADERS STREAM"; "GOAWAY LAST
  CODE"; "EOF" (the client closed). Sends an empty SETTINGS, acknowledges the client's, and
  answers each request (HEADERS) with ":status: 200" and END_STREAM, and each PING with its
  ACK. --mute: answers neither requests nor PINGs (a hung upstream).
"""
import argparse
import socket
import threading
import time

LOCK = threading.Lock()


def say(n, t0, what):
    with LOCK:
        print("%d %.3f %s" % (n, time.monotonic() - t0, what), flush=True)


def serve(c, n, mute):
    t0 = time.monotonic()
    say(n, t0, "ACCEPT")
    c.sendall(bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))
    buf = b""
    preface = False
    try:
        while True:
            got = c.recv(65536)
            if not got:
                say(n, t0, "EOF")
                return
            buf += got
            if not preface:
                if len(buf) < 24:
                    continue
                buf = buf[24:]
                preface = True
            while len(buf) >= 9:
                size = int.from_bytes(buf[:3], "big")
                if len(buf) < 9 + size:
                    break
                kind, flags = buf[3], buf[4]
                sid = int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
                p = buf[9:9 + size]
                buf = buf[9 + size:]
                if kind == 4 and not flags & 1:
                    s = ",".join("%d=%d" % (int.from_bytes(p[i:i + 2], "big"),
                                            int.from_bytes(p[i + 2:i + 6], "big"))
                                 for i in range(0, size, 6))
                    say(n, t0, "SETTINGS " + s)
                    c.sendall(bytes([0, 0, 0, 4, 1, 0, 0, 0, 0]))
                elif kind == 8:
                    say(n, t0, "WINDOW_UPDATE %d %d" % (sid, int.from_bytes(p, "big")))
                elif kind == 6 and not flags & 1:
                    say(n, t0, "PING")
                    if not mute:
                        c.sendall(bytes([0, 0, 8, 6, 1, 0, 0, 0, 0]) + p)
                elif kind == 7:
                    say(n, t0, "GOAWAY %d %d" % (int.from_bytes(p[:4], "big"),
                                                 int.from_bytes(p[4:8], "big")))
                elif kind == 1:
                    say(n, t0, "HEADERS %d" % sid)
                    if not mute:
                        # :status 200 (static table index 8), END_HEADERS | END_STREAM.
                        c.sendall(bytes([0, 0, 1, 1, 5]) + sid.to_bytes(4, "big") + b"\x88")
    except OSError:
        say(n, t0, "EOF")
    finally:
        c.close()


def main():
    a = argparse.ArgumentParser()
    a.add_argument("--host", default="127.0.0.1")
    a.add_argument("--port", type=int, required=True)
    a.add_argument("--mute", action="store_true")
    a = a.parse_args()
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((a.host, a.port))
    s.listen(64)
    print("ready", flush=True)
    n = 0
    while True:
        c, _ = s.accept()
        n += 1
        threading.Thread(target=serve, args=(c, n, a.mute), daemon=True).start()


if __name__ == "__main__":
    main()
