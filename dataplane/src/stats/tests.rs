use super::*;
use std::sync::Arc;

fn cfg() -> config::StatsConfig {
    config::StatsConfig::default()
}

#[test]
fn shards_merge_and_gauges_go_negative_per_shard() {
    let s = Arc::new(Stats::new(2, &cfg()).unwrap());
    let t = [("listener", "out")];
    let total = s.add("listener", "downstream_cx_total", &t, Kind::Counter);
    let active = s.add("listener", "downstream_cx_active", &t, Kind::Gauge);
    let (a, b) = (s.shard(0), s.shard(1));
    a.inc(total);
    b.add(total, 4);
    a.inc(active);
    a.inc(active);
    b.dec(active);
    let text = s.render_text();
    assert!(
        text.contains("listener.out.downstream_cx_total: 5"),
        "{text}"
    );
    assert!(
        text.contains("listener.out.downstream_cx_active: 1"),
        "{text}"
    );
    let prom = s.render_prometheus();
    assert!(prom.contains("# TYPE ringside_listener_downstream_cx_total counter"));
    assert!(
        prom.contains("ringside_listener_downstream_cx_total{listener=\"out\"} 5"),
        "{prom}"
    );
}

#[test]
fn histograms_merge_and_render_cumulative_buckets() {
    let s = Arc::new(Stats::new(2, &cfg()).unwrap());
    let h = s.add_histogram("listener", "rq_time_us", &[("listener", "l")]);
    s.shard(0).record_us(h, 20);
    s.shard(1).record_us(h, 30);
    s.shard(1).record_us(h, 20_000_000);
    let text = s.render_text();
    assert!(text.contains("listener.l.rq_time_us_le_25us: 1"), "{text}");
    assert!(text.contains("listener.l.rq_time_us_le_50us: 2"), "{text}");
    assert!(
        text.contains("listener.l.rq_time_us_le_10000000us: 2"),
        "{text}"
    );
    assert!(text.contains("listener.l.rq_time_us_count: 3"), "{text}");
    let prom = s.render_prometheus();
    assert!(
        prom.contains("ringside_listener_rq_time_seconds_bucket{listener=\"l\",le=\"+Inf\"} 3"),
        "{prom}"
    );
    assert!(
        prom.contains("ringside_listener_rq_time_seconds_count{listener=\"l\"} 3"),
        "{prom}"
    );
}

#[test]
fn names_cost_a_few_bytes_each() {
    let s = Stats::new(1, &cfg()).unwrap();
    for i in 0..1000 {
        let c = format!("cluster-{i}");
        s.add(
            "cluster",
            "upstream_rq_total",
            &[("cluster", &c)],
            Kind::Counter,
        );
    }
    let defs = &s.defs;
    let key_bytes: usize = (1..defs.len())
        .filter_map(|i| defs.get(i))
        .map(|d| d.key.len())
        .sum();
    // scope, name, tag count, tag key, tag value: five varints, the value id up to 2 bytes.
    assert!(
        key_bytes <= 1000 * 6,
        "{key_bytes} bytes of names for 1000 stats"
    );
    // "cluster" and "upstream_rq_total" are stored once.
    assert_eq!(s.symbols.len(), 2 + 1000);
}

#[test]
fn include_and_exclude_rules_drop_names_to_the_sink() {
    let mut c = cfg();
    c.exclude = vec![config::NameMatch {
        prefix: Some("cluster.noisy.".into()),
        regex: None,
    }];
    let s = Arc::new(Stats::new(1, &c).unwrap());
    let kept = s.add(
        "cluster",
        "upstream_rq_total",
        &[("cluster", "quiet")],
        Kind::Counter,
    );
    let dropped = s.add(
        "cluster",
        "upstream_rq_total",
        &[("cluster", "noisy")],
        Kind::Counter,
    );
    assert_ne!(kept, SINK);
    assert_eq!(dropped, SINK);
    s.shard(0).inc(dropped);
    let text = s.render_text();
    assert!(!text.contains("noisy"), "{text}");

    let mut c = cfg();
    c.include = vec![config::NameMatch {
        prefix: None,
        regex: Some(r"listener\..*".into()),
    }];
    let s = Stats::new(1, &c).unwrap();
    assert_eq!(s.add("cluster", "x", &[], Kind::Counter), SINK);
    assert_ne!(s.add("listener", "x", &[], Kind::Counter), SINK);
}

#[test]
fn per_host_stats_are_off_by_default() {
    let s = Stats::new(1, &cfg()).unwrap();
    assert_eq!(
        s.add_host("cluster_host", "rq", &[("host", "1.2.3.4:5")]),
        SINK
    );
    let mut c = cfg();
    c.per_host = true;
    let s = Stats::new(1, &c).unwrap();
    assert_ne!(
        s.add_host("cluster_host", "rq", &[("host", "1.2.3.4:5")]),
        SINK
    );
}

#[test]
fn service_cap_is_enforced() {
    let mut c = cfg();
    c.dubbo_services_max = 3;
    let s = Stats::new(1, &c).unwrap();
    let tracked = (0..10).filter(|_| s.track_service()).count();
    assert_eq!(tracked, 3);
}

#[test]
fn export_then_import_carries_counter_totals() {
    let old = Arc::new(Stats::new(2, &cfg()).unwrap());
    let id = old.add(
        "cluster",
        "upstream_rq_total",
        &[("cluster", "c")],
        Kind::Counter,
    );
    let g = old.add(
        "cluster",
        "upstream_rq_active",
        &[("cluster", "c")],
        Kind::Gauge,
    );
    old.shard(0).add(id, 40);
    old.shard(1).add(id, 2);
    old.shard(0).add(g, 7);
    let blob = old.export();

    let new = Arc::new(Stats::new(1, &cfg()).unwrap());
    let id2 = new.add(
        "cluster",
        "upstream_rq_total",
        &[("cluster", "c")],
        Kind::Counter,
    );
    let g2 = new.add(
        "cluster",
        "upstream_rq_active",
        &[("cluster", "c")],
        Kind::Gauge,
    );
    new.import(&blob).unwrap();
    new.shard(0).inc(id2);
    new.shard(0).inc(g2);
    let text = new.render_text();
    assert!(text.contains("cluster.c.upstream_rq_total: 43"), "{text}");
    assert!(
        text.contains("cluster.c.upstream_rq_active: 1"),
        "gauges are live, not carried: {text}"
    );
    assert!(new.import(&blob).is_err(), "imported once");
    // A successor's export includes what it carried.
    let again = Arc::new(Stats::new(1, &cfg()).unwrap());
    again.add(
        "cluster",
        "upstream_rq_total",
        &[("cluster", "c")],
        Kind::Counter,
    );
    again.import(&new.export()).unwrap();
    assert!(again
        .render_text()
        .contains("cluster.c.upstream_rq_total: 43"));
}

/// Many threads intern overlapping names and register and count stats concurrently; every
/// string gets exactly one symbol, and the merged totals are exact.
#[test]
fn concurrent_interning_and_counting_is_exact() {
    const THREADS: usize = 8;
    // Prime, so every thread's stride walks all names.
    const NAMES: usize = 503;
    const ROUNDS: u64 = 200;
    let s = Arc::new(Stats::new(THREADS, &cfg()).unwrap());
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                let shard = s.shard(t);
                let mut ids = Vec::new();
                // Different threads walk the names in different orders, so they race on the
                // same new strings.
                for k in 0..NAMES {
                    let i = (k * (2 * t + 1) + t * 7) % NAMES;
                    let svc = format!("com.acme.Service{i}");
                    let sym = s.symbols.intern(&svc).unwrap();
                    ids.push((
                        i,
                        sym,
                        s.add(
                            "dubbo_service",
                            "rq_total",
                            &[("interface", &svc)],
                            Kind::Counter,
                        ),
                    ));
                }
                for _ in 0..ROUNDS {
                    for (_, _, id) in &ids {
                        shard.inc(*id);
                    }
                }
                ids.into_iter()
                    .map(|(i, sym, _)| (i, sym))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut symbol_of = std::collections::HashMap::new();
    for h in handles {
        for (i, sym) in h.join().unwrap() {
            let prev = symbol_of.insert(i, sym);
            assert!(
                prev.is_none() || prev == Some(sym),
                "name {i} got two symbols"
            );
        }
    }
    for i in 0..NAMES {
        let svc = format!("com.acme.Service{i}");
        assert_eq!(s.symbols.find(svc.as_bytes()), Some(symbol_of[&i]));
    }
    let text = s.render_text();
    let expected = THREADS as u64 * ROUNDS;
    let mut seen = 0;
    for line in text.lines().filter(|l| l.starts_with("dubbo_service.")) {
        let v: u64 = line.rsplit(": ").next().unwrap().parse().unwrap();
        assert_eq!(v, expected, "{line}");
        seen += 1;
    }
    assert_eq!(
        seen, NAMES,
        "duplicate registrations merge into one line per name"
    );
}

#[test]
fn varints_round_trip() {
    for v in [0u32, 1, 127, 128, 300, 16_383, 16_384, u32::MAX] {
        let mut b = Vec::new();
        symbols::put_varint(&mut b, v);
        let mut s = &b[..];
        assert_eq!(symbols::take_varint(&mut s), Some(v));
        assert!(s.is_empty());
    }
}

#[test]
fn registering_a_name_again_returns_its_id_and_grows_nothing() {
    let s = Stats::new(1, &cfg()).unwrap();
    let t = [("cluster", "users")];
    let a = s.add("cluster", "upstream_cx_active", &t, Kind::Gauge);
    let h = s.add_histogram("cluster", "upstream_cx_active", &t);
    let n = s.defs.len();
    for _ in 0..1000 {
        assert_eq!(s.add("cluster", "upstream_cx_active", &t, Kind::Gauge), a);
        assert_eq!(s.add_histogram("cluster", "upstream_cx_active", &t), h);
    }
    assert_eq!(s.defs.len(), n);
    let other = s.add(
        "cluster",
        "upstream_cx_active",
        &[("cluster", "orders")],
        Kind::Gauge,
    );
    assert_ne!(other, a);
    assert_eq!(s.defs.len(), n + 1);
}

#[test]
fn prometheus_families_follow_the_conventions_and_all_have_help() {
    let s = Arc::new(Stats::new(1, &cfg()).unwrap());
    let t = [("listener", "l")];
    let ev = s.add("admin", "downstream_cx_evicted", &t, Kind::Counter);
    s.add("listener", "downstream_cx_total", &t, Kind::Counter);
    s.add("listener", "downstream_cx_active", &t, Kind::Gauge);
    s.add_histogram("listener", "rq_time_us", &t);
    s.shard(0).add(ev, 2);
    let prom = s.render_prometheus();
    for want in [
        "# HELP ringside_admin_downstream_cx_evicted_total ringside counter admin.<listener>.downstream_cx_evicted\n",
        "# TYPE ringside_admin_downstream_cx_evicted_total counter\n",
        "ringside_admin_downstream_cx_evicted_total{listener=\"l\"} 2\n",
        "# TYPE ringside_listener_downstream_cx_total counter\n",
        "# TYPE ringside_listener_downstream_cx_active gauge\n",
        "# TYPE ringside_listener_rq_time_seconds histogram\n",
    ] {
        assert!(prom.contains(want), "missing {want:?} in\n{prom}");
    }
    let types = prom.lines().filter(|l| l.starts_with("# TYPE")).count();
    let helps = prom.lines().filter(|l| l.starts_with("# HELP")).count();
    assert_eq!((types, helps), (4, 4), "{prom}");
}

#[test]
fn istio_histograms_use_envoys_buckets_in_their_unit() {
    let s = Arc::new(Stats::new(2, &cfg()).unwrap());
    let tags = [("reporter", "source"), ("response_code", "20")];
    let h = s.add_histogram_in(
        ISTIO_SCOPE,
        "istio_request_duration_milliseconds",
        &tags,
        Layout::EnvoyMilli,
    );
    let c = s.add(ISTIO_SCOPE, "istio_requests_total", &tags, Kind::Counter);
    s.shard(0).record(h, 400); // 0.4 ms
    s.shard(1).record(h, 7_000); // 7 ms
    s.shard(1).inc(c);
    let prom = s.render_prometheus();
    for want in [
        "# TYPE istio_requests_total counter\n",
        "istio_requests_total{reporter=\"source\",response_code=\"20\"} 1\n",
        "# TYPE istio_request_duration_milliseconds histogram\n",
        "istio_request_duration_milliseconds_bucket{reporter=\"source\",response_code=\"20\",le=\"0.5\"} 1\n",
        "istio_request_duration_milliseconds_bucket{reporter=\"source\",response_code=\"20\",le=\"5\"} 1\n",
        "istio_request_duration_milliseconds_bucket{reporter=\"source\",response_code=\"20\",le=\"10\"} 2\n",
        "istio_request_duration_milliseconds_bucket{reporter=\"source\",response_code=\"20\",le=\"3600000\"} 2\n",
        "istio_request_duration_milliseconds_bucket{reporter=\"source\",response_code=\"20\",le=\"+Inf\"} 2\n",
        "istio_request_duration_milliseconds_sum{reporter=\"source\",response_code=\"20\"} 7.4\n",
    ] {
        assert!(prom.contains(want), "missing {want:?} in\n{prom}");
    }
    let text = s.render_text();
    assert!(
        text.contains("istiocustom.istio_requests_total.reporter.source.response_code.20: 1"),
        "{text}"
    );
}

#[test]
fn selection_filters_by_regex_and_by_use() {
    let s = Arc::new(Stats::new(1, &cfg()).unwrap());
    let a = s.add(
        "cluster",
        "upstream_rq_total",
        &[("cluster", "a")],
        Kind::Counter,
    );
    s.add(
        "cluster",
        "upstream_rq_total",
        &[("cluster", "b")],
        Kind::Counter,
    );
    s.add(
        "listener",
        "downstream_cx_total",
        &[("listener", "l")],
        Kind::Counter,
    );
    s.shard(0).inc(a);
    let re = Regex::new("rq_total").unwrap();
    let sel = Select {
        filter: Some(&re),
        used_only: false,
    };
    let text = s.render_text_selected(&sel);
    assert_eq!(
        text,
        "cluster.a.upstream_rq_total: 1\ncluster.b.upstream_rq_total: 0\n"
    );
    let used = Select {
        filter: None,
        used_only: true,
    };
    assert_eq!(
        s.render_text_selected(&used),
        "cluster.a.upstream_rq_total: 1\n"
    );
    let prom = s.render_prometheus_selected(&used);
    assert!(
        prom.contains("cluster=\"a\"")
            && !prom.contains("cluster=\"b\"")
            && !prom.contains("listener"),
        "{prom}"
    );
}

#[test]
fn reset_counters_zeroes_counters_but_not_gauges() {
    let s = Arc::new(Stats::new(2, &cfg()).unwrap());
    let c = s.add(
        "cluster",
        "upstream_rq_total",
        &[("cluster", "a")],
        Kind::Counter,
    );
    let g = s.add(
        "cluster",
        "upstream_rq_active",
        &[("cluster", "a")],
        Kind::Gauge,
    );
    s.shard(0).add(c, 5);
    s.shard(1).add(c, 2);
    s.shard(0).add(g, 3);
    s.reset_counters();
    let text = s.render_text();
    assert!(text.contains("cluster.a.upstream_rq_total: 0"), "{text}");
    assert!(text.contains("cluster.a.upstream_rq_active: 3"), "{text}");
    s.shard(1).inc(c);
    let text = s.render_text();
    assert!(text.contains("cluster.a.upstream_rq_total: 1"), "{text}");
    let prom = s.render_prometheus();
    assert!(
        prom.contains("ringside_cluster_upstream_rq_total{cluster=\"a\"} 1"),
        "{prom}"
    );
    assert_eq!(s.total(c), 8, "the shards' slots are untouched");
}
