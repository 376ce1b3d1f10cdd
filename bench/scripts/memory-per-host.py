#!/usr/bin/env python3
"""Idle memory with many clusters and hosts: ringside (per-host stats off and on) vs Envoy 1.40.

Generates the same static config for both (CLUSTERS clusters x HOSTS endpoints each, one TCP
listener), starts each proxy alone, waits for it to settle, reads VmRSS from /proc, and derives
bytes per upstream host from the difference between HOSTS and 1 endpoint per cluster.

    bench/scripts/memory-per-host.py [--clusters 1000] [--hosts 10]

Needs target/release/ringside (cargo build --release) and .cache/bin/envoy
(scripts/install-test-deps). Prints a markdown table.
"""
import argparse, os, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RINGSIDE = os.environ.get("RINGSIDE", os.path.join(ROOT, "target/release/ringside"))
ENVOY = os.path.join(ROOT, ".cache/bin/envoy")
SETTLE_S = 4


def ringside_yaml(clusters, hosts, per_host, admin):
    y = [f"admin: {{address: 127.0.0.1:{admin}}}",
         f"stats: {{per_host: {'true' if per_host else 'false'}}}",
         "listeners:",
         f"  - {{name: l4, address: 127.0.0.1:{admin + 1}, protocol: tcp, cluster: c0}}",
         "clusters:"]
    for c in range(clusters):
        eps = ", ".join(f'"10.{c // 250}.{c % 250}.{h + 1}:20880"' for h in range(hosts))
        y.append(f"  - {{name: c{c}, endpoints: [{eps}]}}")
    return "\n".join(y) + "\n"


def envoy_yaml(clusters, hosts, admin):
    out = [f"""admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
static_resources:
  listeners:
  - name: l4
    address: {{socket_address: {{address: 127.0.0.1, port_value: {admin + 1}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: l4
          cluster: c0
  clusters:"""]
    for c in range(clusters):
        eps = "".join(
            f"\n        - endpoint: {{address: {{socket_address: {{address: 10.{c // 250}.{c % 250}.{h + 1}, port_value: 20880}}}}}}"
            for h in range(hosts))
        out.append(f"""  - name: c{c}
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: c{c}
      endpoints:
      - lb_endpoints:{eps}""")
    return "\n".join(out) + "\n"


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def ready(admin):
    for _ in range(200):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready", timeout=1) as r:
                if r.status == 200:
                    return True
        except Exception:
            pass
        time.sleep(0.1)
    return False


def measure(cmd, admin):
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if not ready(admin):
            sys.exit(f"not ready: {' '.join(cmd)}")
        time.sleep(SETTLE_S)
        return rss_kib(p.pid)
    finally:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--hosts", type=int, default=10)
    ap.add_argument("--no-envoy", action="store_true", help="measure ringside only")
    a = ap.parse_args()
    for b in (RINGSIDE,) if a.no_envoy else (RINGSIDE, ENVOY):
        if not os.path.exists(b):
            sys.exit(f"{b} missing (cargo build --release; scripts/install-test-deps)")
    tmp = tempfile.mkdtemp(prefix="ringside-mem-")
    rows = []
    for name, per_host in (("ringside, per-host stats off", False), ("ringside, per-host stats on", True)):
        r = {}
        for hosts in (1, a.hosts):
            path = os.path.join(tmp, f"r-{per_host}-{hosts}.yaml")
            open(path, "w").write(ringside_yaml(a.clusters, hosts, per_host, 39100))
            r[hosts] = measure([RINGSIDE, "run", "--config", path, "--shards", "2"], 39100)
        rows.append((name, r))
    r = {}
    for hosts in () if a.no_envoy else (1, a.hosts):
        path = os.path.join(tmp, f"e-{hosts}.yaml")
        open(path, "w").write(envoy_yaml(a.clusters, hosts, 39200))
        r[hosts] = measure([ENVOY, "-c", path, "--concurrency", "2", "--base-id", "77",
                            "--log-level", "error"], 39200)
    if not a.no_envoy:
        rows.append(("Envoy 1.40 (concurrency 2)", r))
    extra = a.clusters * (a.hosts - 1)
    print(f"{a.clusters} clusters; RSS with 1 and {a.hosts} endpoints per cluster; "
          f"bytes per host = RSS difference / {extra} extra hosts\n")
    print(f"| proxy | RSS, 1 host/cluster | RSS, {a.hosts} hosts/cluster | bytes per extra host |")
    print("|---|--:|--:|--:|")
    for name, r in rows:
        per = (r[a.hosts] - r[1]) * 1024 / extra
        print(f"| {name} | {r[1] / 1024:.1f} MiB | {r[a.hosts] / 1024:.1f} MiB | {per:,.0f} |")


if __name__ == "__main__":
    main()
