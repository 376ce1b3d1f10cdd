"""A stand-in for pilot-agent's status server (port 15020): `GET /healthz/ready` answers as
pilot-agent's readiness probe does, from the proxy's admin API.

Usage: python agent_status.py --port P --admin-port A

Ported from istio/istio at 86c9f01fd735fb01d8192f5bcaf0d424afb7f14c:
pilot/cmd/pilot-agent/status/ready/probe.go (Probe.Check: checkConfigStatus, then
isEnvoyReady, each cached once it passed) and status/util/stats.go (GetUpdateStatusStats,
GetReadinessStats, parseStats), with the same URLs: `/stats?usedonly&filter=REGEX`, the regex
sent raw as Go's client sends it. 200 with an empty body when ready, else 503 with the reason
(status/server.go handleReadyProbe). Prints `READY port=P` once it listens.
"""
import argparse
import http.client
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

READY_STATS_REGEX = "^(server\\.state|listener_manager\\.workers_started)"
UPDATE_STATS_REGEX = ("^(cluster_manager\\.cds|listener_manager\\.lds)\\."
                      "(update_success|update_rejected)$")
STATES = {0: "LIVE", 1: "DRAINING", 2: "PRE_INITIALIZING", 3: "INITIALIZING"}


class ProbeError(Exception):
    pass


def get_stats(admin_port, regex):
    c = http.client.HTTPConnection("localhost", admin_port, timeout=3)
    try:
        c.request("GET", f"/stats?usedonly&filter={regex}")
        r = c.getresponse()
        body = r.read().decode()
    except OSError as e:
        raise ProbeError(str(e))
    finally:
        c.close()
    if r.status != 200:
        raise ProbeError(f"unexpected status code {r.status}")
    return body


def parse_stats(text, names):
    """stats.go parseStats: the first line starting with each name, `name: value`."""
    values = {}
    for line in text.splitlines(keepends=True):
        for n in names:
            if n not in values and line.startswith(n):
                parts = line.split(":")
                if len(parts) != 2:
                    raise ProbeError(f"envoy stat {n} missing separator. line:{line}")
                try:
                    values[n] = int(parts[1].strip())
                except ValueError as e:
                    raise ProbeError(f"failed parsing Envoy stat {n} (error: {e}) line: {line}")
    return {n: values.get(n, 0) for n in names}


class Probe:
    def __init__(self, admin_port):
        self.admin_port = admin_port
        self.received_first_update = False
        self.at_least_once_ready = False

    def check(self):
        self.check_config_status()
        self.check_envoy_readiness()

    def check_config_status(self):
        if self.received_first_update:
            return
        s = parse_stats(get_stats(self.admin_port, UPDATE_STATS_REGEX), [
            "cluster_manager.cds.update_success", "cluster_manager.cds.update_rejected",
            "listener_manager.lds.update_success", "listener_manager.lds.update_rejected"])
        cds, lds = (s["cluster_manager.cds.update_success"] > 0,
                    s["listener_manager.lds.update_success"] > 0)
        text = (f"cds updates: {s['cluster_manager.cds.update_success']} successful, "
                f"{s['cluster_manager.cds.update_rejected']} rejected; "
                f"lds updates: {s['listener_manager.lds.update_success']} successful, "
                f"{s['listener_manager.lds.update_rejected']} rejected")
        if cds and lds:
            self.received_first_update = True
            return
        if not cds and not lds:
            raise ProbeError(f"config not received from XDS server (is Istiod running?): {text}")
        if (s["listener_manager.lds.update_rejected"] > 0
                or s["cluster_manager.cds.update_rejected"] > 0):
            raise ProbeError(f"config received from XDS server, but was rejected: {text}")
        raise ProbeError(f"config not fully received from XDS server: {text}")

    def check_envoy_readiness(self):
        if self.at_least_once_ready:
            return
        text = get_stats(self.admin_port, READY_STATS_REGEX)
        if "server.state" not in text:
            raise ProbeError(f"failed to get readiness stats: server.state is not yet updated: {text}")
        if "listener_manager.workers_started" not in text:
            raise ProbeError("failed to get readiness stats: "
                             f"listener_manager.workers_started is not yet updated: {text}")
        s = parse_stats(text, ["server.state", "listener_manager.workers_started"])
        if s["server.state"] != 0:
            raise ProbeError("server is not live, current state is: "
                             + STATES.get(s["server.state"], "UNKNOWN"))
        if s["listener_manager.workers_started"] != 1:
            raise ProbeError("workers have not yet started")
        self.at_least_once_ready = True


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--admin-port", type=int, required=True)
    a = p.parse_args()
    probe = Probe(a.admin_port)

    class Status(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            if self.path != "/healthz/ready":
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            try:
                probe.check()
                code, body = 200, b""
            except ProbeError as e:
                code, body = 503, str(e).encode()
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", a.port), Status)
    print(f"READY port={server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
