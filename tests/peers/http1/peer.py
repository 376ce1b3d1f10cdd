"""HTTP/1.1 test peers on Python's standard library (http.server, http.client).

server: python peer.py server --host H --port P --name NAME
  A keep-alive HTTP/1.1 server (ThreadingHTTPServer, protocol HTTP/1.1). Every request is
  answered 200 with one line: NAME METHOD PATH len=BODY_BYTES xfp=X-FORWARDED-PROTO
  rid=yes|no hop=HOP_BY_HOP_FIELDS_SEEN peer=PEER_IP (the request body read by its
  Content-Length or chunked), except: /status/N answers status N (no body for 204/304),
  /chunked answers with a chunked body of three chunks, /sleep/MS sleeps MS ms first,
  /sleepbody/MS sends its head at once and its body ("late body") MS ms later, and
  /header/NAME adds NAME=VALUE (the request's header NAME as it arrived, "none" without it),
  .../flaky/KEY/N/WHAT fails the first N requests with that KEY (counted by the server) as
  WHAT says: a status code (answered with an empty body), "reset" (the connection closed
  without an answer) or "slow" (answered as usual, 1.5 s late); its answer line ends
  "try=K" (the K-th request with that KEY).
  Prints "ready" once listening.

client: python peer.py client --target H:P < requests.json
  Sends the requests ([{method, path, host, body_len, chunked, headers, show}]) one after the
  other on one keep-alive connection (a new one when the server closed it) and prints one JSON
  line per request: {"status": N, "body": TEXT, "reused": BOOL} (with "headers": {NAME: VALUE}
  for the response fields `show` names) or {"error": TEXT}.
  With --tls-cert/--tls-key/--tls-ca it speaks TLS (client certificate, the CA's trust,
  --alpn A,B offered); each line then says the ALPN negotiated ("alpn": NAME|null).
"""
import argparse
import http.client
import http.server
import json
import socketserver
import ssl
import sys
import threading
import time

HOP = ["connection", "keep-alive", "x-hop", "proxy-connection", "te", "upgrade"]
FLAKY = {}
FLAKY_LOCK = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    name = "?"

    def log_message(self, *a):
        pass

    def read_body(self):
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            n = 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return n
                self.rfile.read(size)
                self.rfile.readline()
                n += size
        length = int(self.headers.get("content-length", "0"))
        left = length
        while left > 0:
            got = self.rfile.read(min(left, 65536))
            if not got:
                break
            left -= len(got)
        return length

    def answer(self):
        n = self.read_body()
        path = self.path
        tried = ""
        if "/flaky/" in path:
            key, fails, what = path.split("/flaky/", 1)[1].split("/")[:3]
            with FLAKY_LOCK:
                k = FLAKY[key] = FLAKY.get(key, 0) + 1
            tried = " try=%d" % k
            if k <= int(fails):
                if what == "reset":
                    self.close_connection = True
                    return
                if what == "slow":
                    time.sleep(1.5)
                else:
                    self.send_response(int(what))
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
        if path.startswith("/sleep/"):
            time.sleep(int(path.split("/")[2]) / 1000)
        if path.startswith("/sleepbody/"):
            # The head at once, the body MS ms later.
            body = b"late body\n"
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.flush()
            time.sleep(int(path.split("/")[2]) / 1000)
            self.wfile.write(body)
            return
        if path.startswith("/status/"):
            code = int(path.split("/")[2])
            self.send_response(code)
            if code not in (204, 304):
                self.send_header("content-length", "0")
            self.end_headers()
            return
        hop = ",".join(h for h in HOP if h in self.headers) or "none"
        line = "%s %s %s len=%d xfp=%s rid=%s hop=%s peer=%s\n" % (
            self.name, self.command, path, n, self.headers.get("x-forwarded-proto", "none"),
            "yes" if self.headers.get("x-request-id") else "no", hop, self.client_address[0])
        if path.startswith("/header/"):
            # The value of one request header (the path's last part), as it arrived.
            line += "%s=%s\n" % (path.split("/")[2], self.headers.get(path.split("/")[2], "none"))
            line = line.replace("\n", " ", 1)
        line = line.rstrip("\n") + tried + "\n"
        body = line.encode()
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        if path == "/chunked":
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            if self.command != "HEAD":
                for piece in (body[:5], body[5:], b""):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            return
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = answer


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        # A proxy that gave up on a request (its route timeout) closes the connection.
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


def server(a):
    Handler.name = a.name
    s = Server((a.host, a.port), Handler)
    print("ready", flush=True)
    s.serve_forever()


def client(a):
    host, port = a.target.rsplit(":", 1)
    conn = None
    for r in json.load(sys.stdin):
        reused = conn is not None
        if conn is None:
            if a.tls_cert:
                conn = http.client.HTTPSConnection(host, int(port), timeout=a.timeout_s,
                                                   context=tls_context(a))
            else:
                conn = http.client.HTTPConnection(host, int(port), timeout=a.timeout_s)
        try:
            conn.putrequest(r.get("method", "GET"), r.get("path", "/"), skip_host=True,
                            skip_accept_encoding=True)
            conn.putheader("Host", r["host"])
            headers = dict(r.get("headers", {}))
            body = b"x" * r.get("body_len", 0)
            if r.get("chunked"):
                conn.putheader("Transfer-Encoding", "chunked")
            elif body or r.get("method") in ("POST", "PUT"):
                conn.putheader("Content-Length", str(len(body)))
            for k, v in headers.items():
                conn.putheader(k, v)
            conn.endheaders()
            if r.get("chunked"):
                for i in range(0, len(body), 7000):
                    piece = body[i:i + 7000]
                    conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
                conn.send(b"0\r\n\r\n")
            elif body:
                conn.send(body)
            resp = conn.getresponse()
            alpn = conn.sock.selected_alpn_protocol() if a.tls_cert and conn.sock else None
            text = resp.read().decode(errors="replace")
            line = {"status": resp.status, "body": text, "reused": reused}
            if r.get("show"):
                # The response's fields of these names (repeated ones joined with ", ").
                line["headers"] = {k: ", ".join(resp.headers.get_all(k) or []) for k in r["show"]}
            if a.tls_cert:
                line["alpn"] = alpn
            print(json.dumps(line), flush=True)
            if resp.will_close:
                conn.close()
                conn = None
        except Exception as e:  # noqa: BLE001 - reported to the test
            print(json.dumps({"error": "%s: %s" % (type(e).__name__, e)}), flush=True)
            conn.close()
            conn = None


def tls_context(a):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_cert_chain(a.tls_cert, a.tls_key)
    ctx.load_verify_locations(a.tls_ca)
    # Istio's certificates name SPIFFE ids, not host names: the CA's signature is checked.
    ctx.check_hostname = False
    if a.alpn:
        ctx.set_alpn_protocols(a.alpn.split(","))
    return ctx


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("server")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--name", required=True)
    c = sub.add_parser("client")
    c.add_argument("--target", required=True)
    c.add_argument("--timeout-s", type=float, default=5.0)
    c.add_argument("--tls-cert")
    c.add_argument("--tls-key")
    c.add_argument("--tls-ca")
    c.add_argument("--alpn")
    a = p.parse_args()
    server(a) if a.mode == "server" else client(a)


if __name__ == "__main__":
    main()
