//! Connects the xDS client (crate `xds`, its own thread) to the running server: each snapshot
//! it builds goes to [`Shared::apply`] through the registry's composer (ACK when every shard runs it, NACK with the reason
//! otherwise); an endpoints-only change goes to [`Shared::apply_endpoints`] the same way, readiness waits for the first one, and the client's counters are copied into
//! ringside's stats every second (`xds.*`).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::server::Shared;
use crate::stats::Kind;

/// How often the xDS client's counters are copied into the stats.
pub const XDS_STATS_PUBLISH: Duration = Duration::from_secs(1);

/// Starts the xDS client when the config has an `xds` section; `None` otherwise.
pub fn start(
    shared: &Arc<Shared>,
    composer: &Arc<super::registry_glue::Composer>,
) -> std::io::Result<Option<Arc<xds::Handle>>> {
    let Some(bootstrap) = shared.config.xds.clone() else {
        return Ok(None);
    };
    // The static listeners and clusters are the first snapshot's (`Shared::config` keeps only
    // the process settings).
    let mut static_config = shared.snapshot().config.clone();
    static_config.xds = None;
    let initial = Duration::from_millis(bootstrap.initial_fetch_timeout_ms);
    let applier = shared.clone();
    let composer = composer.clone();
    let apply: xds::ApplyFn = Box::new(move |u: xds::Update| {
        let v = &u.versions;
        let versions: BTreeMap<String, String> = [
            ("lds", &v.lds),
            ("rds", &v.rds),
            ("cds", &v.cds),
            ("eds", &v.eds),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
        // The registry's endpoints (if any) are filled in by the composer.
        let (applied, changed) = match u.change {
            xds::Change::Full(config) => (composer.apply_xds(*config, versions), None),
            xds::Change::Endpoints(changed) => {
                let n = changed.len();
                (composer.apply_xds_endpoints(changed, versions), Some(n))
            }
        };
        // The NACK's error_detail is the refusal's text.
        let version = applied.map_err(|e| e.to_string())?;
        match changed {
            None => {
                tracing::info!(version, lds = %v.lds, rds = %v.rds, cds = %v.cds, eds = %v.eds, "xds snapshot applied")
            }
            Some(clusters) => {
                tracing::debug!(version, eds = %v.eds, clusters, "xds endpoints applied")
            }
        }
        applier.dynamic_ready.store(true, Ordering::Release);
        Ok(())
    });
    let tls = bootstrap
        .tls
        .as_ref()
        .map(|t| crate::io::tls::xds_tls(t, &bootstrap.server))
        .transpose()
        .map_err(std::io::Error::other)?;
    let handle = Arc::new(xds::start(bootstrap, static_config, apply, tls)?);
    let _ = shared.xds.set(handle.clone());
    // Readiness does not wait forever for a control plane that does not answer.
    let s = shared.clone();
    std::thread::Builder::new()
        .name("xds-ready".into())
        .spawn(move || {
            std::thread::sleep(initial);
            if !s.dynamic_ready.swap(true, Ordering::AcqRel) {
                tracing::warn!(
                    timeout_ms = initial.as_millis() as u64,
                    "xds: no snapshot within the initial fetch timeout; serving the static config"
                );
            }
        })?;
    let (s, h) = (shared.clone(), Arc::downgrade(&handle));
    std::thread::Builder::new()
        .name("xds-stats".into())
        .spawn(move || publish(s, h))?;
    Ok(Some(handle))
}

/// Blocks until the first dynamic snapshot (xDS) and the first registry read are applied or
/// their initial fetch timeouts passed.
pub fn wait_ready(shared: &Shared) {
    let started = Instant::now();
    while !(shared.dynamic_ready.load(Ordering::Acquire)
        && shared.registry_ready.load(Ordering::Acquire))
    {
        if started.elapsed() > Duration::from_secs(600) {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Copies the client's counters into `xds.*` stats (shard 0's slots: written by this thread
/// only, as shard 0 never touches these ids).
fn publish(shared: Arc<Shared>, handle: std::sync::Weak<xds::Handle>) {
    let st = &shared.stats;
    let c = |name| st.add("xds", name, &[], Kind::Counter);
    let (acks, nacks, updates, reconnects) = (
        c("update_acks"),
        c("update_nacks"),
        c("updates"),
        c("reconnects"),
    );
    let connected = st.add("xds", "connected", &[], Kind::Gauge);
    // Envoy's names for what pilot-agent's readiness probe reads from `/stats?usedonly&filter=`
    // (istio/istio pilot/cmd/pilot-agent/status/util/stats.go): first LDS and CDS accepted,
    // then `server.state` LIVE (0) and `listener_manager.workers_started` 1.
    let envoy = |scope, name| st.add(scope, name, &[], Kind::Counter);
    let by_type = [
        (0, envoy("listener_manager", "lds.update_success")),
        (0, envoy("listener_manager", "lds.update_rejected")),
        (2, envoy("cluster_manager", "cds.update_success")),
        (2, envoy("cluster_manager", "cds.update_rejected")),
    ];
    let server_state = st.add("server", "state", &[], Kind::Gauge);
    let workers_started = st.add("listener_manager", "workers_started", &[], Kind::Gauge);
    let out = st.shard(0);
    // Gauges start at 0 (LIVE, no workers): say INITIALIZING (3) until ready.
    let (mut state, mut started) = (0u64, 0u64);
    let mut last = xds::XdsStats::default();
    // The Arc in `Shared` keeps the client alive as long as the process: stop with the drain.
    while let Some(h) = handle.upgrade() {
        if shared.drained.load(Ordering::Acquire) {
            return;
        }
        let now = h.stats();
        drop(h);
        out.add(acks, now.acks.saturating_sub(last.acks));
        out.add(nacks, now.nacks.saturating_sub(last.nacks));
        out.add(updates, now.updates.saturating_sub(last.updates));
        out.add(reconnects, now.reconnects.saturating_sub(last.reconnects));
        for (i, (t, id)) in by_type.iter().enumerate() {
            let (n, l) = match i % 2 {
                0 => (now.by_type[*t].0, last.by_type[*t].0),
                _ => (now.by_type[*t].1, last.by_type[*t].1),
            };
            out.add(*id, n.saturating_sub(l));
        }
        let serving = shared.lifecycle.state() == super::server::State::Serving;
        let new_state = match shared.lifecycle.state() {
            super::server::State::Draining => 1u64,
            // Envoy reports DRAINING after `POST /healthcheck/fail` too.
            _ if shared.health_failed.load(Ordering::Acquire) => 1,
            _ if shared.ready() => 0,
            // Envoy's INITIALIZING: waiting for the first listeners and clusters.
            _ => 3,
        };
        out.add(server_state, new_state.wrapping_sub(state));
        out.add(workers_started, u64::from(serving).wrapping_sub(started));
        (state, started) = (new_state, u64::from(serving));
        match (last.connected, now.connected) {
            (false, true) => out.inc(connected),
            (true, false) => out.dec(connected),
            _ => {}
        }
        last = now;
        std::thread::sleep(XDS_STATS_PUBLISH);
    }
}
