"""A test ADS (xDS v3) control plane, built on PyPI xds-protos + grpcio, for ringside's tests and
for checking xDS behaviour against the real Envoy.

Usage: python server.py [--port P] [--control-port C] [--host 127.0.0.1] [--snapshot FILE]
                        [--tls-cert PEM --tls-key PEM [--tls-client-ca PEM]]
Prints `READY port=P control=C` once both ports listen (0 = pick a free one); exits 0 on SIGTERM
or SIGINT. Restarting on the same ports works (tests restart it to see clients resubscribe).

With --tls-cert/--tls-key, port P serves gRPC over TLS only (as istiod's 15012), with that
certificate; with --tls-client-ca too, a client certificate signed by that CA is required. A
client that fails the handshake never reaches the services (nothing is recorded).

gRPC (port P, and with --sds-socket PATH (repeatable) also on those Unix sockets):
  envoy.service.discovery.v3.AggregatedDiscoveryService StreamAggregatedResources (state of the
  world) and DeltaAggregatedResources (incremental), for the LDS, RDS, CDS, EDS and SDS (Secret)
  v3 type URLs; envoy.service.secret.v3.SecretDiscoveryService StreamSecrets / DeltaSecrets (the
  snapshot's `secrets`, by name, as Istio's pilot-agent serves them). Per stream it behaves like a real control plane:
  * SotW: a request whose subscription (resource_names) changed, or the first one of a type, or
    one that is behind the current snapshot version, is answered with the current resources of
    that type: every resource for LDS/CDS (wildcard), only the requested names for RDS/EDS; each
    response carries the snapshot version and a fresh nonce. A request naming a stale nonce is
    recorded and otherwise ignored. A NACK (error_detail set) is recorded and not answered.
  * Delta: the first request of a type and every subscription change are answered with the
    resources the client lacks or has at another version (version = a digest of the resource),
    plus removed_resources for those gone from the snapshot; LDS/CDS are wildcard unless the
    client names resources; initial_resource_versions (after a reconnect) are honoured.
  * A new snapshot (PUT /resources) is pushed at once to every connected stream, for every type
    it subscribed to, in the order CDS, EDS, LDS, RDS.

Resources are Envoy's proto3 JSON form (as in Envoy's YAML config; Any fields carry `@type`),
parsed with google.protobuf.json_format; the modules of the usual filters are imported below so
their typed_config Any types resolve.

Control API (HTTP/1.1 JSON, port C, loopback):
  PUT  /resources  {"version": "v2", "listeners": [...], "routes": [...], "clusters": [...],
                    "endpoints": [...], "secrets": [...]}   (JSON or YAML body) replaces the whole snapshot and
                    pushes it; 200 {"version": ..., "pushed": N streams} or 400 {"error": ...}
                    when a resource does not parse.
  PATCH /resources {"version": "v3", "clusters": [...], "endpoints": [...], ...,
                    "remove": {"clusters": [names], ...}}  changes only the named resources of
                    the current snapshot (added or replaced; `remove` drops them) under a new
                    version and pushes it, only for the types it changes (a SotW stream is sent
                    every resource of those types); 200/400 as PUT. Only the given resources are parsed,
                    so a one-resource change of a 10,000-cluster snapshot costs one resource.
  POST /generate   {"version": "v1", "clusters": N, "endpoints_per_cluster": M,
                    "prefix": "bulk-", "port": 9, "first_address": "127.64.0.1",
                    "base": {snapshot as PUT}, "stage": false}  a bulk snapshot built
                    directly as protos (no JSON parsing): `base` plus N EDS clusters named
                    prefix00000.. (connect_timeout 1 s, EDS over ADS) and their
                    ClusterLoadAssignments of M endpoints each, consecutive IPv4 addresses
                    from first_address on `port`. With "stage": true it is only built (200
                    {"staged": version, "build_s": ...}); POST /push then makes the staged
                    snapshot current and pushes it, so building costs nothing in the push.
  POST /stage      {snapshot as PUT}: parses it and stages it for POST /push (200 {"staged":
                    version, "build_s": ...}), so parsing costs nothing in the push.
  POST /push       makes the staged snapshot current and pushes it: 200 {"version", "pushed",
                    "time": when the first response was queued (Unix s)}.
  GET  /resources  the current snapshot as given (a generated or patched one: as proto3 JSON).
  GET  /requests   every request received, in order: {seq, stream, mode (sotw|delta), node,
                   type (short: lds/rds/cds/eds), type_url, version_info, response_nonce,
                   resource_names, error_detail ({code, message} or null), acked_version (the
                   version of the response the nonce answers, or null), ack (true for an ACK,
                   false for a NACK, null for a request that answers no response)} and for delta
                   resource_names_subscribe/_unsubscribe, initial_resource_versions.
  GET  /responses  every response sent: {seq, stream, mode, type, version, nonce, resources
                   (names), removed (delta)}.
  GET  /requests?since=SEQ, /responses?since=SEQ  only the records after SEQ, each name list
                   replaced by its length (cheap to poll with 10,000 resources); records carry
                   `time` (Unix s: received, or queued to send).
  GET  /streams    the connected streams: {id, mode, node, cluster, first_node (the whole
                   Node of the stream's first request as proto3 JSON, null if it had none),
                   types}.
  POST /reset      forgets the recorded requests and responses.
"""
import argparse
import hashlib
import itertools
import json
import os
import queue
import signal
import sys
import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# SIGTERM/SIGINT are blocked in every thread (threads inherit the mask, so block before grpc starts
# any) and taken synchronously by sigwait in main(), as in tests/peers/dubbo_triple/server.py.
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)

import grpc  # noqa: E402
import yaml  # noqa: E402
from google.protobuf import any_pb2, duration_pb2, json_format  # noqa: E402

from envoy.config.core.v3 import address_pb2, config_source_pb2  # noqa: E402

from envoy.config.cluster.v3 import cluster_pb2  # noqa: E402
from envoy.config.endpoint.v3 import endpoint_pb2  # noqa: E402
from envoy.config.listener.v3 import listener_pb2  # noqa: E402
from envoy.config.route.v3 import route_pb2  # noqa: E402
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2  # noqa: E402
from envoy.service.secret.v3 import sds_pb2_grpc  # noqa: E402

# Imported for their side effect: their messages join the default descriptor pool, so
# json_format resolves `@type` in typed_config.
from envoy.extensions.filters.network.dubbo_proxy.v3 import dubbo_proxy_pb2  # noqa: E402,F401
from envoy.extensions.filters.network.dubbo_proxy.v3 import route_pb2 as _dr  # noqa: E402,F401
from envoy.extensions.filters.network.dubbo_proxy.router.v3 import router_pb2 as _drr  # noqa: E402,F401,E501
from envoy.extensions.filters.network.generic_proxy.v3 import generic_proxy_pb2  # noqa: E402,F401
from envoy.extensions.filters.network.generic_proxy.codecs.dubbo.v3 import dubbo_pb2  # noqa: E402,F401,E501
from envoy.extensions.filters.network.generic_proxy.router.v3 import router_pb2 as _gr  # noqa: E402,F401,E501
from envoy.extensions.filters.network.generic_proxy.action.v3 import action_pb2  # noqa: E402,F401
from envoy.extensions.filters.network.generic_proxy.matcher.v3 import matcher_pb2  # noqa: E402,F401,E501
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2  # noqa: E402,F401,E501
from envoy.extensions.filters.http.router.v3 import router_pb2 as _hr  # noqa: E402,F401
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2  # noqa: E402,F401
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: E402,F401
from envoy.extensions.matching.common_inputs.network.v3 import network_inputs_pb2  # noqa: E402,F401,E501
from xds.type.matcher.v3 import matcher_pb2 as _xm  # noqa: E402,F401
# What istiod sends a sidecar (dataplane/tests/fixtures/istio): the filters Envoy has, TLS,
# TypedStruct wrappers, and (below) the Istio-only messages that only istio-proxy builds know.
from envoy.extensions.filters.http.cors.v3 import cors_pb2  # noqa: E402,F401
from envoy.extensions.filters.http.fault.v3 import fault_pb2  # noqa: E402,F401
from envoy.extensions.filters.http.grpc_stats.v3 import config_pb2 as _gs  # noqa: E402,F401
# Governance (docs/governance.md).
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2  # noqa: E402,F401,E501
# RequestAuthentication (docs/security.md).
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as _jwt  # noqa: E402,F401
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2  # noqa: E402,F401
# CUSTOM AuthorizationPolicy (external authorization).
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2  # noqa: E402,F401
from envoy.extensions.filters.network.ext_authz.v3 import ext_authz_pb2 as _nea  # noqa: E402,F401,E501
from envoy.extensions.filters.http.wasm.v3 import wasm_pb2  # noqa: E402,F401
from envoy.extensions.filters.listener.http_inspector.v3 import http_inspector_pb2  # noqa: E402,F401,E501
from envoy.extensions.filters.listener.original_dst.v3 import original_dst_pb2  # noqa: E402,F401,E501
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2  # noqa: E402,F401,E501
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as _nr  # noqa: E402,F401
from envoy.extensions.request_id.uuid.v3 import uuid_pb2  # noqa: E402,F401
from envoy.extensions.path.match.uri_template.v3 import uri_template_match_pb2  # noqa: E402,F401,E501
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2  # noqa: E402,F401,E501
from envoy.extensions.retry.priority.previous_priorities.v3 import previous_priorities_config_pb2  # noqa: E402,F401,E501
from envoy.extensions.transport_sockets.raw_buffer.v3 import raw_buffer_pb2  # noqa: E402,F401
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2  # noqa: E402,F401
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2  # noqa: E402
from udpa.type.v1 import typed_struct_pb2  # noqa: E402,F401
from envoy.extensions.access_loggers.file.v3 import file_pb2 as _alf  # noqa: E402,F401
from envoy.extensions.access_loggers.stream.v3 import stream_pb2 as _als  # noqa: E402,F401
# Tracing (docs/observability.md#tracing).
from envoy.config.trace.v3 import opentelemetry_pb2 as _otel  # noqa: E402,F401
from xds.type.v3 import typed_struct_pb2 as _ts3  # noqa: E402,F401


def _istio_only_messages():
    """Adds to the default pool the Istio-only messages istiod puts in typed_config (they live
    in istio/api and istio/proxy, not in xds-protos), with the fields the fixtures use. Their
    field numbers follow those protos as far as the fixtures need; neither ringside nor the
    Envoy oracle (which gets them removed) decodes them."""
    from google.protobuf import descriptor_pb2, descriptor_pool
    T = descriptor_pb2.FieldDescriptorProto
    files = [
        ("istio_only/stats.proto", "stats", [("PluginConfig", [
            ("disable_host_header_fallback", 8, T.TYPE_BOOL, T.LABEL_OPTIONAL, None)])]),
        ("istio_only/metadata_exchange.proto", "envoy.tcp.metadataexchange.config", [
            ("MetadataExchange", [("protocol", 1, T.TYPE_STRING, T.LABEL_OPTIONAL, None),
                                  ("enable_discovery", 2, T.TYPE_BOOL, T.LABEL_OPTIONAL, None)])]),
        ("istio_only/alpn.proto", "istio.envoy.config.filter.http.alpn.v2alpha1", [
            ("FilterConfig", [("alpn_override", 1, T.TYPE_MESSAGE, T.LABEL_REPEATED,
                               ".istio.envoy.config.filter.http.alpn.v2alpha1.AlpnOverride")]),
            ("AlpnOverride", [("upstream_protocol", 1, T.TYPE_ENUM, T.LABEL_OPTIONAL,
                               ".istio.envoy.config.filter.http.alpn.v2alpha1.Protocol"),
                              ("alpn_override", 2, T.TYPE_STRING, T.LABEL_REPEATED, None)])]),
    ]
    pool = descriptor_pool.Default()
    for fname, package, messages in files:
        fd = descriptor_pb2.FileDescriptorProto(name=fname, package=package, syntax="proto3")
        if package.endswith("alpn.v2alpha1"):
            e = fd.enum_type.add(name="Protocol")
            for i, n in enumerate(["HTTP10", "HTTP11", "HTTP2"]):
                e.value.add(name=n, number=i)
        for mname, fields in messages:
            m = fd.message_type.add(name=mname)
            for n, num, ty, label, tname in fields:
                f = m.field.add(name=n, number=num, type=ty, label=label, json_name=None)
                f.ClearField("json_name")
                if tname:
                    f.type_name = tname
        pool.AddSerializedFile(fd.SerializeToString())


_istio_only_messages()

PREFIX = "type.googleapis.com/"
LDS = PREFIX + "envoy.config.listener.v3.Listener"
RDS = PREFIX + "envoy.config.route.v3.RouteConfiguration"
CDS = PREFIX + "envoy.config.cluster.v3.Cluster"
EDS = PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
SDS = PREFIX + "envoy.extensions.transport_sockets.tls.v3.Secret"
# snapshot key, message class, the field that names a resource, short name
TYPES = {
    SDS: ("secrets", secret_pb2.Secret, "name", "sds"),
    CDS: ("clusters", cluster_pb2.Cluster, "name", "cds"),
    EDS: ("endpoints", endpoint_pb2.ClusterLoadAssignment, "cluster_name", "eds"),
    LDS: ("listeners", listener_pb2.Listener, "name", "lds"),
    RDS: ("routes", route_pb2.RouteConfiguration, "name", "rds"),
}
PUSH_ORDER = [SDS, CDS, EDS, LDS, RDS]
WILDCARD_TYPES = {LDS, CDS}


def short(type_url):
    return TYPES[type_url][3] if type_url in TYPES else type_url


def parse_snapshot(doc):
    """{"version", "listeners", ...} -> (version, {type_url: {name: (Any, digest)}}, doc)."""
    if not isinstance(doc, dict):
        raise ValueError("the snapshot must be an object")
    unknown = set(doc) - {"version", "listeners", "routes", "clusters", "endpoints", "secrets"}
    if unknown:
        raise ValueError(f"unknown snapshot keys: {sorted(unknown)}")
    resources = {}
    for type_url, (key, cls, name_field, _) in TYPES.items():
        by_name = {}
        for i, r in enumerate(doc.get(key) or []):
            msg = cls()
            try:
                json_format.ParseDict(r, msg)
            except Exception as e:  # noqa: BLE001 (ParseError, TypeError for an unknown @type)
                raise ValueError(f"{key}[{i}]: {e}") from None
            name = getattr(msg, name_field)
            if not name:
                raise ValueError(f"{key}[{i}]: no {name_field}")
            if name in by_name:
                raise ValueError(f"{key}: {name} twice")
            a = any_pb2.Any()
            a.Pack(msg)
            by_name[name] = (a, hashlib.sha256(a.value).hexdigest()[:12])
        resources[type_url] = by_name
    return str(doc.get("version", "1")), resources, doc


def load_text(text):
    text = text.strip()
    if not text:
        return {}
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return yaml.safe_load(text)


class Stream:
    """One ADS stream: its outbound queue and its per-type state."""

    def __init__(self, sid, mode, peer):
        self.id = sid
        self.mode = mode
        self.peer = peer
        self.node = ""
        self.cluster = ""
        # The whole Node of the stream's first request (proto3 JSON), None when it had none:
        # istiod reads it from the first request only.
        self.first_node = None
        self.seen = False
        self.out = queue.Queue()
        # SotW: type -> {"names": set or None (wildcard), "version": sent, "nonce": last}
        # Delta: type -> {"wildcard": bool, "names": set, "sent": {name: digest}}
        self.types = {}


class State:
    def __init__(self):
        self.lock = threading.Lock()
        self.version, self.resources, self.doc = parse_snapshot({"version": "0"})
        self.streams = {}
        self.requests = []
        self.responses = []
        self.nonce_version = {}  # nonce -> version of the response that carried it
        self.ids = itertools.count(1)
        self.nonces = itertools.count(1)
        self.staged = None
        self.pushed_at = None

    # --- snapshot ------------------------------------------------------------------------------
    def set_snapshot(self, doc):
        return self.set_parsed(*parse_snapshot(doc))

    def patch(self, doc):
        """PATCH /resources: only the given resources change (remove: names per key)."""
        if not isinstance(doc, dict):
            raise ValueError("the patch must be an object")
        remove = doc.pop("remove", None) or {}
        keys = {v[0] for v in TYPES.values()}
        if not isinstance(remove, dict) or set(remove) - keys:
            raise ValueError(f"remove: an object with keys among {sorted(keys)}")
        version, changed, _ = parse_snapshot(doc)
        with self.lock:
            resources = {t: dict(by_name) for t, by_name in self.resources.items()}
        for t, by_name in changed.items():
            resources[t].update(by_name)
            for n in remove.get(TYPES[t][0]) or []:
                resources[t].pop(n, None)
        pushed = {t for t in TYPES if changed[t] or remove.get(TYPES[t][0])}
        return self.set_parsed(version, resources, None, types=pushed)

    def generate(self, spec):
        """POST /generate: `base` plus N EDS clusters and their endpoints, built as protos."""
        t0 = time.time()
        version, resources, _ = parse_snapshot(dict(spec.get("base") or {}, version="x"))
        version = str(spec.get("version", "1"))
        n, m = int(spec.get("clusters", 0)), int(spec.get("endpoints_per_cluster", 1))
        prefix, port = str(spec.get("prefix", "bulk-")), int(spec.get("port", 9))
        a, b, c, d = (int(x) for x in str(spec.get("first_address", "127.64.0.1")).split("."))
        ip0 = (a << 24) | (b << 16) | (c << 8) | d
        tmpl = cluster_pb2.Cluster(
            type=cluster_pb2.Cluster.EDS, connect_timeout=duration_pb2.Duration(seconds=1),
            eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(
                eds_config=config_source_pb2.ConfigSource(
                    ads=config_source_pb2.AggregatedConfigSource(),
                    resource_api_version=config_source_pb2.V3)))
        clusters, cla = resources[CDS], resources[EDS]
        for i in range(n):
            name = f"{prefix}{i:05d}"
            c_msg = cluster_pb2.Cluster()
            c_msg.CopyFrom(tmpl)
            c_msg.name = name
            e_msg = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
            lle = e_msg.endpoints.add()
            for j in range(m):
                ip = ip0 + i * m + j
                sa = lle.lb_endpoints.add().endpoint.address.socket_address
                sa.address = f"{ip >> 24}.{(ip >> 16) & 255}.{(ip >> 8) & 255}.{ip & 255}"
                sa.port_value = port
            for by_name, msg in ((clusters, c_msg), (cla, e_msg)):
                if name in by_name:
                    raise ValueError(f"{name} twice")
                any_ = any_pb2.Any()
                any_.Pack(msg)
                by_name[name] = (any_, hashlib.sha256(any_.value).hexdigest()[:12])
        return version, resources, time.time() - t0

    def set_parsed(self, version, resources, doc, types=None):
        """Makes a parsed snapshot current (doc None: GET /resources renders it) and pushes
        it to every stream, for the subscribed types among `types` (None: all); returns the
        number of streams pushed. SotW streams are marked as holding the new version for the
        other types (their resources did not change), so a late ACK triggers no resend."""
        with self.lock:
            self.version, self.resources, self.doc = version, resources, doc
            pushed = 0
            self.pushed_at = time.time()
            for s in self.streams.values():
                sent = False
                for t in PUSH_ORDER:
                    if t not in s.types:
                        continue
                    if types is not None and t not in types:
                        if s.mode == "sotw":
                            s.types[t]["version"] = version
                        continue
                    sent |= (self._sotw_send if s.mode == "sotw" else self._delta_send)(s, t)
                pushed += sent
            return pushed

    def render_doc(self):
        """The current snapshot as proto3 JSON (for one given as PATCH or POST /generate)."""
        if self.doc is None:
            doc = {"version": self.version}
            for t, (key, cls, _, _) in TYPES.items():
                doc[key] = [json_format.MessageToDict(cls.FromString(a.value))
                            for a, _ in self.resources[t].values()]
            self.doc = doc
        return self.doc

    # --- bookkeeping ---------------------------------------------------------------------------
    def _record(self, s, req, extra):
        nonce = req.response_nonce
        acked = self.nonce_version.get(nonce) if nonce else None
        err = None
        if req.HasField("error_detail"):
            err = {"code": req.error_detail.code, "message": req.error_detail.message}
        rec = {
            "seq": len(self.requests) + 1,
            "time": time.time(),
            "stream": s.id,
            "mode": s.mode,
            "node": s.node,
            "type": short(req.type_url),
            "type_url": req.type_url,
            "response_nonce": nonce,
            "error_detail": err,
            "acked_version": acked,
            "ack": None if acked is None else err is None,
        }
        rec.update(extra)
        self.requests.append(rec)

    def _nonce(self):
        return str(next(self.nonces))

    def _emit(self, s, resp, type_url, version, names, removed=None):
        self.nonce_version[resp.nonce] = version
        rec = {
            "seq": len(self.responses) + 1,
            "time": time.time(),
            "stream": s.id,
            "mode": s.mode,
            "type": short(type_url),
            "version": version,
            "nonce": resp.nonce,
            "resources": names,
        }
        if removed is not None:
            rec["removed"] = removed
        self.responses.append(rec)
        s.out.put(resp)

    def _node(self, s, req):
        if not s.seen:
            s.seen = True
            if req.HasField("node"):
                s.first_node = json_format.MessageToDict(req.node)
        if req.HasField("node") and not s.node:
            s.node, s.cluster = req.node.id, req.node.cluster

    # --- state of the world --------------------------------------------------------------------
    def sotw_request(self, s, req):
        with self.lock:
            self._node(s, req)
            t = req.type_url
            self._record(s, req, {"version_info": req.version_info,
                                  "resource_names": list(req.resource_names)})
            if t not in TYPES:
                return
            st = s.types.get(t)
            names = set(req.resource_names)
            wildcard = t in WILDCARD_TYPES and (not names or "*" in names)
            want = None if wildcard else names
            if st is not None and req.response_nonce and req.response_nonce != st["nonce"]:
                return  # stale: answers an older response
            if req.HasField("error_detail"):
                if st is not None:
                    st["names"] = want
                return  # NACK: keep what we have, answer on the next change
            first = st is None
            if first:
                st = s.types[t] = {"names": want, "version": None, "nonce": ""}
            changed = st["names"] != want
            st["names"] = want
            if first or changed or st["version"] != self.version:
                self._sotw_send(s, t)

    def _sotw_send(self, s, t):
        st = s.types[t]
        have = self.resources[t]
        names = sorted(have) if st["names"] is None else sorted(n for n in st["names"] if n in have)
        resp = discovery_pb2.DiscoveryResponse(
            version_info=self.version, type_url=t, nonce=self._nonce(),
            resources=[have[n][0] for n in names])
        st["version"], st["nonce"] = self.version, resp.nonce
        self._emit(s, resp, t, self.version, names)
        return True

    # --- delta ---------------------------------------------------------------------------------
    def delta_request(self, s, req):
        with self.lock:
            self._node(s, req)
            t = req.type_url
            self._record(s, req, {
                "version_info": None,
                "resource_names": list(req.resource_names_subscribe),
                "resource_names_subscribe": list(req.resource_names_subscribe),
                "resource_names_unsubscribe": list(req.resource_names_unsubscribe),
                "initial_resource_versions": dict(req.initial_resource_versions),
            })
            if t not in TYPES:
                return
            st = s.types.get(t)
            first = st is None
            if first:
                sub = set(req.resource_names_subscribe)
                st = s.types[t] = {
                    "wildcard": t in WILDCARD_TYPES and (not sub or "*" in sub),
                    "names": set(),
                    "sent": dict(req.initial_resource_versions),
                }
            for n in req.resource_names_subscribe:
                if n == "*":
                    st["wildcard"] = True
                else:
                    st["names"].add(n)
            for n in req.resource_names_unsubscribe:
                if n == "*":
                    st["wildcard"] = False
                else:
                    st["names"].discard(n)
                    if not st["wildcard"]:
                        st["sent"].pop(n, None)
            if req.HasField("error_detail"):
                return
            self._delta_send(s, t, always=first)

    def _delta_send(self, s, t, always=False):
        st = s.types[t]
        have = self.resources[t]
        scope = set(have) if st["wildcard"] else (st["names"] & set(have))
        changed = sorted(n for n in scope if st["sent"].get(n) != have[n][1])
        gone = sorted(n for n in st["sent"]
                      if n not in have and (st["wildcard"] or n in st["names"]))
        if not changed and not gone and not always:
            return False
        resp = discovery_pb2.DeltaDiscoveryResponse(
            system_version_info=self.version, type_url=t, nonce=self._nonce(),
            removed_resources=gone,
            resources=[discovery_pb2.Resource(name=n, version=have[n][1], resource=have[n][0])
                       for n in changed])
        for n in changed:
            st["sent"][n] = have[n][1]
        for n in gone:
            del st["sent"][n]
        self._emit(s, resp, t, self.version, changed, gone)
        return True

    # --- streams -------------------------------------------------------------------------------
    def open(self, mode, peer):
        with self.lock:
            s = Stream(next(self.ids), mode, peer)
            self.streams[s.id] = s
            return s

    def close(self, s):
        with self.lock:
            self.streams.pop(s.id, None)
        s.out.put(None)


STATE = State()


class Ads(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    def _serve(self, mode, request_iterator, context, handle):
        s = STATE.open(mode, context.peer())
        context.add_callback(lambda: STATE.close(s))

        def read():
            try:
                for req in request_iterator:
                    handle(s, req)
            except Exception as e:  # noqa: BLE001 (a cancelled stream ends the iterator so)
                if context.is_active():
                    print(f"stream {s.id}: {e!r}", file=sys.stderr, flush=True)
            finally:
                STATE.close(s)

        threading.Thread(target=read, daemon=True).start()
        while True:
            resp = s.out.get()
            if resp is None:
                return
            yield resp

    def StreamAggregatedResources(self, request_iterator, context):
        return self._serve("sotw", request_iterator, context, STATE.sotw_request)

    def DeltaAggregatedResources(self, request_iterator, context):
        return self._serve("delta", request_iterator, context, STATE.delta_request)


class Sds(sds_pb2_grpc.SecretDiscoveryServiceServicer):
    """SDS on its own service (pilot-agent's shape): the snapshot's `secrets`, by name."""

    def StreamSecrets(self, request_iterator, context):
        return Ads()._serve("sotw", request_iterator, context, STATE.sotw_request)

    def DeltaSecrets(self, request_iterator, context):
        return Ads()._serve("delta", request_iterator, context, STATE.delta_request)


class Control(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def _reply(self, code, obj):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n).decode() if n else ""

    def do_GET(self):
        path, _, query = self.path.partition("?")
        if query and path in ("/requests", "/responses"):
            # ?since=SEQ: only the records after SEQ, without the name lists (their lengths
            # instead), so a driver can poll a 10,000-resource stream cheaply.
            q = dict(kv.partition("=")[::2] for kv in query.split("&"))
            since = int(q.get("since") or 0)
            with STATE.lock:
                recs = (STATE.requests if path == "/requests" else STATE.responses)[since:]
                out = []
                for r in recs:
                    r = dict(r)
                    for k in ("resource_names", "resources", "removed",
                              "resource_names_subscribe", "resource_names_unsubscribe",
                              "initial_resource_versions"):
                        if isinstance(r.get(k), (list, dict)):
                            r[k] = len(r[k])
                    out.append(r)
            return self._reply(200, out)
        with STATE.lock:
            if self.path == "/requests":
                return self._reply(200, list(STATE.requests))
            if self.path == "/responses":
                return self._reply(200, list(STATE.responses))
            if self.path == "/resources":
                return self._reply(200, STATE.render_doc())
            if self.path == "/streams":
                return self._reply(200, [
                    {"id": s.id, "mode": s.mode, "node": s.node, "cluster": s.cluster,
                     "first_node": s.first_node,
                     "peer": s.peer, "types": sorted(short(t) for t in s.types)}
                    for s in STATE.streams.values()])
        self._reply(404, {"error": f"no {self.path}"})

    def do_PATCH(self):
        if self.path != "/resources":
            return self._reply(404, {"error": f"no {self.path}"})
        try:
            pushed = STATE.patch(load_text(self._body()))
        except (ValueError, yaml.YAMLError) as e:
            return self._reply(400, {"error": str(e)})
        self._reply(200, {"version": STATE.version, "pushed": pushed, "time": STATE.pushed_at})

    def do_PUT(self):
        if self.path != "/resources":
            return self._reply(404, {"error": f"no {self.path}"})
        body = self._body()
        try:
            pushed = STATE.set_snapshot(load_text(body))
        except (ValueError, yaml.YAMLError) as e:
            return self._reply(400, {"error": str(e)})
        self._reply(200, {"version": STATE.version, "pushed": pushed})

    def do_POST(self):
        body = self._body()
        if self.path == "/generate":
            try:
                spec = load_text(body)
                version, resources, build_s = STATE.generate(spec)
            except (ValueError, TypeError, yaml.YAMLError) as e:
                return self._reply(400, {"error": str(e)})
            if spec.get("stage"):
                STATE.staged = (version, resources)
                return self._reply(200, {"staged": version, "build_s": build_s})
            pushed = STATE.set_parsed(version, resources, None)
            return self._reply(200, {"version": version, "pushed": pushed, "build_s": build_s,
                                     "time": STATE.pushed_at})
        if self.path == "/stage":
            t0 = time.time()
            try:
                version, resources, _ = parse_snapshot(load_text(body))
            except (ValueError, yaml.YAMLError) as e:
                return self._reply(400, {"error": str(e)})
            STATE.staged = (version, resources)
            return self._reply(200, {"staged": version, "build_s": time.time() - t0})
        if self.path == "/push":
            if STATE.staged is None:
                return self._reply(400, {"error": "nothing staged (POST /generate with stage, "
                                                  "or POST /stage)"})
            (version, resources), STATE.staged = STATE.staged, None
            pushed = STATE.set_parsed(version, resources, None)
            return self._reply(200, {"version": version, "pushed": pushed,
                                     "time": STATE.pushed_at})
        if self.path == "/reset":
            with STATE.lock:
                STATE.requests.clear()
                STATE.responses.clear()
            return self._reply(200, {})
        self._reply(404, {"error": f"no {self.path}"})


def main():
    p = argparse.ArgumentParser(prog="xds-server", description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="ADS gRPC port (0: pick one)")
    p.add_argument("--control-port", type=int, default=0, help="HTTP control port (0: pick)")
    p.add_argument("--snapshot", help="initial resources, JSON or YAML (as PUT /resources)")
    p.add_argument("--sds-socket", action="append", default=[],
                   help="also serve gRPC (ADS, and SDS: the snapshot's secrets) on this Unix "
                   "socket, as pilot-agent does (repeatable)")
    p.add_argument("--tls-cert", help="serve --port over TLS with this certificate chain (PEM)")
    p.add_argument("--tls-key", help="the key of --tls-cert (PEM)")
    p.add_argument("--tls-client-ca",
                   help="with --tls-cert: require a client certificate this CA (PEM) signed")
    a = p.parse_args()
    if bool(a.tls_cert) != bool(a.tls_key):
        p.error("--tls-cert and --tls-key go together")
    if a.tls_client_ca and not a.tls_cert:
        p.error("--tls-client-ca needs --tls-cert")
    if a.snapshot:
        with open(a.snapshot) as f:
            try:
                STATE.set_snapshot(load_text(f.read()))
            except ValueError as e:
                p.error(f"--snapshot: {e}")

    # Each ADS stream holds a worker thread for its life.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=64),
                         options=[("grpc.so_reuseport", 0)])
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(Ads(), server)
    sds_pb2_grpc.add_SecretDiscoveryServiceServicer_to_server(Sds(), server)
    if a.tls_cert:
        def read(path):
            with open(path, "rb") as f:
                return f.read()
        creds = grpc.ssl_server_credentials(
            [(read(a.tls_key), read(a.tls_cert))],
            root_certificates=read(a.tls_client_ca) if a.tls_client_ca else None,
            require_client_auth=bool(a.tls_client_ca))
        port = server.add_secure_port(f"{a.host}:{a.port}", creds)
    else:
        port = server.add_insecure_port(f"{a.host}:{a.port}")
    if port == 0:
        print(f"cannot listen on {a.host}:{a.port}", file=sys.stderr, flush=True)
        os._exit(1)
    for path in a.sds_socket:
        if os.path.exists(path):
            os.unlink(path)
        if server.add_insecure_port(f"unix:{path}") == 0:
            print(f"cannot listen on unix:{path}", file=sys.stderr, flush=True)
            os._exit(1)
    server.start()

    ThreadingHTTPServer.allow_reuse_address = True
    ThreadingHTTPServer.daemon_threads = True
    try:
        http = ThreadingHTTPServer((a.host, a.control_port), Control)
    except OSError as e:
        print(f"control port {a.control_port}: {e}", file=sys.stderr, flush=True)
        os._exit(1)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    print(f"READY port={port} control={http.server_address[1]}", flush=True)

    signal.sigwait(STOP_SIGNALS)
    http.shutdown()
    server.stop(grace=None)
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
