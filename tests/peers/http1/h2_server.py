"""An HTTP/2 (h2c, prior knowledge) test server on the `h2` library, for HTTP/1.1 requests a
proxy forwards as HTTP/2.

python h2_server.py --host H --port P --name NAME
  Answers every request with a body that says what arrived: a line "NAME METHOD PATH", one
  line per header field in the order received ("name: value"; an x-request-id's value as
  <id>), and "body len=N sha=HEX" (the request's DATA, its first 12 hex digits of SHA-256).
  By path: /len (the default) answers 200 with content-length in one DATA frame; /frames
  without content-length in two DATA frames (30 ms apart) and an empty one with END_STREAM;
  /trailers without content-length, one DATA frame and trailers (x-t: 1); /empty 200 with
  END_STREAM on its HEADERS; /status/N status N (204, 304: no body; else "status N\\n" with
  content-length); /big a 100000-byte body with content-length (more than one window); HEAD
  the head of /len without DATA; /hold/MS the answer of /len after MS milliseconds (streams
  held open at once); /stall/MS the head (no content-length) and half the body of /len, then
  MS ms later the rest; /bytes/N a body of N bytes with content-length (sent within the peer's
  windows: a caller that does not read holds it back); /stats "conns=C max=M resets=R": the
  connections accepted so far, the most streams seen open at once on one connection, the
  streams the client reset. Every response carries x-up: NAME.
  --max-streams L: SETTINGS_MAX_CONCURRENT_STREAMS L (the h2 library's default: 100), in a
  second SETTINGS frame, enforced once acknowledged.
  Prints "ready" once listening.
"""
import argparse
import hashlib
import socket
import threading
import time

import h2.config
import h2.connection
import h2.events
import h2.settings

# Across connections: accepted, the most streams open at once on one, client resets.
STATS = {"conns": 0, "max": 0, "resets": 0}
STATS_LOCK = threading.Lock()


def serve(sock, name, max_streams):
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    conn.initiate_connection()
    if max_streams:
        # In a SETTINGS of its own: the library enforces it once the client acknowledged it
        # (streams a client opened before it read the limit are not refused).
        conn.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: max_streams})
    sock.sendall(conn.data_to_send())
    streams = {}
    lock = threading.Lock()
    open_streams = [0]

    def opened():
        with STATS_LOCK:
            open_streams[0] += 1
            STATS["max"] = max(STATS["max"], open_streams[0])

    def closed():
        with STATS_LOCK:
            open_streams[0] -= 1

    def send(data):
        if data:
            sock.sendall(data)

    def wait_window(sid, n):
        # Blocks until the peer's windows allow n bytes (the reader thread updates them).
        while True:
            with lock:
                if conn.local_flow_control_window(sid) >= n:
                    return
            time.sleep(0.005)

    def data(sid, body, end):
        # Within the peer's windows and frame size.
        while body:
            with lock:
                room = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
            if room <= 0:
                time.sleep(0.005)
                continue
            piece, body = body[:room], body[room:]
            with lock:
                conn.send_data(sid, piece, end_stream=end and not body)
                send(conn.data_to_send())
        if end and body == b"":
            pass

    def answer(sid, headers, body):
        try:
            answer_once(sid, headers, body)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, OSError):
            pass  # reset by the client, or the connection went
        finally:
            closed()

    def answer_once(sid, headers, body):
        h = dict(headers)
        method, path = h[":method"], h[":path"]
        lines = ["%s %s %s" % (name, method, path)]
        for k, v in headers:
            if k == "x-request-id":
                v = "<id>"
            lines.append("%s: %s" % (k, v))
        lines.append("body len=%d sha=%s" % (len(body), hashlib.sha256(body).hexdigest()[:12]))
        echo = ("\n".join(lines) + "\n").encode()
        base = [("x-up", name)]
        if path == "/stats":
            with STATS_LOCK:
                b = ("conns=%d max=%d resets=%d\n" % (
                    STATS["conns"], STATS["max"], STATS["resets"])).encode()
            with lock:
                conn.send_headers(sid, [(":status", "200"), ("content-length", str(len(b)))] + base)
                send(conn.data_to_send())
            data(sid, b, True)
            return
        if path.startswith("/hold/"):
            time.sleep(int(path.split("/")[2]) / 1000.0)
        if path.startswith("/bytes/"):
            echo = b"x" * int(path.split("/")[2])
        if path.startswith("/status/"):
            code = int(path.split("/")[2])
            if code in (204, 304):
                with lock:
                    conn.send_headers(sid, [(":status", str(code))] + base, end_stream=True)
                    send(conn.data_to_send())
                return
            b = b"status %d\n" % code
            with lock:
                conn.send_headers(sid, [(":status", str(code)), ("content-length", str(len(b)))] + base)
                send(conn.data_to_send())
            data(sid, b, True)
            return
        if path == "/empty":
            with lock:
                conn.send_headers(sid, [(":status", "200")] + base, end_stream=True)
                send(conn.data_to_send())
            return
        if path.startswith("/stall/"):
            # Headers and half the body, MS ms of nothing, then the rest.
            with lock:
                conn.send_headers(sid, [(":status", "200"), ("content-type", "text/plain")] + base)
                send(conn.data_to_send())
            half = len(echo) // 2
            data(sid, echo[:half], False)
            time.sleep(int(path.split("/")[2]) / 1000.0)
            try:
                data(sid, echo[half:], True)
            except Exception:
                pass  # the proxy gave up on the stream meanwhile
            return
        if path == "/frames":
            with lock:
                conn.send_headers(sid, [(":status", "200"), ("content-type", "text/plain")] + base)
                send(conn.data_to_send())
            half = len(echo) // 2
            data(sid, echo[:half], False)
            time.sleep(0.03)
            data(sid, echo[half:], False)
            time.sleep(0.03)
            with lock:
                conn.send_data(sid, b"", end_stream=True)
                send(conn.data_to_send())
            return
        if path == "/trailers":
            with lock:
                conn.send_headers(sid, [(":status", "200"), ("content-type", "text/plain")] + base)
                send(conn.data_to_send())
            data(sid, echo, False)
            with lock:
                conn.send_headers(sid, [("x-t", "1")], end_stream=True)
                send(conn.data_to_send())
            return
        if path == "/big":
            echo = (echo * (100000 // len(echo) + 1))[:100000]
        head = [(":status", "200"), ("content-type", "text/plain"),
                ("content-length", str(len(echo)))] + base
        if method == "HEAD":
            with lock:
                conn.send_headers(sid, head, end_stream=True)
                send(conn.data_to_send())
            return
        with lock:
            conn.send_headers(sid, head)
            send(conn.data_to_send())
        data(sid, echo, True)

    try:
        while True:
            got = sock.recv(65536)
            if not got:
                return
            with lock:
                events = conn.receive_data(got)
                send(conn.data_to_send())
            for e in events:
                if isinstance(e, h2.events.RequestReceived):
                    opened()
                    hs = [(k.decode() if isinstance(k, bytes) else k,
                           v.decode() if isinstance(v, bytes) else v) for k, v in e.headers]
                    streams[e.stream_id] = (hs, bytearray())
                    if e.stream_ended:
                        hs, body = streams.pop(e.stream_id)
                        threading.Thread(target=answer, args=(e.stream_id, hs, bytes(body)),
                                         daemon=True).start()
                elif isinstance(e, h2.events.DataReceived):
                    streams[e.stream_id][1].extend(e.data)
                    with lock:
                        conn.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
                        send(conn.data_to_send())
                elif isinstance(e, h2.events.StreamEnded):
                    if e.stream_id in streams:
                        hs, body = streams.pop(e.stream_id)
                        threading.Thread(target=answer, args=(e.stream_id, hs, bytes(body)),
                                         daemon=True).start()
                elif isinstance(e, h2.events.StreamReset):
                    with STATS_LOCK:
                        STATS["resets"] += 1
                    if streams.pop(e.stream_id, None) is not None:
                        closed()  # reset before its request ended: never answered
                elif isinstance(e, h2.events.ConnectionTerminated):
                    return
    except (OSError, h2.exceptions.ProtocolError):
        return
    finally:
        sock.close()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--name", default="h2")
    p.add_argument("--max-streams", type=int, default=0)
    a = p.parse_args()
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((a.host, a.port))
    s.listen(64)
    print("ready", flush=True)
    while True:
        c, _ = s.accept()
        with STATS_LOCK:
            STATS["conns"] += 1
        threading.Thread(target=serve, args=(c, a.name, a.max_streams), daemon=True).start()


if __name__ == "__main__":
    import h2.exceptions  # noqa: F401
    main()
