//! Connects the SDS clients (crate `xds`, one thread per `sds` server of the config) to the
//! running server: each response's secrets are checked (their PEM loads) and handed to
//! [`Shared::update_secrets`], which rebuilds the TLS of the listeners and clusters that use
//! them (new handshakes use the new certificates; connections open keep theirs). Each client
//! asks for the secrets of its server that the running config names, updated after every
//! config update ([`resubscribe`]).

use std::sync::Arc;
use std::time::Duration;

use super::server::{ApplyError, Shared};

/// How long a response waits, at most, for the shards to run (secrets that arrive during
/// start-up) before it is NACKed.
const NOT_RUNNING_WAIT: Duration = Duration::from_secs(10);

/// The secret names `config` takes from SDS server `server` (`None`: ADS), sorted, once each.
fn names(config: &config::Config, server: Option<&str>) -> Vec<String> {
    let mut n: Vec<String> = config
        .sds_secrets()
        .filter(|(_, s)| s.server.as_deref() == server)
        .map(|(_, s)| s.name.clone())
        .collect();
    n.sort();
    n.dedup();
    n
}

/// Starts one client per `sds` server of the config, and one on the ADS server when there is
/// an `xds` section (kept in `shared`).
pub fn start(shared: &Arc<Shared>) -> std::io::Result<()> {
    let node = shared.config.xds.as_ref();
    let (node_id, node_cluster) = node.map_or_else(
        || ("ringside".to_string(), String::new()),
        |x| (x.node_id.clone(), x.node_cluster.clone()),
    );
    let config = shared.snapshot().config.clone();
    let mut handles = Vec::new();
    let servers = shared
        .config
        .sds
        .iter()
        .map(|s| (Some(s.name.clone()), xds::SdsTarget::Unix(s.path.clone())))
        .chain(
            shared
                .config
                .xds
                .iter()
                .map(|x| (None, xds::SdsTarget::Ads(x.server.clone()))),
        );
    for (server, target) in servers {
        let applier = Arc::downgrade(shared);
        let name = server.clone();
        let apply: xds::SecretsFn = Box::new(move |secrets: Vec<(String, xds::Secret)>| {
            let Some(shared) = applier.upgrade() else {
                return Err("shutting down".into());
            };
            let mut checked = Vec::with_capacity(secrets.len());
            for (n, s) in secrets {
                checked.push((n.clone(), check(&n, s)?));
            }
            let deadline = std::time::Instant::now() + NOT_RUNNING_WAIT;
            loop {
                match shared.update_secrets(name.as_deref(), checked.clone()) {
                    Ok(()) => return Ok(()),
                    Err(ApplyError::NotRunning) if std::time::Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => return Err(e.to_string()),
                }
            }
        });
        tracing::debug!(%target, "sds client started");
        // Secrets over ADS travel as the ADS stream does: over `xds.tls` when it is set.
        let tls = match (&target, shared.config.xds.as_ref()) {
            (xds::SdsTarget::Ads(_), Some(x)) => x
                .tls
                .as_ref()
                .map(|t| crate::io::tls::xds_tls(t, &x.server))
                .transpose()
                .map_err(std::io::Error::other)?,
            _ => None,
        };
        let h = xds::start_sds(
            target,
            node_id.clone(),
            node_cluster.clone(),
            names(&config, server.as_deref()),
            apply,
            tls,
        )?;
        handles.push((server, Arc::new(h)));
    }
    let _ = shared.sds.set(handles);
    Ok(())
}

/// After a config update: each client asks for the secrets the new config names.
pub fn resubscribe(shared: &Shared, config: &config::Config) {
    for (server, h) in shared.sds.get().into_iter().flatten() {
        h.subscribe(names(config, server.as_deref()));
    }
}

/// A secret whose PEM loads, as the TLS configs take it; else the NACK's detail.
fn check(name: &str, s: xds::Secret) -> Result<crate::io::tls::Secret, String> {
    fn pem<'a>(name: &'a str, p: &'a [u8]) -> tls::Pem<'a> {
        tls::Pem::Bytes { name, pem: p }
    }
    if let Some(c) = &s.cert_chain {
        tls::certs(pem(name, c)).map_err(|e| format!("secret {name:?}: certificate_chain: {e}"))?;
    }
    if let Some(k) = &s.private_key {
        tls::key(pem(name, k)).map_err(|e| format!("secret {name:?}: private_key: {e}"))?;
    }
    if let Some(ca) = &s.trusted_ca {
        tls::certs(pem(name, ca)).map_err(|e| format!("secret {name:?}: trusted_ca: {e}"))?;
    }
    Ok(crate::io::tls::Secret {
        cert_chain: s.cert_chain,
        private_key: s.private_key,
        trusted_ca: s.trusted_ca,
    })
}
