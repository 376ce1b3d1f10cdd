//! Packet path on a `net_ring` loopback port (what TX sends, RX receives): bytes, order and
//! mbuf accounting through ringside's queue wrapper and dpdk-sys's shims. One EAL per process,
//! so one test per file.
#![cfg(feature = "dpdk")]

use dataplane::dpdk::eal;

#[test]
fn net_ring_loopback_carries_every_byte_in_order() {
    let cfg = hw_tests::test_dpdk_config(&["net_ring0"], "10.213.0.2");
    let e = eal::init(&cfg).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(e.port_name, "net_ring0");
    let mut q = e.queue(0).expect("queue 0");
    assert!(e.queue(1).is_none(), "dpdk.queues is 1");
    let free0 = q.pool_free();

    // 1000 packets, sizes 60..1514, each filled with a pattern derived from its index.
    let n = 1000usize;
    let len = |i: usize| 60 + (i * 37) % 1455;
    let byte = |i: usize, j: usize| (i as u8).wrapping_mul(31).wrapping_add(j as u8);
    let mut got = 0usize;
    let mut sent = 0usize;
    while got < n {
        // Send in chunks smaller than the ring, then read back.
        let upto = (sent + 200).min(n);
        while sent < upto {
            let i = sent;
            assert!(q.send_with(len(i), |b| {
                for (j, x) in b.iter_mut().enumerate() {
                    *x = byte(i, j);
                }
            }));
            sent += 1;
        }
        q.flush();
        while let Some(m) = q.recv() {
            let d = m.data();
            assert_eq!(d.len(), len(got), "packet {got} length");
            assert!(
                d.iter().enumerate().all(|(j, &x)| x == byte(got, j)),
                "packet {got} bytes"
            );
            got += 1;
        }
    }
    assert_eq!(got, n);
    assert!(q.recv().is_none(), "nothing beyond what was sent");
    assert_eq!(q.stats.tx_packets, n as u64);
    assert_eq!(q.stats.rx_packets, n as u64);
    assert_eq!(q.stats.tx_dropped, 0);
    // Every mbuf went back to the pool (modulo the per-core cache).
    let free1 = q.pool_free();
    assert!(
        free1 + 512 >= free0,
        "mbufs leaked: {free0} free before, {free1} after"
    );
}
