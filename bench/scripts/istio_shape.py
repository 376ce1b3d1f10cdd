"""istiod's output for a sidecar in a mesh of N services, for bench/xds-push --istio.

Built from the `mtls-off` fixture of dataplane/tests/fixtures/istio (istiod's shapes, sources in
its README; mTLS off: no SDS server is needed), resource by resource as istiod builds them per
service port (pilot/pkg/networking/core):
  * per service: one EDS cluster `outbound|PORT||svc-I.ns-K.svc.cluster.local` (the fixture's
    `outbound|9080||details...` with the host replaced; gRPC ports get istiod's explicit HTTP/2
    protocol options) and its ClusterLoadAssignment (`endpoints` pod IPs on 10.244.0.0/16);
  * HTTP and gRPC services (8 in 10): a virtual host in the route configuration `PORT` (one per
    port, the fixture's `9080` shape: domains host, host:port, short names, VIP, each also with
    `:PORT`; istiod's `allow_any` host last) behind one `0.0.0.0_PORT` listener per port (the
    fixture's `0.0.0.0_9080`: protocol-sniffed HTTP chain to RDS, `PassthroughFilterChain`);
  * TCP services (1 in 10): a `VIP_PORT` listener each (the fixture's `10.96.0.10_53`: one
    tcp_proxy chain to the service's cluster);
  * services whose port declares no protocol (1 in 10, ports 443, 8443, 6443, 9443): istiod
    sniffs them, a `VIP_PORT` listener each (the fixture's `10.100.4.52_443`, `bind_to_port:
    false`: an HTTP chain chosen by the sniffed protocol, to RDS `HOST:PORT`, and a catch-all
    `default_filter_chain` tcp_proxy to the service's cluster) and its route configuration
    `HOST:PORT` (the service's virtual host, `allow_any` last);
  * once: the fixture's `virtualOutbound` and `virtualInbound` listeners, `PassthroughCluster`,
    `InboundPassthroughClusterIpv4`, `BlackHoleCluster` and `inbound|80||`.
`base()` is the once-part alone (a sidecar before any service), `services()` adds the N services.
Listeners that bind move to 127.0.0.1 and the given ports (as dataplane/tests/istio.rs does).
`for_envoy()` removes the Istio-only filters that stock Envoy 1.40 does not have (the same rule
as istio.rs's `istio_only`).

Not in this shape: mTLS (`transport_socket_matches` with SDS secrets; there is no SDS server).
"""
import copy
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURE = os.path.join(ROOT, "dataplane/tests/fixtures/istio/mtls-off.json")
# Declared service ports: HTTP (http-*, 9 in 10 services, 50051 named grpc-*) and TCP (tcp-*).
HTTP_PORTS = [8080, 9080, 50051, 8000, 3000, 5000, 7070, 9090]
GRPC_PORTS = {50051}
TCP_PORTS = [5432, 6379, 3306, 27017, 9092]
# Ports without a declared protocol (protocol sniffing).
SNIFFED_PORTS = [443, 8443, 6443, 9443]
TEMPLATE_HOST = "details.default.svc.cluster.local"
TEMPLATE_VIP = "10.96.83.171"
SNIFFED_HOST = "webhook-service.metallb-system.svc.cluster.local"
SNIFFED_VIP = "10.100.4.52"
HPO = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def _fixture():
    with open(FIXTURE) as f:
        d = json.load(f)
    return ({x["name"]: x for x in d["listeners"]}, {x["name"]: x for x in d["routes"]},
            {x["name"]: x for x in d["clusters"]}, {x["cluster_name"]: x for x in d["endpoints"]})


def _replace(x, old, new):
    """Every string in x with `old` replaced by `new` (deep)."""
    if isinstance(x, dict):
        return {k: _replace(v, old, new) for k, v in x.items()}
    if isinstance(x, list):
        return [_replace(v, old, new) for v in x]
    if isinstance(x, str):
        return x.replace(old, new)
    return x


def _loopback(listener, port):
    old = listener["address"]["socket_address"]["port_value"]
    listener["address"] = {"socket_address": {"address": "127.0.0.1", "port_value": port}}
    # istiod matches a listener's own port (virtualOutbound-blackhole, virtualInbound-blackhole).
    for c in listener.get("filter_chains", []):
        if c.get("filter_chain_match", {}).get("destination_port") == old:
            c["filter_chain_match"]["destination_port"] = port
    return listener


def base(version, outbound_port, inbound_port):
    """A sidecar's config before any service: virtual listeners and istiod's fixed clusters."""
    ls, _, cs, _ = _fixture()
    return {"version": version,
            "listeners": [_loopback(copy.deepcopy(ls["virtualOutbound"]), outbound_port),
                          _loopback(copy.deepcopy(ls["virtualInbound"]), inbound_port)],
            "clusters": [copy.deepcopy(cs[n]) for n in ("PassthroughCluster",
                                                        "InboundPassthroughClusterIpv4",
                                                        "BlackHoleCluster", "inbound|80||")],
            "routes": [], "endpoints": []}


def service(i):
    """(host, port, vip, kind) of service i: kind "http", "grpc", "tcp" or "sniffed"."""
    host = f"svc-{i:04d}.ns-{i // 50:02d}.svc.cluster.local"
    vip = f"10.96.{100 + i // 250}.{i % 250 + 1}"
    if i % 10 == 9:
        return host, TCP_PORTS[(i // 10) % len(TCP_PORTS)], vip, "tcp"
    if i % 10 == 8:
        return host, SNIFFED_PORTS[(i // 10) % len(SNIFFED_PORTS)], vip, "sniffed"
    port = HTTP_PORTS[i % len(HTTP_PORTS)]
    return host, port, vip, "grpc" if port in GRPC_PORTS else "http"


def services(doc, n, endpoints, version):
    """`doc` (from base()) plus n services as istiod would push them; returns a new snapshot."""
    ls, rs, cs, es = _fixture()
    http_l, tcp_l = ls["0.0.0.0_9080"], ls["10.96.0.10_53"]
    sniff_l, sniff_r = ls[f"{SNIFFED_VIP}_443"], rs[f"{SNIFFED_HOST}:443"]
    route = rs["9080"]
    vh_t = next(v for v in route["virtual_hosts"] if v["name"] == f"{TEMPLATE_HOST}:9080")
    allow_any = next(v for v in route["virtual_hosts"] if v["name"] == "allow_any")
    c_t = cs[f"outbound|9080||{TEMPLATE_HOST}"]
    e_t = es[f"outbound|9080||{TEMPLATE_HOST}"]
    tcp_name = "outbound|53||kube-dns.kube-system.svc.cluster.local"
    out = copy.deepcopy(doc)
    out["version"] = version
    vhosts = {}
    for i in range(n):
        host, port, vip, kind = service(i)
        cname = f"outbound|{port}||{host}"
        c = _replace(c_t, f"outbound|9080||{TEMPLATE_HOST}", cname)
        c["metadata"]["filter_metadata"]["istio"]["services"] = [
            {"host": host, "name": host.split(".")[0], "namespace": host.split(".")[1]}]
        if kind == "grpc":  # istiod: explicit HTTP/2 for a grpc-* port
            c["typed_extension_protocol_options"] = {HPO: {
                "@type": "type.googleapis.com/" + HPO,
                "explicit_http_config": {"http2_protocol_options": {}}}}
        out["clusters"].append(c)
        e = _replace(e_t, f"outbound|9080||{TEMPLATE_HOST}", cname)
        lbe = e["endpoints"][0]["lb_endpoints"]
        e["endpoints"][0]["lb_endpoints"] = []
        for j in range(endpoints):
            k = i * endpoints + j
            x = copy.deepcopy(lbe[0])
            x["endpoint"]["address"]["socket_address"] = {
                "address": f"10.244.{k // 250}.{k % 250 + 1}", "port_value": port}
            e["endpoints"][0]["lb_endpoints"].append(x)
        out["endpoints"].append(e)
        if kind == "tcp":
            l = _replace(tcp_l, tcp_name, cname)
            l["name"] = f"{vip}_{port}"
            l["address"] = {"socket_address": {"address": vip, "port_value": port}}
            out["listeners"].append(l)
            continue
        name, ns = host.split(".")[:2]
        if kind == "sniffed":
            template = f"outbound|443||{SNIFFED_HOST}"
            l = _replace(sniff_l, template, cname)
            l = _replace(l, f"{SNIFFED_HOST}:443", f"{host}:{port}")
            l = _replace(l, f"{SNIFFED_VIP}_443", f"{vip}_{port}")
            l["address"] = {"socket_address": {"address": vip, "port_value": port}}
            out["listeners"].append(l)
            r = _replace(sniff_r, template, cname)
            r = _replace(r, f"{SNIFFED_HOST}:443", f"{host}:{port}")
            r = _replace(r, SNIFFED_HOST, host)
            # The short names: "webhook-service.metallb-system.svc", "...metallb-system", ...
            r = _replace(r, "webhook-service.metallb-system", f"{name}.{ns}")
            r = _replace(r, "webhook-service", name)
            r = _replace(r, SNIFFED_VIP, vip)
            out["routes"].append(r)
            continue
        vh = _replace(vh_t, TEMPLATE_HOST, host)
        vh = _replace(vh, "9080", str(port))
        vh = _replace(vh, TEMPLATE_VIP, vip)
        # The short names: "details.default.svc", "details.default", "details" (each + :PORT).
        vh = _replace(vh, "details.default", f"{name}.{ns}")
        vh = _replace(vh, "details", name)
        vhosts.setdefault(port, []).append(vh)
    for port in sorted(vhosts):
        r = copy.deepcopy(route)
        r["name"] = str(port)
        r["virtual_hosts"] = vhosts[port] + [copy.deepcopy(allow_any)]
        out["routes"].append(r)
        l = _replace(http_l, "9080", str(port))
        l["address"]["socket_address"]["port_value"] = port
        out["listeners"].append(l)
    return out


def counts(doc):
    return {"lds": len(doc["listeners"]), "rds": len(doc["routes"]), "cds": len(doc["clusters"]),
            "eds": len(doc["endpoints"])}


def _istio_only(f):
    tc = f.get("typed_config") or {}
    ty, inner = tc.get("@type", ""), tc.get("type_url", "")
    return (ty.endswith("/stats.PluginConfig")
            or ty.endswith("/envoy.tcp.metadataexchange.config.MetadataExchange")
            or "/istio." in ty
            or (ty.endswith("TypedStruct") and ("/io.istio." in inner or "metadataexchange" in inner))
            or (ty.endswith("wasm.v3.Wasm")
                and tc.get("config", {}).get("vm_config", {}).get("runtime")
                == "envoy.wasm.runtime.null"))


def for_envoy(x):
    """A copy of x without the filters only istio-proxy has (dataplane/tests/istio.rs)."""
    if isinstance(x, dict):
        y = {}
        for k, v in x.items():
            if k in ("filters", "http_filters") and isinstance(v, list):
                v = [f for f in v if not _istio_only(f)]
            y[k] = for_envoy(v)
        return y
    if isinstance(x, list):
        return [for_envoy(v) for v in x]
    return x


if __name__ == "__main__":
    import sys
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    d = services(base("0", 15001, 15006), n, 2, "1")
    print(json.dumps(counts(d)), len(json.dumps(d)), file=sys.stderr)
    json.dump(d, sys.stdout, indent=1)
