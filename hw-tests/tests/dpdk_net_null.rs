//! `net_null`: TX swallows, RX makes packets. Checks the burst path end to end and prints the
//! packets per second one core moves through ringside's queue wrapper (docs/benchmarks.md).
#![cfg(feature = "dpdk")]

use std::time::Instant;

use dataplane::dpdk::eal;

#[test]
fn net_null_packets_per_second_per_core() {
    let cfg = hw_tests::test_dpdk_config(&["net_null0,size=64"], "10.213.1.2");
    let e = eal::init(&cfg).unwrap_or_else(|e| panic!("{e}"));
    let mut q = e.queue(0).expect("queue 0");
    let n: u64 = std::env::var("RINGSIDE_DPDK_NULL_PACKETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000_000);

    let t = Instant::now();
    let sent = q.blast(n, 64);
    let tx_s = t.elapsed().as_secs_f64();
    assert_eq!(sent, n, "net_null takes every packet");

    let t = Instant::now();
    let got = q.drain(n);
    let rx_s = t.elapsed().as_secs_f64();
    assert_eq!(got, n, "net_null always has packets to receive");

    // The per-packet path the TCP stack uses: alloc, append, fill, burst.
    let t = Instant::now();
    let m = n / 5;
    for _ in 0..m {
        assert!(q.send_with(64, |b| b[0] = 1));
    }
    q.flush();
    let one_s = t.elapsed().as_secs_f64();
    assert_eq!(q.stats.tx_dropped, 0);

    let mpps = |k: u64, s: f64| k as f64 / s / 1e6;
    println!(
        "net_null 64 B, one core: tx burst {:.1} Mpps, rx burst {:.1} Mpps, per-packet send {:.1} Mpps",
        mpps(n, tx_s),
        mpps(n, rx_s),
        mpps(m, one_s)
    );
    // A floor far below any working machine (a broken burst path moves ~0).
    assert!(mpps(n, tx_s) > 0.5 && mpps(n, rx_s) > 0.5);
}
