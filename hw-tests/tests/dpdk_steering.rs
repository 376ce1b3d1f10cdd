//! Multi-queue steering decisions (`dataplane::dpdk::classify`) on hand-built frames: which
//! shard a received packet belongs to when RSS may have put it on another shard's queue. No EAL
//! needed; built with the other DPDK tests.
#![cfg(feature = "dpdk")]

use dataplane::dpdk::{classify, Dest};

const US: [u8; 4] = [10, 213, 0, 2];
const PEER: [u8; 4] = [10, 213, 0, 1];

fn cfg(queues: u16) -> config::Dpdk {
    let mut c = hw_tests::test_dpdk_config(&["net_null0"], "10.213.0.2");
    c.queues = queues;
    c
}

fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An IPv4 packet (20-byte header, or 24 with an option) carrying a TCP header's ports.
fn ipv4(proto: u8, dst: [u8; 4], dst_port: u16, frag: u16, options: bool) -> Vec<u8> {
    let ihl = if options { 6 } else { 5 };
    let mut ip = vec![0x40 | ihl, 0, 0, 40, 0, 1];
    ip.extend_from_slice(&frag.to_be_bytes());
    ip.extend_from_slice(&[64, proto, 0, 0]);
    ip.extend_from_slice(&PEER);
    ip.extend_from_slice(&dst);
    if options {
        ip.extend_from_slice(&[1, 1, 1, 0]);
    }
    ip.extend_from_slice(&20880u16.to_be_bytes());
    ip.extend_from_slice(&dst_port.to_be_bytes());
    ip.extend_from_slice(&[0; 16]);
    eth(0x0800, &ip)
}

fn arp(op: u16) -> Vec<u8> {
    let mut a = vec![0, 1, 8, 0, 6, 4];
    a.extend_from_slice(&op.to_be_bytes());
    a.extend_from_slice(&[0x02, 0, 0, 0, 0, 2]);
    a.extend_from_slice(&PEER);
    a.extend_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    a.extend_from_slice(&US);
    eth(0x0806, &a)
}

#[test]
fn packets_of_another_shards_upstream_connection_move_and_the_rest_stay() {
    let two = cfg(2);
    let none = |_| false;
    let (q0_port, q1_port) = (*two.source_ports(0).start() + 7, *two.source_ports(1).end());
    // A reply to queue 1's upstream connection that RSS put on queue 0, and the reverse.
    assert_eq!(
        classify(&ipv4(6, US, q1_port, 0, false), &two, none, 0),
        Dest::Queue(1)
    );
    assert_eq!(
        classify(&ipv4(6, US, q0_port, 0x4000, true), &two, none, 1),
        Dest::Queue(0),
        "DF set, IP options: still TCP to us"
    );
    // Already on the right queue.
    assert_eq!(
        classify(&ipv4(6, US, q1_port, 0, false), &two, none, 1),
        Dest::Here
    );
    // A listener's port (below or inside the source range) stays where RSS put its SYN.
    assert_eq!(
        classify(&ipv4(6, US, 20880, 0, false), &two, none, 0),
        Dest::Here
    );
    let listening_high = |p| p == q1_port;
    assert_eq!(
        classify(&ipv4(6, US, q1_port, 0, false), &two, listening_high, 0),
        Dest::Here
    );
    // Not TCP, not to our address, a later fragment: stay.
    assert_eq!(
        classify(&ipv4(17, US, q1_port, 0, false), &two, none, 0),
        Dest::Here
    );
    assert_eq!(
        classify(&ipv4(6, [10, 213, 0, 9], q1_port, 0, false), &two, none, 0),
        Dest::Here
    );
    assert_eq!(
        classify(&ipv4(6, US, q1_port, 0x0010, false), &two, none, 0),
        Dest::Here
    );
    // ARP replies go to every stack; requests are answered where they land.
    assert_eq!(classify(&arp(2), &two, none, 0), Dest::Everyone);
    assert_eq!(classify(&arp(1), &two, none, 0), Dest::Here);
    // Runts and other ethertypes stay (the stack drops what it cannot parse).
    assert_eq!(classify(&[0u8; 10], &two, none, 0), Dest::Here);
    assert_eq!(
        classify(&ipv4(6, US, q1_port, 0, false)[..36], &two, none, 0),
        Dest::Here
    );
    assert_eq!(classify(&eth(0x86dd, &[0; 40]), &two, none, 0), Dest::Here);
}
