//! The client against an in-process tonic ADS server on loopback.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use envoy_types::pb::google::protobuf::Any;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{TcpListenerStream, UnboundedReceiverStream};
use tonic::{Request, Response, Status};

use crate::proto::{CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE};
use crate::testing::*;
use crate::{Change, ClusterEndpoints, Handle, Update, Versions};

/// An update as the data plane ends up running it: an endpoints-only change is patched into
/// the config the last update left (what `dataplane`'s composer does).
#[derive(Debug)]
struct Applied {
    config: config::Config,
    versions: Versions,
    /// The update was a [`Change::Endpoints`]; these are its clusters.
    eds_only: Option<Vec<ClusterEndpoints>>,
}

// === impl Applied ===

impl Applied {
    fn eds_only(&self) -> bool {
        self.eds_only.is_some()
    }

    fn follow(last: &mut Option<config::Config>, u: Update) -> Result<Applied, String> {
        let (config, eds_only) = match u.change {
            Change::Full(c) => (*c, None),
            Change::Endpoints(changed) => {
                let mut c = last
                    .clone()
                    .ok_or("endpoints change before a full config")?;
                for e in &changed {
                    let cluster = c
                        .clusters
                        .iter_mut()
                        .find(|x| x.name == e.cluster)
                        .ok_or_else(|| {
                            format!("endpoints change of unknown cluster {:?}", e.cluster)
                        })?;
                    cluster.endpoints = e.endpoints.clone();
                }
                (c, Some(changed))
            }
        };
        *last = Some(config.clone());
        Ok(Applied {
            config,
            versions: u.versions,
            eds_only,
        })
    }
}

#[derive(Debug)]
enum Req {
    Sotw(DiscoveryRequest),
    Delta(DeltaDiscoveryRequest),
}

type SotwTx = mpsc::UnboundedSender<Result<DiscoveryResponse, Status>>;
type DeltaTx = mpsc::UnboundedSender<Result<DeltaDiscoveryResponse, Status>>;

#[derive(Clone)]
struct Ads {
    requests: mpsc::UnboundedSender<Req>,
    sotw: Arc<Mutex<Option<SotwTx>>>,
    delta: Arc<Mutex<Option<DeltaTx>>>,
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream =
        UnboundedReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaAggregatedResourcesStream =
        UnboundedReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<tonic::Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::unbounded_channel();
        *self.sotw.lock().unwrap() = Some(tx);
        let requests = self.requests.clone();
        tokio::spawn(async move {
            while let Ok(Some(r)) = inbound.message().await {
                let _ = requests.send(Req::Sotw(r));
            }
        });
        Ok(Response::new(UnboundedReceiverStream::new(rx)))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<tonic::Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::unbounded_channel();
        *self.delta.lock().unwrap() = Some(tx);
        let requests = self.requests.clone();
        tokio::spawn(async move {
            while let Ok(Some(r)) = inbound.message().await {
                let _ = requests.send(Req::Delta(r));
            }
        });
        Ok(Response::new(UnboundedReceiverStream::new(rx)))
    }
}

struct Server {
    ads: Ads,
    requests: mpsc::UnboundedReceiver<Req>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    port: u16,
    nonce: u32,
}

impl Server {
    async fn start(port: u16) -> Server {
        // A restarted server may find the old socket not yet closed: retry the bind a while.
        let mut tries = 0;
        let listener = loop {
            match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
                Ok(l) => break l,
                Err(e) if tries < 100 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("bind 127.0.0.1:{port}: {e}"),
            }
        };
        let port = listener.local_addr().unwrap().port();
        let (req_tx, requests) = mpsc::unbounded_channel();
        let ads = Ads {
            requests: req_tx,
            sotw: Default::default(),
            delta: Default::default(),
        };
        let (shutdown, rx) = tokio::sync::oneshot::channel::<()>();
        let svc = AggregatedDiscoveryServiceServer::new(ads.clone());
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = rx.await;
                })
                .await;
        });
        Server {
            ads,
            requests,
            shutdown: Some(shutdown),
            port,
            nonce: 0,
        }
    }

    /// Ends the open stream and stops accepting.
    fn stop(&mut self) {
        self.ads.sotw.lock().unwrap().take();
        self.ads.delta.lock().unwrap().take();
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
    }

    async fn next(&mut self) -> Req {
        tokio::time::timeout(Duration::from_secs(10), self.requests.recv())
            .await
            .expect("no request from the client within 10 s")
            .expect("request channel closed")
    }

    async fn next_sotw(&mut self) -> DiscoveryRequest {
        match self.next().await {
            Req::Sotw(r) => r,
            other => panic!("expected a SotW request, got {other:?}"),
        }
    }

    async fn next_delta(&mut self) -> DeltaDiscoveryRequest {
        match self.next().await {
            Req::Delta(r) => r,
            other => panic!("expected a delta request, got {other:?}"),
        }
    }

    async fn wait_stream(&self) {
        for _ in 0..500 {
            if self.ads.sotw.lock().unwrap().is_some() || self.ads.delta.lock().unwrap().is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the client never opened a stream");
    }

    /// Sends a SotW response and returns its nonce.
    fn send(&mut self, type_url: &str, version: &str, resources: Vec<Any>) -> String {
        self.nonce += 1;
        let nonce = format!("n{}", self.nonce);
        let tx = self
            .ads
            .sotw
            .lock()
            .unwrap()
            .clone()
            .expect("no open stream");
        tx.send(Ok(DiscoveryResponse {
            version_info: version.into(),
            resources,
            type_url: type_url.into(),
            nonce: nonce.clone(),
            ..Default::default()
        }))
        .unwrap();
        nonce
    }

    fn send_delta(
        &mut self,
        type_url: &str,
        added: Vec<(&str, &str, Any)>,
        removed: &[&str],
    ) -> String {
        self.nonce += 1;
        let nonce = format!("d{}", self.nonce);
        let tx = self
            .ads
            .delta
            .lock()
            .unwrap()
            .clone()
            .expect("no open stream");
        tx.send(Ok(DeltaDiscoveryResponse {
            system_version_info: format!("sys{}", self.nonce),
            resources: added
                .into_iter()
                .map(|(name, version, any)| Resource {
                    name: name.into(),
                    version: version.into(),
                    resource: Some(any),
                    ..Default::default()
                })
                .collect(),
            type_url: type_url.into(),
            removed_resources: removed.iter().map(|s| s.to_string()).collect(),
            nonce: nonce.clone(),
            ..Default::default()
        }))
        .unwrap();
        nonce
    }
}

struct Sidecar {
    handle: Option<Handle>,
    updates: mpsc::UnboundedReceiver<Applied>,
    reject: Arc<Mutex<Option<String>>>,
}

impl Sidecar {
    fn start(
        port: u16,
        mode: config::XdsMode,
        initial_fetch_timeout_ms: u64,
        static_config: config::Config,
    ) -> Sidecar {
        let (tx, updates) = mpsc::unbounded_channel();
        let reject: Arc<Mutex<Option<String>>> = Default::default();
        let r = reject.clone();
        let mut last: Option<config::Config> = None;
        let bootstrap = config::XdsBootstrap {
            server: format!("127.0.0.1:{port}"),
            node_id: "sidecar~10.1.2.3~pod.ns~ns.svc.cluster.local".into(),
            node_cluster: "ringside-test".into(),
            locality: Some(config::Locality {
                region: "r1".into(),
                zone: "z1".into(),
                sub_zone: "s1".into(),
            }),
            mode,
            initial_fetch_timeout_ms,
            retry_initial_ms: 50,
            retry_max_ms: 200,
            node_metadata: Default::default(),
            tls: None,
        };
        let handle = crate::start(
            bootstrap,
            static_config,
            Box::new(move |u: Update| {
                if let Some(detail) = r.lock().unwrap().take() {
                    return Err(detail);
                }
                tx.send(Applied::follow(&mut last, u)?)
                    .map_err(|e| e.to_string())
            }),
            None,
        )
        .unwrap();
        Sidecar {
            handle: Some(handle),
            updates,
            reject,
        }
    }

    async fn update(&mut self) -> Applied {
        tokio::time::timeout(Duration::from_secs(10), self.updates.recv())
            .await
            .expect("no update within 10 s")
            .expect("update channel closed")
    }

    fn no_update(&mut self) {
        assert!(
            self.updates.try_recv().is_err(),
            "an update was applied too early"
        );
    }

    fn stats(&self) -> crate::XdsStats {
        self.handle.as_ref().unwrap().stats()
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.stop();
        }
    }
}

fn listener_names(u: &Applied) -> Vec<&str> {
    u.config.listeners.iter().map(|l| l.name.as_str()).collect()
}

#[tokio::test]
async fn sotw_fetch_ack_warming_subscriptions_and_nack() {
    let mut server = Server::start(0).await;
    let mut sidecar = Sidecar::start(
        server.port,
        config::XdsMode::Sotw,
        30_000,
        config::Config::default(),
    );

    // CDS first, then LDS, both wildcard, with the node.
    let cds = server.next_sotw().await;
    assert_eq!(cds.type_url, CLUSTER_TYPE);
    assert_eq!(cds.resource_names, Vec::<String>::new());
    let node = cds.node.clone().unwrap();
    assert_eq!(node.id, "sidecar~10.1.2.3~pod.ns~ns.svc.cluster.local");
    assert_eq!(node.cluster, "ringside-test");
    assert_eq!(node.locality.unwrap().zone, "z1");
    let lds = server.next_sotw().await;
    assert_eq!(lds.type_url, LISTENER_TYPE);
    assert_eq!(
        (lds.version_info.as_str(), lds.response_nonce.as_str()),
        ("", "")
    );
    server.wait_stream().await;

    let n = server.send(CLUSTER_TYPE, "c1", vec![cluster_eds("users", "users-eds")]);
    let ack = server.next_sotw().await;
    assert_eq!(
        (
            ack.type_url.as_str(),
            ack.version_info.as_str(),
            ack.response_nonce.as_str()
        ),
        (CLUSTER_TYPE, "c1", n.as_str())
    );
    assert!(ack.error_detail.is_none());
    let eds_sub = server.next_sotw().await;
    assert_eq!(eds_sub.type_url, ENDPOINT_TYPE);
    assert_eq!(eds_sub.resource_names, vec!["users-eds".to_string()]);

    let n = server.send(
        LISTENER_TYPE,
        "l1",
        vec![listener("triple", 19001, hcm_rds("routes-1"))],
    );
    let ack = server.next_sotw().await;
    assert_eq!(
        (
            ack.type_url.as_str(),
            ack.version_info.as_str(),
            ack.response_nonce.as_str()
        ),
        (LISTENER_TYPE, "l1", n.as_str())
    );
    let rds_sub = server.next_sotw().await;
    assert_eq!(rds_sub.type_url, ROUTE_TYPE);
    assert_eq!(rds_sub.resource_names, vec!["routes-1".to_string()]);

    server.send(ROUTE_TYPE, "r1", vec![route_config("routes-1", "users")]);
    let ack = server.next_sotw().await;
    assert_eq!(
        (ack.type_url.as_str(), ack.version_info.as_str()),
        (ROUTE_TYPE, "r1")
    );
    // Warming: the EDS cluster has no assignment yet.
    sidecar.no_update();

    server.send(
        ENDPOINT_TYPE,
        "e1",
        vec![cla("users-eds", &[("10.0.0.1", 20880)])],
    );
    let ack = server.next_sotw().await;
    assert_eq!(
        (ack.type_url.as_str(), ack.version_info.as_str()),
        (ENDPOINT_TYPE, "e1")
    );
    let u = sidecar.update().await;
    assert_eq!(listener_names(&u), vec!["triple"]);
    let l = &u.config.listeners[0];
    assert_eq!(l.protocol, config::Protocol::Triple);
    assert_eq!(
        l.triple.as_ref().unwrap().virtual_hosts[0].routes[0]
            .route
            .cluster
            .as_deref(),
        Some("users")
    );
    assert_eq!(
        u.config.clusters[0].endpoints,
        vec!["10.0.0.1:20880".parse().unwrap()]
    );
    assert_eq!(u.config.clusters[0].connect_timeout_ms, 2001);
    assert_eq!(
        (
            u.versions.lds.as_str(),
            u.versions.rds.as_str(),
            u.versions.cds.as_str(),
            u.versions.eds.as_str()
        ),
        ("l1", "r1", "c1", "e1")
    );
    assert!(!u.eds_only());

    // Endpoints only.
    server.send(
        ENDPOINT_TYPE,
        "e2",
        vec![cla(
            "users-eds",
            &[("10.0.0.1", 20880), ("10.0.0.2", 20880)],
        )],
    );
    server.next_sotw().await;
    let u = sidecar.update().await;
    assert!(u.eds_only());
    assert_eq!(u.config.clusters[0].endpoints.len(), 2);

    // NACK: CLUSTER_PROVIDED (a STATIC cluster) cannot be honoured; the ACKed version stays
    // c1 and nothing is applied.
    let mut bad = cluster_static_pb("bad", &[("10.0.0.9", 1)]);
    bad.lb_policy = 6;
    let n = server.send(
        CLUSTER_TYPE,
        "c2",
        vec![
            cluster_eds("users", "users-eds"),
            envoy_types::util::pack_any(bad),
        ],
    );
    let nack = server.next_sotw().await;
    assert_eq!(
        (
            nack.type_url.as_str(),
            nack.version_info.as_str(),
            nack.response_nonce.as_str()
        ),
        (CLUSTER_TYPE, "c1", n.as_str())
    );
    let status = nack.error_detail.unwrap();
    assert_eq!(status.code, 3);
    assert!(
        status
            .message
            .contains("cluster \"bad\": field `lb_policy`"),
        "{}",
        status.message
    );
    sidecar.no_update();
    let stats = sidecar.stats();
    assert_eq!(stats.nacks, 1);
    assert_eq!(stats.updates, 2);
    assert!(stats.connected);
    assert_eq!(stats.versions.eds, "e2");

    // The last good config stays: more endpoints still land in cluster "users" only.
    server.send(
        ENDPOINT_TYPE,
        "e3",
        vec![cla("users-eds", &[("10.0.0.3", 20880)])],
    );
    server.next_sotw().await;
    let u = sidecar.update().await;
    assert_eq!(u.config.clusters.len(), 1);
    assert_eq!(u.versions.cds, "c1");
    assert_eq!(
        u.config.clusters[0].endpoints,
        vec!["10.0.0.3:20880".parse().unwrap()]
    );

    // The data plane refuses: NACK with its detail.
    *sidecar.reject.lock().unwrap() = Some("dataplane: no".into());
    server.send(
        LISTENER_TYPE,
        "l2",
        vec![
            listener("triple", 19001, hcm_rds("routes-1")),
            listener("tcp", 19002, tcp("users")),
        ],
    );
    let nack = server.next_sotw().await;
    assert_eq!(nack.version_info, "l1");
    assert_eq!(nack.error_detail.unwrap().message, "dataplane: no");

    // The listener goes away: RDS is unsubscribed, and the snapshot has no listener.
    server.send(LISTENER_TYPE, "l3", vec![]);
    let ack = server.next_sotw().await;
    assert_eq!(
        (ack.version_info.as_str(), ack.error_detail.is_none()),
        ("l3", true)
    );
    let rds_sub = server.next_sotw().await;
    assert_eq!(rds_sub.type_url, ROUTE_TYPE);
    assert_eq!(rds_sub.resource_names, Vec::<String>::new());
    let u = sidecar.update().await;
    assert_eq!(listener_names(&u), Vec::<&str>::new());
    assert_eq!(sidecar.stats().nacks, 2);
    server.stop();
}

#[tokio::test]
async fn initial_fetch_timeout_applies_what_is_there() {
    let mut server = Server::start(0).await;
    let mut static_config = config::Config::default();
    static_config.clusters.push(config::Cluster {
        name: "static-c".into(),
        kind: config::ClusterType::Static,
        endpoints: vec!["10.9.0.1:80".parse().unwrap()],
        endpoint_metadata: Vec::new(),
        registry: None,
        lb: config::LbPolicy::RoundRobin,
        connect_timeout_ms: 1000,
        source_addresses: Vec::new(),
        timeout_ms: 1000,
        connections_per_host: 1,
        pending_requests_max: 10,
        heartbeat_interval_ms: 60_000,
        response_bytes_max: config::RESPONSE_BYTES_MAX_DEFAULT,
        idle_timeout_ms: config::IDLE_TIMEOUT_MS_DEFAULT,
        keepalive_interval_ms: config::KEEPALIVE_INTERVAL_MS_DEFAULT,
        keepalive_timeout_ms: config::KEEPALIVE_TIMEOUT_MS_DEFAULT,
        tcp_keepalive: None,
        tls: None,
        transport_socket_matches: Vec::new(),
        upstream_http: Default::default(),
        http2_streams_max: 0,
        requests_per_connection_max: 0,
        http2_stream_window_bytes: None,
        http2_connection_window_bytes: None,
        http2_keepalive: None,
        max_connection_duration_ms: 0,
        circuit_breakers: None,
        outlier_detection: None,
        priority_load: Vec::new(),
        priority_hosts: Vec::new(),
        overprovisioning: 0,
        locality_weighted: false,
        zone_aware: Default::default(),
        keep_alpn: false,
    });
    let mut sidecar = Sidecar::start(server.port, config::XdsMode::Sotw, 400, static_config);
    server.next_sotw().await;
    server.next_sotw().await;
    server.wait_stream().await;
    server.send(CLUSTER_TYPE, "c1", vec![cluster_eds("users", "")]);
    server.next_sotw().await; // ACK
    server.next_sotw().await; // EDS subscription "users"
    server.send(
        LISTENER_TYPE,
        "l1",
        vec![
            listener("to-users", 19001, tcp("users")),
            listener("to-static", 19002, tcp("static-c")),
            listener("to-missing", 19003, tcp("missing")),
        ],
    );
    server.next_sotw().await;
    sidecar.no_update();
    let u = sidecar.update().await;
    assert_eq!(listener_names(&u), vec!["to-static", "to-users"]);
    let users = u.config.cluster("users").unwrap();
    assert_eq!(users.endpoints, vec![]);
    assert_eq!(u.config.clusters[0].name, "static-c");

    // A dynamic cluster named like a static one is a NACK.
    server.send(CLUSTER_TYPE, "c2", vec![cluster_eds("static-c", "")]);
    let nack = server.next_sotw().await;
    assert!(nack
        .error_detail
        .unwrap()
        .message
        .contains("cluster \"static-c\": field `name`"));
    server.stop();
}

#[tokio::test]
async fn server_restart_reconnects_and_resubscribes() {
    let mut server = Server::start(0).await;
    let port = server.port;
    let mut sidecar = Sidecar::start(
        port,
        config::XdsMode::Sotw,
        30_000,
        config::Config::default(),
    );
    server.next_sotw().await;
    server.next_sotw().await;
    server.wait_stream().await;
    server.send(CLUSTER_TYPE, "c1", vec![cluster_eds("users", "users-eds")]);
    server.next_sotw().await;
    server.next_sotw().await;
    server.send(
        ENDPOINT_TYPE,
        "e1",
        vec![cla("users-eds", &[("10.0.0.1", 80)])],
    );
    server.next_sotw().await;
    // Warm with clusters only: the first snapshot has no listener.
    assert_eq!(listener_names(&sidecar.update().await), Vec::<&str>::new());
    server.send(
        LISTENER_TYPE,
        "l1",
        vec![listener("tcp", 19001, tcp("users"))],
    );
    server.next_sotw().await;
    let u = sidecar.update().await;
    assert_eq!(listener_names(&u), vec!["tcp"]);

    server.stop();
    drop(server);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut server = Server::start(port).await;
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..3 {
        let r = server.next_sotw().await;
        assert!(r.node.is_some());
        assert_eq!(r.response_nonce, "");
        seen.insert(
            r.type_url.clone(),
            (r.version_info.clone(), r.resource_names.clone()),
        );
    }
    assert_eq!(seen[CLUSTER_TYPE], ("c1".to_string(), vec![]));
    assert_eq!(
        seen[ENDPOINT_TYPE],
        ("e1".to_string(), vec!["users-eds".to_string()])
    );
    assert_eq!(seen[LISTENER_TYPE], ("l1".to_string(), vec![]));
    let stats = sidecar.stats();
    assert!(stats.reconnects >= 1, "{stats:?}");
    server.wait_stream().await;
    // The new server's state is applied as usual.
    server.send(
        ENDPOINT_TYPE,
        "e2",
        vec![cla("users-eds", &[("10.0.0.7", 80)])],
    );
    server.next_sotw().await;
    let u = sidecar.update().await;
    assert_eq!(
        u.config.clusters[0].endpoints,
        vec!["10.0.0.7:80".parse().unwrap()]
    );
    assert!(sidecar.stats().connected);
    server.stop();
}

#[tokio::test]
async fn delta_add_remove_and_subscriptions() {
    let mut server = Server::start(0).await;
    let mut sidecar = Sidecar::start(
        server.port,
        config::XdsMode::Delta,
        30_000,
        config::Config::default(),
    );
    let cds = server.next_delta().await;
    assert_eq!(cds.type_url, CLUSTER_TYPE);
    assert_eq!(cds.resource_names_subscribe, vec!["*".to_string()]);
    assert_eq!(
        cds.node.unwrap().id,
        "sidecar~10.1.2.3~pod.ns~ns.svc.cluster.local"
    );
    let lds = server.next_delta().await;
    assert_eq!(lds.type_url, LISTENER_TYPE);
    server.wait_stream().await;

    let n = server.send_delta(
        CLUSTER_TYPE,
        vec![("users", "u1", cluster_eds("users", "users-eds"))],
        &[],
    );
    let ack = server.next_delta().await;
    assert_eq!(
        (
            ack.type_url.as_str(),
            ack.response_nonce.as_str(),
            ack.error_detail.is_none()
        ),
        (CLUSTER_TYPE, n.as_str(), true)
    );
    let sub = server.next_delta().await;
    assert_eq!(sub.type_url, ENDPOINT_TYPE);
    assert_eq!(sub.resource_names_subscribe, vec!["users-eds".to_string()]);

    server.send_delta(
        LISTENER_TYPE,
        vec![("a", "1", listener("a", 19001, tcp("users")))],
        &[],
    );
    server.next_delta().await;
    sidecar.no_update();
    server.send_delta(
        ENDPOINT_TYPE,
        vec![("users-eds", "1", cla("users-eds", &[("10.0.0.1", 80)]))],
        &[],
    );
    server.next_delta().await;
    let u = sidecar.update().await;
    assert_eq!(listener_names(&u), vec!["a"]);
    assert_eq!(
        (
            u.versions.cds.as_str(),
            u.versions.lds.as_str(),
            u.versions.eds.as_str()
        ),
        ("sys1", "sys2", "sys3")
    );

    // Add b, then remove a.
    server.send_delta(
        LISTENER_TYPE,
        vec![("b", "1", listener("b", 19002, tcp("users")))],
        &[],
    );
    server.next_delta().await;
    assert_eq!(listener_names(&sidecar.update().await), vec!["a", "b"]);
    server.send_delta(LISTENER_TYPE, vec![], &["a"]);
    server.next_delta().await;
    assert_eq!(listener_names(&sidecar.update().await), vec!["b"]);

    // A NACK in delta mode names the field and keeps b.
    let n = server.send_delta(
        LISTENER_TYPE,
        vec![(
            "c",
            "1",
            listener(
                "c",
                19003,
                hcm_inline(route_config_pb("rc", &["*"], vec![])),
            ),
        )],
        &["b"],
    );
    let _ = n;
    let nack = server.next_delta().await;
    // An HCM with no routes and no default cluster fails validation of the merged config.
    let detail = nack.error_detail.unwrap().message;
    assert!(
        detail.contains("listeners[0]") && detail.contains("\"c\""),
        "{detail}"
    );

    // Removing the listener and the cluster unsubscribes the cluster's EDS name.
    server.send_delta(LISTENER_TYPE, vec![], &["b"]);
    server.next_delta().await;
    assert_eq!(listener_names(&sidecar.update().await), Vec::<&str>::new());
    server.send_delta(CLUSTER_TYPE, vec![], &["users"]);
    server.next_delta().await;
    let unsub = server.next_delta().await;
    assert_eq!(unsub.type_url, ENDPOINT_TYPE);
    assert_eq!(
        unsub.resource_names_unsubscribe,
        vec!["users-eds".to_string()]
    );
    let u = sidecar.update().await;
    assert!(u.config.clusters.is_empty());
    assert_eq!(sidecar.stats().nacks, 1);
    server.stop();
}

/// Ports of one cluster's endpoints in an update.
fn ports(u: &Applied, cluster: &str) -> Vec<u16> {
    u.config
        .cluster(cluster)
        .unwrap()
        .endpoints
        .iter()
        .map(|a| a.port())
        .collect()
}

/// The clusters of an endpoints-only update, sorted (panics on a full one).
fn changed(u: &Applied) -> Vec<&str> {
    let mut names: Vec<&str> = u
        .eds_only
        .as_ref()
        .expect("an endpoints-only update")
        .iter()
        .map(|c| c.cluster.as_str())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn eds_updates_carry_only_the_clusters_that_changed() {
    let mut server = Server::start(0).await;
    let mut sidecar = Sidecar::start(
        server.port,
        config::XdsMode::Sotw,
        30_000,
        config::Config::default(),
    );
    server.next_sotw().await; // CDS
    server.next_sotw().await; // LDS
    server.wait_stream().await;
    // a and a2 share the EDS name "a-eds"; b has its own.
    server.send(
        CLUSTER_TYPE,
        "c1",
        vec![
            cluster_eds("a", "a-eds"),
            cluster_eds("a2", "a-eds"),
            cluster_eds("b", "b-eds"),
        ],
    );
    server.next_sotw().await; // ACK
    server.next_sotw().await; // EDS subscription
    server.send(LISTENER_TYPE, "l1", vec![listener("t", 19001, tcp("a"))]);
    server.next_sotw().await;
    let both = |a: u32, b: u32| {
        vec![
            cla("a-eds", &[("10.0.0.1", a)]),
            cla("b-eds", &[("10.0.0.2", b)]),
        ]
    };
    server.send(ENDPOINT_TYPE, "e1", both(1, 2));
    server.next_sotw().await;
    let u = sidecar.update().await;
    assert!(!u.eds_only(), "the first snapshot is a full one");

    // State of the world resends both assignments; only b changed: b alone goes out.
    server.send(ENDPOINT_TYPE, "e2", both(1, 3));
    let ack = server.next_sotw().await;
    assert_eq!(ack.version_info, "e2");
    let u = sidecar.update().await;
    assert_eq!(changed(&u), ["b"]);
    assert_eq!(
        (ports(&u, "a"), ports(&u, "a2"), ports(&u, "b")),
        (vec![1], vec![1], vec![3])
    );
    assert_eq!(u.versions.eds, "e2");

    // A shared assignment changes both of its clusters.
    server.send(ENDPOINT_TYPE, "e3", both(4, 3));
    server.next_sotw().await;
    let u = sidecar.update().await;
    assert_eq!(changed(&u), ["a", "a2"]);
    assert_eq!(
        (ports(&u, "a"), ports(&u, "a2"), ports(&u, "b")),
        (vec![4], vec![4], vec![3])
    );

    // Nothing changed: an empty change, still under the new version.
    server.send(ENDPOINT_TYPE, "e4", both(4, 3));
    server.next_sotw().await;
    let u = sidecar.update().await;
    assert_eq!(u.eds_only.as_deref(), Some(&[][..]));
    assert_eq!(u.versions.eds, "e4");

    // Refused by the data plane: NACKed, the version stays, and the next response that changes
    // the same thing is sent again (the cache did not take the refused one).
    *sidecar.reject.lock().unwrap() = Some("shard said no".into());
    server.send(ENDPOINT_TYPE, "e5", both(5, 3));
    let nack = server.next_sotw().await;
    assert_eq!(nack.version_info, "e4");
    assert_eq!(nack.error_detail.unwrap().message, "shard said no");
    server.send(ENDPOINT_TYPE, "e6", both(5, 3));
    server.next_sotw().await;
    let u = sidecar.update().await;
    assert_eq!(u.eds_only.as_ref().unwrap().len(), 2);
    assert_eq!(ports(&u, "a"), vec![5]);

    // A bad assignment is NACKed with its field, as on the full path.
    let mut bad = cla_pb("b-eds", &[("10.0.0.2", 3)]);
    bad.named_endpoints.insert("x".into(), Default::default());
    server.send(
        ENDPOINT_TYPE,
        "e7",
        vec![
            cla("a-eds", &[("10.0.0.1", 5)]),
            envoy_types::util::pack_any(bad),
        ],
    );
    let nack = server.next_sotw().await;
    assert!(nack
        .error_detail
        .unwrap()
        .message
        .contains("named_endpoints"));
    sidecar.no_update();
    assert_eq!(sidecar.stats().versions.eds, "e6");
    server.stop();
}

#[tokio::test]
async fn unreachable_server_serves_the_static_config_after_the_timeout() {
    // Bind and drop to find a port nothing listens on.
    let port = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    };
    let static_config = config::Config {
        drain_timeout_ms: 1234,
        ..Default::default()
    };
    let mut sidecar = Sidecar::start(port, config::XdsMode::Sotw, 300, static_config.clone());
    let u = sidecar.update().await;
    assert_eq!(u.config, static_config);
    assert_eq!(u.versions, crate::Versions::default());
    // The client counts an update once `apply` has returned, i.e. just after the test sees it;
    // and it keeps reconnecting in the background, its first retry after a back-off that on a
    // loaded machine can end after the fetch timeout. Wait for both rather than expect them by
    // the time the update arrives (each failed about one run in three at load 15 on 2 CPUs).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let stats = sidecar.stats();
        assert!(!stats.connected);
        if stats.updates == 1 && stats.reconnects >= 1 {
            break;
        }
        assert!(stats.updates <= 1, "{stats:?}");
        assert!(std::time::Instant::now() < deadline, "{stats:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn delta_reconnect_sends_initial_resource_versions() {
    let mut server = Server::start(0).await;
    let port = server.port;
    let mut sidecar = Sidecar::start(
        port,
        config::XdsMode::Delta,
        30_000,
        config::Config::default(),
    );
    server.next_delta().await;
    server.next_delta().await;
    server.wait_stream().await;
    server.send_delta(
        CLUSTER_TYPE,
        vec![("users", "u7", cluster_eds("users", "users-eds"))],
        &[],
    );
    server.next_delta().await; // ACK
    server.next_delta().await; // EDS subscription
    server.send_delta(
        ENDPOINT_TYPE,
        vec![("users-eds", "e7", cla("users-eds", &[("10.0.0.1", 80)]))],
        &[],
    );
    server.next_delta().await;
    sidecar.update().await;

    server.stop();
    drop(server);
    let mut server = Server::start(port).await;
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..3 {
        let r = server.next_delta().await;
        assert_eq!(r.response_nonce, "");
        seen.insert(
            r.type_url.clone(),
            (
                r.resource_names_subscribe.clone(),
                r.initial_resource_versions.clone(),
            ),
        );
    }
    let (sub, versions) = &seen[CLUSTER_TYPE];
    assert_eq!(sub, &vec!["*".to_string()]);
    assert_eq!(versions.get("users").map(String::as_str), Some("u7"));
    let (sub, versions) = &seen[ENDPOINT_TYPE];
    assert_eq!(sub, &vec!["users-eds".to_string()]);
    assert_eq!(versions.get("users-eds").map(String::as_str), Some("e7"));
    assert!(seen[LISTENER_TYPE].1.is_empty());
    assert!(sidecar.stats().reconnects >= 1);
    server.stop();
}
