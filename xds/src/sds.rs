//! A client of one SDS server: on a Unix socket (`envoy.service.secret.v3.SecretDiscoveryService`,
//! state of the world: Istio's pilot-agent serves `default` and `ROOTCA` on
//! `/var/run/secrets/workload-spiffe-uds/socket`), or the ADS server (a stream of its own on
//! `AggregatedDiscoveryService` that asks for `Secret` resources only). Runs on its own thread
//! (`ringside-sds`) with a tokio current-thread runtime, never on a shard. It asks for the secret names it is given
//! ([`SdsHandle::subscribe`]), hands every response's secrets to the caller's `apply` (which
//! checks that they load), and ACKs what `apply` accepts, NACKs the rest. The server pushes a
//! new version of a secret when it rotates the certificate. Reconnects with back-off; while the
//! socket is missing (pilot-agent not up yet) it keeps trying.

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3 as core_pb;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use envoy_types::pb::google::rpc::Status;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::proto;

/// One secret as received: PEM text.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Secret {
    /// `tls_certificate`: the chain (leaf first) and its key.
    pub cert_chain: Option<Vec<u8>>,
    pub private_key: Option<Vec<u8>>,
    /// `validation_context`: the trusted CAs.
    pub trusted_ca: Option<Vec<u8>>,
}

/// Where the secrets come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SdsTarget {
    /// An SDS server on a Unix socket.
    Unix(String),
    /// The ADS server at `host:port` (the bootstrap's `xds.server`).
    Ads(String),
}

impl std::fmt::Display for SdsTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SdsTarget::Unix(p) => write!(f, "unix:{p}"),
            SdsTarget::Ads(a) => write!(f, "ads:{a}"),
        }
    }
}

/// Takes the secrets of one response, `(name, secret)`: `Ok` ACKs it, `Err(detail)` NACKs it.
pub type SecretsFn = Box<dyn FnMut(Vec<(String, Secret)>) -> Result<(), String> + Send>;

/// google.rpc.Code INVALID_ARGUMENT, the code of every NACK.
const INVALID_ARGUMENT: i32 = 3;
/// Reconnect back-off: from here, doubling to [`RETRY_MAX_MS`].
const RETRY_INITIAL_MS: u64 = 100;
const RETRY_MAX_MS: u64 = 5_000;

/// The running client. Dropping it stops the client without waiting.
#[derive(Debug)]
pub struct SdsHandle {
    names: watch::Sender<Vec<String>>,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SdsHandle {
    /// The secret names to ask for (sorted, no duplicates, by the caller); a change is sent to
    /// the server at once.
    pub fn subscribe(&self, names: Vec<String>) {
        self.names.send_if_modified(|n| {
            let changed = *n != names;
            *n = names;
            changed
        });
    }

    /// Closes the stream and joins the thread.
    pub fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for SdsHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Starts a client of the SDS server `target` (`node_id` and `node_cluster` identify this
/// proxy to it), asking for `names` until [`SdsHandle::subscribe`] says otherwise.
pub fn start_sds(
    target: SdsTarget,
    node_id: String,
    node_cluster: String,
    names: Vec<String>,
    apply: SecretsFn,
    tls: Option<crate::XdsTls>,
) -> std::io::Result<SdsHandle> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (names_tx, names_rx) = watch::channel(names);
    let (stop_tx, stop_rx) = watch::channel(false);
    let node = core_pb::Node {
        id: node_id,
        cluster: node_cluster,
        user_agent_name: "ringside".into(),
        ..Default::default()
    };
    let mut client = Client {
        target,
        tls,
        node,
        apply,
        version: String::new(),
        nonce: String::new(),
    };
    let thread = std::thread::Builder::new()
        .name("ringside-sds".into())
        .spawn(move || runtime.block_on(client.run(names_rx, stop_rx)))?;
    Ok(SdsHandle {
        names: names_tx,
        stop: stop_tx,
        thread: Some(thread),
    })
}

struct Client {
    target: SdsTarget,
    /// `xds.tls` for [`SdsTarget::Ads`] (the ADS server's transport).
    tls: Option<crate::XdsTls>,
    node: core_pb::Node,
    apply: SecretsFn,
    /// Of the last accepted response (kept across reconnects, so the server can skip what
    /// ringside has).
    version: String,
    nonce: String,
}

impl Client {
    async fn run(
        &mut self,
        mut names: watch::Receiver<Vec<String>>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut delay = RETRY_INITIAL_MS;
        loop {
            if *stop.borrow() {
                return;
            }
            // Nothing to ask for: wait until something is.
            while names.borrow().is_empty() {
                tokio::select! {
                    r = names.changed() => if r.is_err() { return },
                    _ = stop.changed() => return,
                }
            }
            match self.serve(&mut names, &mut stop).await {
                Ok(true) => return,
                Ok(false) => delay = RETRY_INITIAL_MS,
                Err(why) => {
                    tracing::debug!(target = %self.target, error = %why, "sds: stream failed");
                }
            }
            let wait = Duration::from_millis(crate::client_jitter(delay));
            delay = (delay * 2).min(RETRY_MAX_MS);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return,
            }
        }
    }

    fn request(&self, names: &[String], error: Option<String>) -> DiscoveryRequest {
        DiscoveryRequest {
            version_info: self.version.clone(),
            node: Some(self.node.clone()),
            resource_names: names.to_vec(),
            type_url: proto::SECRET_TYPE.into(),
            response_nonce: self.nonce.clone(),
            error_detail: error.map(|message| Status {
                code: INVALID_ARGUMENT,
                message,
                details: Vec::new(),
            }),
            ..Default::default()
        }
    }

    /// One stream: `Ok(true)` when stopped, `Ok(false)` when it ended after a response,
    /// `Err` when it failed before one.
    async fn serve(
        &mut self,
        names: &mut watch::Receiver<Vec<String>>,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<bool, String> {
        let channel = match &self.target {
            SdsTarget::Unix(path) => {
                let endpoint = tonic::transport::Endpoint::from_static("http://sds.local")
                    .connect_timeout(Duration::from_secs(5));
                let connector = crate::transport::unix(path);
                tokio::select! {
                    c = endpoint.connect_with_connector(connector) => c.map_err(|e| format!("connect: {e}"))?,
                    _ = stop.changed() => return Ok(true),
                }
            }
            SdsTarget::Ads(addr) => {
                tokio::select! {
                    c = crate::transport::connect(addr, self.tls.as_ref(), None) => c?,
                    _ = stop.changed() => return Ok(true),
                }
            }
        };
        let (tx, rx) = mpsc::unbounded_channel::<DiscoveryRequest>();
        let mut asked = names.borrow_and_update().clone();
        let _ = tx.send(self.request(&asked, None));
        let requests = UnboundedReceiverStream::new(rx);
        let response = tokio::select! {
            r = async {
                match &self.target {
                    SdsTarget::Unix(_) => SecretDiscoveryServiceClient::new(channel).stream_secrets(requests).await,
                    SdsTarget::Ads(_) => AggregatedDiscoveryServiceClient::new(channel).stream_aggregated_resources(requests).await,
                }
            } => r,
            _ = stop.changed() => return Ok(true),
        };
        let mut stream = response
            .map_err(|s| format!("open stream: {s}"))?
            .into_inner();
        let mut got = false;
        loop {
            tokio::select! {
                m = stream.message() => match m {
                    Ok(Some(resp)) => {
                        got = true;
                        let error = self.on_response(resp);
                        let _ = tx.send(self.request(&asked, error));
                    }
                    Ok(None) => return if got { Ok(false) } else { Err("closed".into()) },
                    Err(s) => return if got { Ok(false) } else { Err(s.to_string()) },
                },
                r = names.changed() => {
                    if r.is_err() {
                        return Ok(true);
                    }
                    asked = names.borrow_and_update().clone();
                    let _ = tx.send(self.request(&asked, None));
                }
                _ = stop.changed() => return Ok(true),
            }
        }
    }

    /// Decodes and applies one response; the NACK detail when refused.
    fn on_response(&mut self, resp: DiscoveryResponse) -> Option<String> {
        let nonce = resp.nonce.clone();
        let decoded: Result<Vec<(String, Secret)>, String> = resp
            .resources
            .iter()
            .map(|a| proto::decode_secret(a).map_err(|e| e.to_string()))
            .collect();
        let result = decoded.and_then(|s| (self.apply)(s));
        self.nonce = nonce;
        match result {
            Ok(()) => {
                self.version = resp.version_info;
                tracing::debug!(target = %self.target, version = %self.version, "sds: secrets applied");
                None
            }
            Err(detail) => {
                tracing::warn!(target = %self.target, error = %detail, "sds: secrets refused");
                Some(detail)
            }
        }
    }
}
