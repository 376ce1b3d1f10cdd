"""bench/xds-push: the xDS push benchmark of issue 9 (docs/benchmarks.md "xDS push").

For each proxy (ringside, Envoy), each alone on the machine and pinned as bench/run pins (proxy
on CPU1; load generator, upstreams and the ADS server on CPU0, the ADS server at nice 10), and
for each ADS mode:
  1. starts two dubbo-echo providers (A, B), the test ADS server (tests/peers/xds/server.py) with
     a Dubbo listener (dubbo_proxy, the bench echo interface -> cluster `echo` -> A), the proxy,
     and dubbo-load open loop (--rate) through it for the whole run; `--steady` seconds of
     steady state come first;
  2. big push: the staged snapshot (built by POST /generate before the load starts) adds
     `--clusters` EDS clusters with `--endpoints` endpoints each (127.64.0.0/10 addresses on port
     9; no route names them) in one POST /push. Applied = the proxy's ACK of the CDS response and
     of the EDS response that carries every new ClusterLoadAssignment (ringside ACKs once every
     shard runs the snapshot; Envoy ACKs EDS once the main thread has taken every assignment,
     i.e. the clusters left warming). Time = ACK received by the server - response queued.
     ringside also: config.update_apply_time_us (arrival -> all shards applied) over the push;
     Envoy also: cluster_manager.active_clusters / warming_clusters checked once after the ACK;
  3. `--updates` EDS updates at `--update-rate`/s (PATCH /resources, one ClusterLoadAssignment
     each; every 10th, from the 6th, moves `echo` between provider A and B): per update, time
     from the response queued to its ACK (an update not ACKed itself counts as applied with the
     first later ACK);
  4. CPU seconds of the proxy (/proc/PID/stat) from the push until 1 s after it is applied, RSS
     and peak RSS (VmHWM) after it.
Latency windows come from dubbo-load --samples (every request's due time and latency): steady
= the `--steady` seconds before the push; push = from the push until 1 s after it is applied;
stream = from the first update until 1 s after the last is applied. Writes JSON (--json) and
prints a table. `--smoke`: 200 clusters x 2 endpoints, 5 updates, a few seconds per proxy.
"""
import argparse
import http.client as httpclient
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import istio_shape

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
INTERFACE = "org.apache.dubbo.bench.EchoService"
T0 = time.time()
PROCS = []


def log(msg):
    print(f"[xds-push {time.time() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


_GIVEN = set()


# Listener ports come from below the kernel's ephemeral range (32768-60999 here): a port
# the kernel handed out and took back can be given again at once as the local port of an
# outgoing connection (ringside's own xDS client, an admin poll), and a listener on it is then
# refused ("address already in use": the config NACKed, /ready after the initial fetch
# timeout; seen in scripts/test on 2026-12-06). 10000-19999: the Rust tests take
# 20000-29999, bench/run 30000-30320.
PORT_FIRST, PORT_COUNT = 10000, 10000


def free_port():
    """A loopback port free now, outside the ephemeral range, never given before by this
    process (two listeners of one config on one port are a NACK)."""
    start = (os.getpid() * 2654435761) % PORT_COUNT
    for k in range(PORT_COUNT):
        p = PORT_FIRST + (start + len(_GIVEN) * 7 + k) % PORT_COUNT
        if p in _GIVEN:
            continue
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", p))
        except OSError:
            continue
        finally:
            s.close()
        _GIVEN.add(p)
        return p
    raise RuntimeError(f"no free port in {PORT_FIRST}..{PORT_FIRST + PORT_COUNT}")


def http(port, method, path, body=None, timeout=30):
    c = httpclient.HTTPConnection("127.0.0.1", port, timeout=timeout)
    data = None if body is None else (body if isinstance(body, (bytes, str)) else json.dumps(body))
    c.request(method, path, body=data, headers={"Content-Type": "application/json"})
    r = c.getresponse()
    text = r.read().decode()
    c.close()
    return r.status, text


def jhttp(port, method, path, body=None, timeout=30):
    code, text = http(port, method, path, body, timeout)
    if code != 200:
        raise RuntimeError(f"{method} {path}: {code} {text[:300]}")
    return json.loads(text)


def spawn(name, cpu, argv, nice=0, **kw):
    pre = ["taskset", "-c", str(cpu)] + (["nice", "-n", str(nice)] if nice else [])
    p = subprocess.Popen(pre + argv, stdin=subprocess.DEVNULL, **kw)
    p.name = name
    PROCS.append(p)
    return p


def stop(p, sig=signal.SIGTERM, wait=10):
    if p.poll() is None:
        p.send_signal(sig)
        try:
            p.wait(wait)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    if p in PROCS:
        PROCS.remove(p)


def stop_all():
    for p in list(PROCS):
        stop(p, wait=5)


def wait_port(port, what, within=20):
    deadline = time.time() + within
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what}: port {port} not accepting within {within} s")


def cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        v = f.read().rsplit(")", 1)[1].split()
    return (int(v[11]) + int(v[12])) / os.sysconf("SC_CLK_TCK")


def status_kb(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


def cpu_times():
    out = []
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                v = [int(x) for x in line.split()[1:]]
                idle = v[3] + v[4]
                out.append((sum(v) - idle, sum(v)))
    return out


def idle_check(sample=1.0):
    with open("/proc/loadavg") as f:
        load = float(f.read().split()[0])
    a = cpu_times()
    time.sleep(sample)
    b = cpu_times()
    busy = [100.0 * (bb - ab) / max(1, bt - at) for (ab, at), (bb, bt) in zip(a, b)]
    idle = load <= 0.5 and all(x <= 10 for x in busy)
    top = subprocess.run(["ps", "-eo", "pcpu,comm", "--sort=-pcpu"], capture_output=True,
                         text=True).stdout.splitlines()[1:4]
    return {"loadavg_1m": load, "cpu_busy_pct": [round(x, 1) for x in busy], "idle": idle,
            "top": [t.strip() for t in top]}


def pct(sorted_vals, q):
    if not sorted_vals:
        return None
    i = min(len(sorted_vals) - 1, max(0, int(round(q * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[i]


def window(samples, t_from, t_to):
    lat = sorted(s[1] for s in samples if t_from <= s[0] < t_to and s[2])
    errors = sum(1 for s in samples if t_from <= s[0] < t_to and not s[2])
    return {"from": t_from, "seconds": round(t_to - t_from, 3), "requests": len(lat) + errors,
            "errors": errors, "p50_us": pct(lat, 0.5), "p99_us": pct(lat, 0.99),
            "p999_us": pct(lat, 0.999), "max_us": lat[-1] if lat else None}


def socket_json(host, port):
    return {"socket_address": {"address": host, "port_value": port}}


def cla(name, addrs):
    return {"cluster_name": name, "endpoints": [{"lb_endpoints": [
        {"endpoint": {"address": socket_json(h, p)}} for h, p in addrs]}]}


def eds_cluster(name):
    return {"name": name, "type": "EDS", "connect_timeout": "1s",
            "eds_cluster_config": {"eds_config": {"ads": {}, "resource_api_version": "V3"}}}


def dubbo_listener(port):
    return {"name": "dubbo_out", "address": socket_json("127.0.0.1", port), "filter_chains": [{
        "filters": [{"name": "envoy.filters.network.dubbo_proxy", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.dubbo_proxy.v3.DubboProxy",
            "stat_prefix": "dubbo_out", "protocol_type": "Dubbo", "serialization_type": "Hessian2",
            "multiple_route_config": {"name": "dubbo_out-routes", "route_config": [{
                "name": "echo", "interface": INTERFACE, "routes": [{
                    "match": {"method": {"name": {"safe_regex": {"regex": ".*"}}}},
                    "route": {"cluster": "echo"}}]}]},
            "dubbo_filters": [{"name": "envoy.filters.dubbo.router"}]}}]}]}


def envoy_bootstrap(admin, xds_port, mode):
    return {
        "node": {"id": "bench-envoy", "cluster": "bench"},
        "admin": {"address": socket_json("127.0.0.1", admin)},
        "dynamic_resources": {
            "ads_config": {"api_type": "GRPC" if mode == "sotw" else "DELTA_GRPC",
                           "transport_api_version": "V3",
                           "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}]},
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
            "cds_config": {"ads": {}, "resource_api_version": "V3"}},
        "static_resources": {"clusters": [{
            "name": "xds", "type": "STATIC", "connect_timeout": "1s",
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}}}},
            "load_assignment": cla("xds", [("127.0.0.1", xds_port)])}]}}


class Ads:
    """The test ADS server and a cursor over its request/response log."""

    def __init__(self, work):
        self.out = open(os.path.join(work, "xds-server.out"), "w+")
        self.proc = spawn("xds-server", 0, [os.path.join(ROOT, ".cache/venv/bin/python"),
                                            os.path.join(ROOT, "tests/peers/xds/server.py")],
                          nice=10, stdout=self.out, stderr=subprocess.STDOUT,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))
        deadline = time.time() + 30
        while time.time() < deadline:
            self.out.seek(0)
            for line in self.out.read().splitlines():
                if line.startswith("READY "):
                    f = dict(kv.split("=") for kv in line.split()[1:])
                    self.port, self.control = int(f["port"]), int(f["control"])
                    self.reqs, self.resps = [], []
                    return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError("xds server did not start: " + open(self.out.name).read()[-2000:])

    def poll(self):
        self.reqs += jhttp(self.control, "GET", f"/requests?since={len(self.reqs)}")
        self.resps += jhttp(self.control, "GET", f"/responses?since={len(self.resps)}")

    def ack_of(self, pred):
        """(response, its ACK request or None, NACK or None) for the last response matching."""
        resp = None
        for r in self.resps:
            if pred(r):
                resp = r
        if resp is None:
            return None, None, None
        for q in self.reqs:
            if q["response_nonce"] == resp["nonce"] and q["type"] == resp["type"]:
                return resp, (q if q["ack"] else None), (None if q["ack"] else q)
        return resp, None, None


def wait_until(what, fn, within, every=0.025, progress=2.0):
    start = last = time.time()
    while True:
        v = fn()
        if v:
            return v
        now = time.time()
        if now - start > within:
            raise RuntimeError(f"{what}: not within {within} s")
        if now - last >= progress:
            log(f"  waiting for {what} ({now - start:.1f} s)")
            last = now
        time.sleep(every)


def ringside_stats(admin):
    code, text = http(admin, "GET", "/stats/prometheus")
    out = {}
    for line in text.splitlines():
        if line.startswith("ringside_config_update_apply_time_us_sum") or \
                line.startswith("ringside_config_update_apply_time_us_count") or \
                line.startswith("ringside_config_update_applied") or \
                line.startswith("ringside_xds_updates"):
            k, v = line.rsplit(" ", 1)
            out[k.split("{")[0]] = float(v)
    return out


def envoy_stats(admin, pattern):
    code, text = http(admin, "GET", "/stats?filter=" + pattern, timeout=60)
    out = {}
    for line in text.splitlines():
        if ": " in line:
            k, v = line.split(": ", 1)
            try:
                out[k] = int(v)
            except ValueError:
                out[k] = v
    return out


def start_proxy(a, proxy, mode, work, ads, admin):
    """Starts `proxy` (pinned to CPU1, one shard / --concurrency 1) on the ADS server `ads`,
    admin on `admin`; returns its Popen once /ready answers 200."""
    if proxy == "ringside":
        cfg = os.path.join(work, "ringside.yaml")
        with open(cfg, "w") as f:
            f.write(f"admin:\n  address: 127.0.0.1:{admin}\n"
                    f"xds:\n  server: 127.0.0.1:{ads.port}\n  node_id: bench-ringside\n"
                    f"  node_cluster: bench\n  mode: {mode}\n  initial_fetch_timeout_ms: 20000\n")
        plog = open(os.path.join(work, "ringside.log"), "w")
        env = dict(os.environ, RUST_LOG=a.ringside_log) if a.ringside_log else None
        p = spawn("ringside", 1, [a.ringside, "run", "--config", cfg, "--shards", "1"],
                  stdout=plog, stderr=subprocess.STDOUT, env=env)
        wait_until("ringside /ready", lambda: _ok(lambda: http(admin, "GET", "/ready")[0] == 200),
                   30)
    else:
        cfg = os.path.join(work, "envoy.json")
        with open(cfg, "w") as f:
            json.dump(envoy_bootstrap(admin, ads.port, mode), f)
        plog = open(os.path.join(work, "envoy.log"), "w")
        p = spawn("envoy", 1, [a.envoy, "-c", cfg, "--concurrency", "1", "--disable-hot-restart",
                               "-l", "warning"], stdout=plog, stderr=subprocess.STDOUT)
        wait_until("envoy /ready", lambda: _ok(lambda: http(admin, "GET", "/ready")[0] == 200),
                   30)
    return p


def run_one(a, proxy, mode, work):
    """One run of the four phases for `proxy` in ADS `mode`; returns its results."""
    res = {"proxy": proxy, "mode": mode}
    res["idle_check"] = ic = idle_check()
    log(f"{proxy}/{mode}: machine {'idle' if ic['idle'] else 'NOT IDLE'}: load {ic['loadavg_1m']}"
        f", busy {ic['cpu_busy_pct']}, top {ic['top'][:2]}")
    rel = a.target_dir
    pa, pb, listen, admin = free_port(), free_port(), free_port(), free_port()
    echo_a = spawn("echo-a", 0, [f"{rel}/dubbo-echo", "--listen", f"127.0.0.1:{pa}"])
    echo_b = spawn("echo-b", 0, [f"{rel}/dubbo-echo", "--listen", f"127.0.0.1:{pb}"])
    ads = Ads(work)
    base = {"version": "init", "listeners": [dubbo_listener(listen)],
            "clusters": [eds_cluster("echo")],
            "endpoints": [cla("echo", [("127.0.0.1", pa)])]}
    jhttp(ads.control, "PUT", "/resources", base)
    wait_port(pa, "echo A")
    wait_port(pb, "echo B")
    log(f"{proxy}/{mode}: staging {a.clusters} clusters x {a.endpoints} endpoints")
    st = jhttp(ads.control, "POST", "/generate", {
        "version": "big", "clusters": a.clusters, "endpoints_per_cluster": a.endpoints,
        "prefix": "bulk-", "port": 9, "first_address": "127.64.0.1", "base": base,
        "stage": True}, timeout=300)
    res["stage_build_s"] = round(st["build_s"], 2)

    p = start_proxy(a, proxy, mode, work, ads, admin)
    wait_port(listen, f"{proxy} dubbo listener")
    pid = p.pid

    # 1. load for the whole run, steady state first
    samples_f, json_f = os.path.join(work, "samples.txt"), os.path.join(work, "load.json")
    stop_f = os.path.join(work, "stop")
    load_log = open(os.path.join(work, "load.log"), "w")
    load = spawn("dubbo-load", 0, [
        f"{rel}/dubbo-load", "--target", f"127.0.0.1:{listen}", "--rate", str(a.rate),
        "--connections", str(a.connections), "--duration", "3600s", "--warmup", "0s",
        "--timeout", "2s", "--samples", samples_f, "--stop-file", stop_f, "--json", json_f],
        stdout=load_log, stderr=subprocess.STDOUT)
    t_load = time.time()
    warm = max(1.0, a.steady * 0.2)
    while time.time() < t_load + warm + a.steady:
        time.sleep(min(2.0, t_load + warm + a.steady - time.time()))
        log(f"{proxy}/{mode}: steady state {time.time() - t_load:.1f}/{warm + a.steady:.0f} s")
    steady_from = t_load + warm

    # 2. big push
    ads.poll()
    rs0 = ringside_stats(admin) if proxy == "ringside" else None
    cpu0, rss0 = cpu_s(pid), status_kb(pid, "VmRSS")
    n_resp0 = len(ads.resps)
    log(f"{proxy}/{mode}: big push: {a.clusters} clusters, {a.clusters * a.endpoints} endpoints")
    t_push = jhttp(ads.control, "POST", "/push")["time"]

    def big_done():
        ads.poll()
        new = ads.resps[n_resp0:]
        cds = [r for r in new if r["type"] == "cds" and r["version"] == "big"]
        eds = [r for r in new if r["type"] == "eds" and r["version"] == "big"
               and r["resources"] >= a.clusters]
        if not cds or not eds:
            return None
        got = []
        for r in (cds[-1], eds[-1]):
            _, ack, nack = ads.ack_of(lambda x, r=r: x["nonce"] == r["nonce"])
            if nack:
                raise RuntimeError(f"{proxy} NACKed the big push: {nack['error_detail']}")
            if not ack:
                return None
            got.append((r, ack))
        return got

    got = wait_until(f"{proxy} ACK of the big push", big_done, a.push_timeout)
    (cds_r, cds_ack), (eds_r, eds_ack) = got
    t_applied = max(cds_ack["time"], eds_ack["time"])
    big = {"applied_s": round(t_applied - t_push, 3),
           "cds_ack_s": round(cds_ack["time"] - t_push, 3),
           "eds_response_s": round(eds_r["time"] - t_push, 3),
           "eds_ack_s": round(eds_ack["time"] - t_push, 3)}
    log(f"{proxy}/{mode}: big push applied in {big['applied_s']:.3f} s (CDS ACK "
        f"{big['cds_ack_s']:.3f} s, EDS response {big['eds_response_s']:.3f} s, EDS ACK "
        f"{big['eds_ack_s']:.3f} s)")
    if proxy == "envoy":
        def warmed():
            s = envoy_stats(admin, r"^cluster_manager\.(active|warming)_clusters$")
            big["active_clusters"] = s.get("cluster_manager.active_clusters")
            big["warming_clusters"] = s.get("cluster_manager.warming_clusters")
            return big["warming_clusters"] == 0 and big["active_clusters"] >= a.clusters + 2
        wait_until("envoy clusters active and warmed", warmed, 60, every=0.2)
        big["warmed_check_s"] = round(time.time() - t_push, 3)
    time.sleep(1.0)
    big["cpu_s"] = round(cpu_s(pid) - cpu0, 3)
    big["rss_before_mb"] = round(rss0 / 1024, 1)
    big["rss_after_mb"] = round(status_kb(pid, "VmRSS") / 1024, 1)
    big["rss_peak_mb"] = round(status_kb(pid, "VmHWM") / 1024, 1)
    if proxy == "ringside":
        rs1 = ringside_stats(admin)
        d = {k: rs1.get(k, 0) - rs0.get(k, 0) for k in rs1}
        n = d.get("ringside_config_update_apply_time_us_count", 0)
        big["apply_updates"] = n
        # Prometheus histograms are in seconds.
        big["apply_time_sum_ms"] = round(1000 * d.get("ringside_config_update_apply_time_us_sum", 0), 1)
        si = jhttp(admin, "GET", "/server_info")
        big["config_version"] = si.get("config_version")
    push_to = t_applied + 1.0
    res["big_push"] = big

    # 3. stream of EDS updates
    log(f"{proxy}/{mode}: {a.updates} EDS updates at {a.update_rate}/s")
    rs0 = ringside_stats(admin) if proxy == "ringside" else None
    cpu1 = cpu_s(pid)
    ticks_a, ticks_b = cpu_s(echo_a.pid), cpu_s(echo_b.pid)
    pushes = []
    t_stream = time.time()
    last_log = t_stream
    for k in range(a.updates):
        due = t_stream + k / a.update_rate
        if due > time.time():
            time.sleep(due - time.time())
        v = f"u{k:04d}"
        if k % 10 == 5:
            to_b = (k // 10) % 2 == 0
            res_cla = cla("echo", [("127.0.0.1", pb if to_b else pa)])
        else:
            c = f"bulk-{(k * 7919) % a.clusters:05d}"
            res_cla = cla(c, [(f"127.{128 + k % 64}.{k // 256 % 256}.{j + 1}", 9)
                              for j in range(a.endpoints)])
        r = jhttp(ads.control, "PATCH", "/resources", {"version": v, "endpoints": [res_cla]})
        pushes.append((v, r["time"], res_cla["cluster_name"]))
        if time.time() - last_log >= 2:
            log(f"{proxy}/{mode}: update {k + 1}/{a.updates}")
            last_log = time.time()

    def stream_state():
        ads.poll()
        acked = {}
        for q in ads.reqs:
            if q["type"] == "eds" and q["ack"] and (q["acked_version"] or "").startswith("u"):
                acked.setdefault(q["acked_version"], q["time"])
            if q["type"] == "eds" and q["ack"] is False:
                raise RuntimeError(f"{proxy} NACKed {q['acked_version']}: {q['error_detail']}")
        return acked

    try:
        wait_until(f"{proxy} ACK of the last update",
                   lambda: pushes[-1][0] in stream_state(), a.stream_timeout)
        timed_out = False
    except RuntimeError:
        timed_out = True
        log(f"{proxy}/{mode}: the last update was not applied within {a.stream_timeout} s")
    acked = stream_state()
    t_give_up = time.time()
    times, unapplied = [], 0
    for i, (v, t, _) in enumerate(pushes):
        later = [acked[w] for w, _, _ in pushes[i:] if w in acked]
        if later:
            times.append(min(later) - t)
        else:
            unapplied += 1
            times.append(t_give_up - t)  # a lower bound
    t_stream_end = max(acked.values()) if not timed_out else t_give_up
    st = sorted(times)
    stream = {"updates": len(pushes), "acked_individually": sum(1 for v, _, _ in pushes if v in acked),
              "not_applied": unapplied, "timed_out": timed_out,
              "median_ms": round(1000 * statistics.median(st), 1),
              "p99_ms": round(1000 * pct(st, 0.99), 1), "max_ms": round(1000 * st[-1], 1),
              "note": "SotW: every EDS response carries every assignment"
              if mode == "sotw" else "delta: one assignment per response"}
    time.sleep(1.0)
    stream["cpu_s"] = round(cpu_s(pid) - cpu1, 3)
    stream["echo_a_cpu_s"] = round(cpu_s(echo_a.pid) - ticks_a, 2)
    stream["echo_b_cpu_s"] = round(cpu_s(echo_b.pid) - ticks_b, 2)
    if proxy == "ringside":
        rs1 = ringside_stats(admin)
        d = {k: rs1.get(k, 0) - rs0.get(k, 0) for k in rs1}
        n = d.get("ringside_config_update_apply_time_us_count", 0)
        stream["apply_updates"] = n
        if n:
            stream["apply_time_mean_ms"] = round(
                1000 * d.get("ringside_config_update_apply_time_us_sum", 0) / n, 2)
    else:
        s = envoy_stats(admin, r"^cluster\.echo\.(update_success|membership_total)$")
        stream["echo_stats"] = s
    log(f"{proxy}/{mode}: updates applied: median {stream['median_ms']} ms, p99 "
        f"{stream['p99_ms']} ms, max {stream['max_ms']} ms")
    res["stream"] = stream
    res["rss_end_mb"] = round(status_kb(pid, "VmRSS") / 1024, 1)
    res["rss_peak_end_mb"] = round(status_kb(pid, "VmHWM") / 1024, 1)

    # 4. stop the load, latency windows
    open(stop_f, "w").close()
    load.wait(30)
    PROCS.remove(load)
    samples = []
    with open(samples_f) as f:
        for line in f:
            t, lat, ok = line.split()
            samples.append((int(t) / 1e6, int(lat), ok == "1"))
    res["latency"] = {
        "steady": window(samples, steady_from, t_push),
        "push": window(samples, t_push, push_to),
        "stream": window(samples, t_stream, t_stream_end + 1.0),
    }
    with open(json_f) as f:
        lr = json.load(f)
    res["load_errors"] = lr.get("errors")
    lat = res["latency"]
    log(f"{proxy}/{mode}: p99 steady {lat['steady']['p99_us']} us, push {lat['push']['p99_us']} us"
        f", stream {lat['stream']['p99_us']} us; errors {lr.get('errors')}")
    stop(p)
    stop(ads.proc)
    stop(echo_a)
    stop(echo_b)
    return res


ISTIO_TYPES = ("cds", "eds", "lds", "rds")


def names_of(admin, what):
    """The listener or cluster names (and per cluster its host count) a proxy's admin lists."""
    key = "listener_statuses" if what == "listeners" else "cluster_statuses"
    code, text = http(admin, "GET", f"/{what}?format=json", timeout=60)
    return {x["name"]: len(x.get("host_statuses") or []) for x in json.loads(text).get(key) or []}


def run_istio(a, proxy, mode, work):
    """--istio: one push of istiod's shape for `a.services` services (bench/scripts/
    istio_shape.py) onto a sidecar that has only the virtual listeners; time to ACK, RSS."""
    res = {"proxy": proxy, "mode": mode, "shape": "istio", "services": a.services}
    res["idle_check"] = ic = idle_check()
    log(f"{proxy}/{mode}: machine {'idle' if ic['idle'] else 'NOT IDLE'}: load {ic['loadavg_1m']}"
        f", busy {ic['cpu_busy_pct']}, top {ic['top'][:2]}")
    admin, vout, vin = free_port(), free_port(), free_port()
    ads = Ads(work)
    base = istio_shape.base("init", vout, vin)
    big = istio_shape.services(base, a.services, a.endpoints, "big")
    if proxy == "envoy":
        base, big = istio_shape.for_envoy(base), istio_shape.for_envoy(big)
    res["resources"] = istio_shape.counts(big)
    res["snapshot_json_bytes"] = len(json.dumps(big))
    jhttp(ads.control, "PUT", "/resources", base)
    log(f"{proxy}/{mode}: staging {a.services} services: {res['resources']}")
    st = jhttp(ads.control, "POST", "/stage", big, timeout=300)
    res["stage_build_s"] = round(st["build_s"], 2)
    p = start_proxy(a, proxy, mode, work, ads, admin)
    pid = p.pid

    def base_acked():
        ads.poll()
        return all(any(q["type"] == t and q["ack"] and q["acked_version"] == "init"
                       for q in ads.reqs) for t in ("cds", "lds"))
    wait_until(f"{proxy} ACK of the base config", base_acked, 30)
    wait_port(vout, f"{proxy} virtualOutbound")
    time.sleep(1.0)
    ads.poll()
    cpu0, rss0 = cpu_s(pid), status_kb(pid, "VmRSS")
    n_resp0 = len(ads.resps)
    base_n = istio_shape.counts(base)
    # SotW: one response of each type carries them all; delta: only what changed (the new ones),
    # possibly over several responses.
    want = {t: n - (base_n[t] if mode == "delta" else 0) for t, n in res["resources"].items()}
    log(f"{proxy}/{mode}: push")
    t_push = jhttp(ads.control, "POST", "/push")["time"]

    def pushed():
        ads.poll()
        got = {}
        for t in ISTIO_TYPES:
            total = 0
            for r in ads.resps[n_resp0:]:
                if r["type"] != t or r["version"] != "big":
                    continue
                _, ack, nack = ads.ack_of(lambda x, r=r: x["nonce"] == r["nonce"])
                if nack:
                    raise RuntimeError(f"{proxy} NACKed {t}: {nack['error_detail']}")
                if not ack:
                    continue
                total = total + r["resources"] if mode == "delta" else r["resources"]
                if total >= want[t]:
                    got[t] = (ack["time"] - t_push, r["time"] - t_push)
                    break
        return got if len(got) == len(ISTIO_TYPES) else None

    got = wait_until(f"{proxy} ACK of the push", pushed, a.push_timeout)
    push = {f"{t}_ack_s": round(got[t][0], 3) for t in ISTIO_TYPES}
    # When the server queued the response that completed each type: the time before it is the
    # proxy asking (RDS and EDS names come after LDS and CDS) and the server's own work.
    push.update({f"{t}_response_s": round(got[t][1], 3) for t in ISTIO_TYPES})
    push["applied_s"] = round(max(v[0] for v in got.values()), 3)
    log(f"{proxy}/{mode}: ACKed in {push['applied_s']:.3f} s ({push})")

    # Applied, not only ACKed: every listener and cluster of the push, with its endpoints.
    def in_force():
        ls, cs = names_of(admin, "listeners"), names_of(admin, "clusters")
        missing = [x["name"] for x in big["listeners"] if x["name"] not in ls]
        missing += [x["cluster_name"] for x in big["endpoints"]
                    if cs.get(x["cluster_name"], 0) != a.endpoints]
        return not missing
    wait_until(f"{proxy}: every listener and cluster listed with its endpoints", in_force, 60,
               every=0.2)
    push["in_force_check_s"] = round(time.time() - t_push, 3)
    if proxy == "envoy":
        s = envoy_stats(admin, r"^cluster_manager\.(active|warming)_clusters$|"
                               r"^listener_manager\.total_listeners_(active|warming)$")
        push["envoy_stats"] = s
    time.sleep(1.0)
    push["cpu_s"] = round(cpu_s(pid) - cpu0, 3)
    push["rss_before_mb"] = round(rss0 / 1024, 1)
    push["rss_after_mb"] = round(status_kb(pid, "VmRSS") / 1024, 1)
    push["rss_peak_mb"] = round(status_kb(pid, "VmHWM") / 1024, 1)
    res["push"] = push
    stop(p)
    stop(ads.proc)
    return res


def istio_table(runs):
    """Medians over the runs of each (proxy, mode), with every run's value."""
    groups = {}
    for r in runs:
        groups.setdefault((r["proxy"], r["mode"]), []).append(r)
    rows = [("push to last ACK (CDS, EDS, LDS, RDS), ms", "applied_s", 1000, 0),
            ("  CDS ACK, ms", "cds_ack_s", 1000, 0), ("  EDS ACK, ms", "eds_ack_s", 1000, 0),
            ("  LDS ACK, ms", "lds_ack_s", 1000, 0), ("  RDS ACK, ms", "rds_ack_s", 1000, 0),
            ("  last RDS response queued, ms", "rds_response_s", 1000, 0),
            ("  last EDS response queued, ms", "eds_response_s", 1000, 0),
            ("proxy CPU, push until 1 s after in force, s", "cpu_s", 1, 2),
            ("RSS before the push, MB", "rss_before_mb", 1, 1),
            ("RSS after the push, MB", "rss_after_mb", 1, 1),
            ("peak RSS (VmHWM), MB", "rss_peak_mb", 1, 1)]
    keys = sorted(groups, key=lambda k: (k[0] != "ringside", k[1]))
    out = ["| | " + " | ".join(f"{p} ({m}, {len(groups[(p, m)])} runs)" for p, m in keys) + " |",
           "|---|" + "---:|" * len(keys)]
    for label, key, scale, nd in rows:
        cells = []
        for k in keys:
            vals = [r["push"][key] * scale for r in groups[k]]
            each = ", ".join(f"{v:.{nd}f}" for v in vals)
            cells.append(f"{statistics.median(vals):.{nd}f} [{each}]" if len(vals) > 1
                         else f"{vals[0]:.{nd}f}")
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def _ok(fn):
    try:
        return fn()
    except OSError:
        return False


def fmt(v, scale=1.0, nd=1):
    return "-" if v is None else f"{v / scale:.{nd}f}"


def table(runs):
    """Medians over the runs of each (proxy, mode)."""
    groups = {}
    for r in runs:
        groups.setdefault((r["proxy"], r["mode"]), []).append(r)

    def med(rs, path):
        vals = []
        for r in rs:
            v = r
            for k in path:
                v = v.get(k) if isinstance(v, dict) else None
            if v is not None:
                vals.append(v)
        return statistics.median(vals) if vals else None

    rows = [
        ("big push applied (ACK), ms", ("big_push", "applied_s"), 0.001, 0),
        ("  CDS ACK, ms", ("big_push", "cds_ack_s"), 0.001, 0),
        ("  EDS ACK, ms", ("big_push", "eds_ack_s"), 0.001, 0),
        ("  ringside apply_time (sum), ms", ("big_push", "apply_time_sum_ms"), 1, 1),
        ("proxy CPU during push, s", ("big_push", "cpu_s"), 1, 2),
        ("RSS before push, MB", ("big_push", "rss_before_mb"), 1, 0),
        ("RSS after push, MB", ("big_push", "rss_after_mb"), 1, 0),
        ("peak RSS (VmHWM), MB", ("rss_peak_end_mb",), 1, 0),
        ("EDS update applied, median ms", ("stream", "median_ms"), 1, 1),
        ("EDS update applied, p99 ms", ("stream", "p99_ms"), 1, 1),
        ("EDS update applied, max ms", ("stream", "max_ms"), 1, 1),
        ("updates not applied at the end", ("stream", "not_applied"), 1, 0),
        ("proxy CPU during updates, s", ("stream", "cpu_s"), 1, 2),
        ("steady p50, us", ("latency", "steady", "p50_us"), 1, 0),
        ("steady p99, us", ("latency", "steady", "p99_us"), 1, 0),
        ("steady p999, us", ("latency", "steady", "p999_us"), 1, 0),
        ("push window p99, us", ("latency", "push", "p99_us"), 1, 0),
        ("push window p999, us", ("latency", "push", "p999_us"), 1, 0),
        ("push window max, us", ("latency", "push", "max_us"), 1, 0),
        ("push window, s", ("latency", "push", "seconds"), 1, 2),
        ("push window errors", ("latency", "push", "errors"), 1, 0),
        ("update stream p99, us", ("latency", "stream", "p99_us"), 1, 0),
        ("update stream p999, us", ("latency", "stream", "p999_us"), 1, 0),
        ("update stream errors", ("latency", "stream", "errors"), 1, 0),
    ]
    keys = sorted(groups, key=lambda k: (k[0] != "ringside", k[1]))
    head = "| | " + " | ".join(f"{p} ({m}, {len(groups[(p, m)])} runs)" for p, m in keys) + " |"
    out = [head, "|---|" + "---:|" * len(keys)]
    for label, path, scale, nd in rows:
        cells = [fmt(med(groups[k], path), scale, nd) for k in keys]
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main():
    p = argparse.ArgumentParser(prog="bench/xds-push", description=__doc__.split("\n")[0])
    p.add_argument("--proxies", default="ringside,envoy")
    p.add_argument("--modes", help="sotw,delta (default: sotw; with --istio delta, as "
                   "pilot-agent's bootstrap asks)")
    p.add_argument("--runs", type=int, default=1, help="runs per proxy and mode (median)")
    p.add_argument("--clusters", type=int, default=10000)
    p.add_argument("--endpoints", type=int, help="per cluster (default 10; --istio: 2)")
    p.add_argument("--istio", action="store_true",
                   help="istiod's shape instead: one push of --services services (clusters, "
                   "endpoints, 0.0.0.0_PORT listeners and route configurations, "
                   "bench/scripts/istio_shape.py) onto the virtual listeners; time to ACK, RSS")
    p.add_argument("--services", type=int, default=1000, help="--istio: services")
    p.add_argument("--rate", type=int, default=5000, help="dubbo-load open-loop rate, req/s")
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--steady", type=float, default=10.0, help="steady-state seconds")
    p.add_argument("--updates", type=int, default=50)
    p.add_argument("--update-rate", type=float, default=10.0)
    p.add_argument("--push-timeout", type=float, default=120.0,
                   help="give up on the big push after this many seconds")
    p.add_argument("--stream-timeout", type=float, default=60.0,
                   help="after the last update, wait this long for it to be applied; updates "
                        "still not applied then count with the time until then (a lower bound)")
    p.add_argument("--smoke", action="store_true", help="200 clusters x 2, 5 updates, seconds "
                   "(--istio: 100 services)")
    p.add_argument("--json", help="write every run's results here")
    p.add_argument("--ringside-log", help="RUST_LOG for ringside (e.g. xds=debug)")
    p.add_argument("--target-dir", default=os.environ.get("CARGO_TARGET_DIR",
                                                          os.path.join(ROOT, "target")) + "/release")
    a = p.parse_args()
    a.modes = a.modes or ("delta" if a.istio else "sotw")
    if a.endpoints is None:
        a.endpoints = 2 if a.istio else 10
    if a.smoke and a.istio:
        a.services, a.push_timeout = 100, 30.0
    elif a.smoke:
        a.clusters, a.endpoints, a.updates, a.steady, a.rate = 200, 2, 5, 2.0, 1000
        a.update_rate, a.push_timeout, a.stream_timeout = 10.0, 30.0, 30.0
    a.ringside = os.path.join(a.target_dir, "ringside")
    a.envoy = os.path.join(ROOT, ".cache/bin/envoy")
    proxies = [x for x in a.proxies.split(",") if x]
    if "envoy" in proxies and not os.path.exists(a.envoy):
        if a.smoke:
            log("Envoy not installed (scripts/install-test-deps): smoke run without it")
            proxies.remove("envoy")
        else:
            sys.exit("bench/xds-push: .cache/bin/envoy missing: run scripts/install-test-deps")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    runs = []
    work = tempfile.mkdtemp(prefix="xds-push-")
    try:
        for rep in range(a.runs):
            for mode in a.modes.split(","):
                for proxy in (proxies if rep % 2 == 0 else proxies[::-1]):
                    d = os.path.join(work, f"{proxy}-{mode}-{rep}")
                    os.makedirs(d)
                    log(f"=== run {rep + 1}/{a.runs}: {proxy}, ADS {mode} (logs in {d})")
                    r = (run_istio if a.istio else run_one)(a, proxy, mode, d)
                    r["run"] = rep + 1
                    runs.append(r)
                    if a.json:
                        with open(a.json, "w") as f:
                            json.dump({"command": " ".join(sys.argv), "runs": runs}, f, indent=1)
    finally:
        stop_all()
    print(istio_table(runs) if a.istio else table(runs))
    print()
    for r in runs:
        ic = r["idle_check"]
        if a.istio:
            what = (f"{r['resources']}: ACKed in {r['push']['applied_s'] * 1000:.0f} ms, RSS "
                    f"{r['push']['rss_after_mb']} MB")
        else:
            what = (f"big push {r['big_push']['applied_s'] * 1000:.0f} ms; updates median "
                    f"{r['stream']['median_ms']} ms")
        print(f"{r['proxy']}/{r['mode']} run {r['run']}: machine {'idle' if ic['idle'] else 'NOT IDLE'}"
              f" (load {ic['loadavg_1m']}, busy {ic['cpu_busy_pct']}); {what}")
    if a.smoke and a.istio:
        print("bench/xds-push --istio --smoke: ok")
        return
    if a.smoke:
        bad = [r for r in runs if r["latency"]["steady"]["requests"] == 0]
        if bad:
            sys.exit("bench/xds-push --smoke: no traffic measured")
        print("bench/xds-push --smoke: ok")


if __name__ == "__main__":
    main()
