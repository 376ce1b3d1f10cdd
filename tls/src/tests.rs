//! A TLS pair over loopback TCP on a monoio runtime: data both ways through the split halves
//! at once, records larger than one read, and the SAN checks of both sides.

use std::path::PathBuf;

use monoio::io::{AsyncReadRent, AsyncReadRentExt, AsyncWriteRent, AsyncWriteRentExt, Splitable};
use monoio::net::{TcpListener, TcpStream};

use super::*;

struct Pki {
    dir: PathBuf,
}

impl Pki {
    /// A CA and leaves `ns/sa` under `dir`: `NAME.pem` and `NAME.key`.
    fn new(test: &str, leaves: &[(&str, &str)]) -> Pki {
        let dir = std::env::temp_dir().join(format!("tls-unit-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        for (name, id) in leaves {
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            p.subject_alt_names = vec![rcgen::SanType::URI(id.to_string().try_into().unwrap())];
            let cert = p.signed_by(&key, &issuer).unwrap();
            std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
            std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
        }
        Pki { dir }
    }

    fn path(&self, f: &str) -> PathBuf {
        self.dir.join(f)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const SERVER_ID: &str = "spiffe://cluster.local/ns/default/sa/provider";
const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/consumer";

fn configs(
    pki: &Pki,
    server_wants: &[SanMatch],
    client_wants: &[SanMatch],
) -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    configs_with_tickets(pki, server_wants, client_wants, Some(TICKET_ROTATION_S_MAX))
}

fn configs_with_tickets(
    pki: &Pki,
    server_wants: &[SanMatch],
    client_wants: &[SanMatch],
    tickets: Option<u32>,
) -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    let alpn = vec!["istio".to_string()];
    let server = ServerSettings {
        cert_chain: Pem::File(&pki.path("server.pem")),
        private_key: Pem::File(&pki.path("server.key")),
        ca: Some(Pem::File(&pki.path("ca.pem"))),
        require_client_certificate: true,
        subject_alt_names: server_wants,
        alpn: &alpn,
        params: &Params::default(),
        tickets,
    }
    .build()
    .unwrap();
    let client = ClientSettings {
        cert_chain: Some(Pem::File(&pki.path("client.pem"))),
        private_key: Some(Pem::File(&pki.path("client.key"))),
        ca: Pem::File(&pki.path("ca.pem")),
        subject_alt_names: client_wants,
        alpn: &alpn,
        sni: true,
        san_kinds: SanKinds::Uri,
        params: &Params::default(),
    }
    .build()
    .unwrap();
    (server, client)
}

fn run<F: std::future::Future>(f: F) -> F::Output {
    monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .unwrap()
        .block_on(f)
}

/// Handshakes both sides over loopback; returns (server result, client result).
async fn pair(
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
) -> (
    Result<TlsStream<TcpStream>, HandshakeError>,
    Result<TlsStream<TcpStream>, HandshakeError>,
) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let s = monoio::spawn(async move {
        let (tcp, _) = l.accept().await.unwrap();
        accept(tcp, server).await
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("outbound_.20880_._.provider.default.svc.cluster.local")
        .unwrap()
        .to_owned();
    let c = connect(tcp, client, name).await;
    (s.await, c)
}

#[test]
fn mutual_tls_moves_data_both_ways_through_split_halves() {
    let pki = Pki::new("data", &[("server", SERVER_ID), ("client", CLIENT_ID)]);
    let (sc, cc) = configs(
        &pki,
        &[SanMatch::Prefix("spiffe://cluster.local/".into())],
        &[SanMatch::Exact(SERVER_ID.into())],
    );
    run(async move {
        let (s, c) = pair(sc, cc).await;
        let (s, c) = (s.unwrap(), c.unwrap());
        assert_eq!(s.alpn_protocol().as_deref(), Some(&b"istio"[..]));
        let peer = c.peer_certificates().unwrap();
        assert_eq!(x509::uri_sans(&peer[0]), vec![SERVER_ID.as_bytes()]);
        // 1 MiB each way at the same time: more than rustls buffers and than one read holds.
        let payload: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
        let (mut sr, mut sw) = s.into_split();
        let (mut cr, mut cw) = c.into_split();
        let p = payload.clone();
        let echo = monoio::spawn(async move {
            let buf = vec![0u8; 1 << 20];
            let (r, buf) = sr.read_exact(buf).await;
            r.unwrap();
            let (r, _) = sw.write_all(buf).await;
            r.unwrap();
            sw.shutdown().await.unwrap();
        });
        let reader = monoio::spawn(async move {
            let buf = vec![0u8; 1 << 20];
            let (r, buf) = cr.read_exact(buf).await;
            r.unwrap();
            // close_notify, then EOF: a clean end reads as 0.
            let (r, _) = cr.read(vec![0u8; 16]).await;
            (buf, r.unwrap())
        });
        let (r, _) = cw.write_all(p).await;
        r.unwrap();
        echo.await;
        let (echoed, end) = reader.await;
        assert!(echoed == payload, "echoed bytes differ");
        assert_eq!(end, 0);
    });
}

#[test]
fn a_server_with_an_unexpected_san_is_refused_by_the_client() {
    let pki = Pki::new(
        "san-server",
        &[("server", SERVER_ID), ("client", CLIENT_ID)],
    );
    let other = SanMatch::Exact("spiffe://cluster.local/ns/default/sa/other".into());
    let (sc, cc) = configs(&pki, &[], &[other]);
    run(async move {
        let (s, c) = pair(sc, cc).await;
        let e = c.err().expect("client must refuse").to_string();
        assert!(e.contains("match none of"), "{e}");
        assert!(s.is_err(), "the server sees the alert");
    });
}

#[test]
fn a_client_with_an_unexpected_san_is_refused_by_the_server() {
    let pki = Pki::new(
        "san-client",
        &[("server", SERVER_ID), ("client", CLIENT_ID)],
    );
    // A prefix that the client's id does not start with.
    let other = SanMatch::Prefix("spiffe://cluster.local/ns/other/".into());
    let (sc, cc) = configs(&pki, &[other], &[SanMatch::Exact(SERVER_ID.into())]);
    run(async move {
        let (s, _c) = pair(sc, cc).await;
        let e = s.err().expect("server must refuse").to_string();
        assert!(e.contains("match none of"), "{e}");
    });
}

#[test]
fn a_client_without_a_certificate_is_refused_when_one_is_required() {
    let pki = Pki::new("no-cert", &[("server", SERVER_ID), ("client", CLIENT_ID)]);
    let (sc, _) = configs(&pki, &[], &[]);
    let cc = ClientSettings {
        cert_chain: None,
        private_key: None,
        ca: Pem::File(&pki.path("ca.pem")),
        subject_alt_names: &[],
        alpn: &[],
        sni: true,
        san_kinds: SanKinds::Uri,
        params: &Params::default(),
    }
    .build()
    .unwrap();
    run(async move {
        let (s, _c) = pair(sc, cc).await;
        assert!(
            s.is_err(),
            "server must refuse a client without a certificate"
        );
    });
}

#[test]
fn an_alpn_mismatch_is_served_without_alpn_as_envoy_does() {
    let pki = Pki::new("alpn", &[("server", SERVER_ID), ("client", CLIENT_ID)]);
    let (sc, cc) = configs(&pki, &[], &[]);
    // The server offers h2 (Istio's inbound chains), the client asks for istio only.
    let mut server = (*sc).clone();
    server.alpn_protocols = vec![b"h2".to_vec()];
    let server = Arc::new(server);
    run(async move {
        // rustls alone refuses the handshake (no_application_protocol).
        let (s, c) = pair(server.clone(), cc.clone()).await;
        assert!(
            s.is_err() && c.is_err(),
            "plain accept must refuse a mismatch"
        );
        // Lenient: served, without ALPN.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let no_alpn = without_alpn(&server);
        let s = monoio::spawn(async move {
            let (tcp, _) = l.accept().await.unwrap();
            accept_lenient_alpn(tcp, server, &no_alpn).await
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("provider").unwrap().to_owned();
        let c = connect(tcp, cc.clone(), name).await.unwrap();
        let s = s.await.unwrap();
        assert_eq!(c.alpn_protocol(), None);
        assert_eq!(s.alpn_protocol(), None);
        // A client that offers what the server has still negotiates it.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let mut h2 = (*cc).clone();
        h2.alpn_protocols = vec![b"istio".to_vec(), b"h2".to_vec()];
        let mut server = (*sc).clone();
        server.alpn_protocols = vec![b"h2".to_vec()];
        let server = Arc::new(server);
        let no_alpn = without_alpn(&server);
        let s = monoio::spawn(async move {
            let (tcp, _) = l.accept().await.unwrap();
            accept_lenient_alpn(tcp, server, &no_alpn).await
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("provider").unwrap().to_owned();
        let c = connect(tcp, Arc::new(h2), name).await.unwrap();
        assert_eq!(c.alpn_protocol().as_deref(), Some(&b"h2"[..]));
        assert_eq!(
            s.await.unwrap().alpn_protocol().as_deref(),
            Some(&b"h2"[..])
        );
    });
}

/// One byte from the server, read by the client: the client has processed everything the
/// server sent before it (the session tickets that follow a handshake).
async fn server_speaks(s: TlsStream<TcpStream>, c: TlsStream<TcpStream>) {
    let (_sr, mut sw) = s.into_split();
    let (mut cr, _cw) = c.into_split();
    let (r, _) = sw.write_all(b"x".to_vec()).await;
    r.unwrap();
    let (r, b) = cr.read_exact(vec![0u8; 1]).await;
    r.unwrap();
    assert_eq!(b, b"x");
}

#[test]
fn tickets_resume_only_on_the_listener_context_that_issued_them() {
    let pki = Pki::new("tickets", &[("server", SERVER_ID), ("client", CLIENT_ID)]);
    let wants = (
        [SanMatch::Exact(CLIENT_ID.into())],
        [SanMatch::Exact(SERVER_ID.into())],
    );
    let (sc, cc) = configs(&pki, &wants.0, &wants.1);
    // The same settings built again (another listener, or this one after a rotation).
    let (other, _) = configs(&pki, &wants.0, &wants.1);
    run(async move {
        let (s, c) = pair(sc.clone(), cc.clone()).await;
        let (s, c) = (s.unwrap(), c.unwrap());
        assert!(
            !s.resumed() && !c.resumed(),
            "the first handshake is a full one"
        );
        server_speaks(s, c).await;

        let (s, c) = pair(sc.clone(), cc.clone()).await;
        let (s, c) = (s.unwrap(), c.unwrap());
        assert!(s.resumed() && c.resumed(), "the second connection resumes");
        // The client certificate travels in the ticket: RBAC still sees the client's id.
        let peer = s
            .peer_certificates()
            .expect("client certificate after resumption");
        assert_eq!(x509::uri_sans(&peer[0]), vec![CLIENT_ID.as_bytes()]);
        server_speaks(s, c).await;

        // A ticket of one context offered to another: a full handshake, not a failure.
        let (s, c) = pair(other, cc).await;
        let (s, c) = (s.unwrap(), c.unwrap());
        assert!(
            !s.resumed() && !c.resumed(),
            "another context's ticket must not resume"
        );
    });
}

#[test]
fn unread_plaintext_and_close_notify_show_on_an_idle_connection() {
    let pki = Pki::new("unread", &[("server", SERVER_ID), ("client", CLIENT_ID)]);
    let (sc, cc) = configs(
        &pki,
        &[SanMatch::Prefix("spiffe://cluster.local/".into())],
        &[SanMatch::Exact(SERVER_ID.into())],
    );
    run(async move {
        let (s, c) = pair(sc, cc).await;
        let (mut s, mut c) = (s.unwrap(), c.unwrap());
        assert!(!c.has_unread());
        // Two bytes in one record, one read: the second stays in rustls.
        let (r, _) = s.write_all(b"ab".to_vec()).await;
        r.unwrap();
        let (r, b) = c.read_exact(vec![0u8; 1]).await;
        r.unwrap();
        assert_eq!(b, b"a");
        assert!(c.has_unread(), "a byte left in rustls");
        let (r, _) = c.read_exact(vec![0u8; 1]).await;
        r.unwrap();
        assert!(!c.has_unread(), "all read");
        // The server's close_notify, pulled in by a read that then ends: seen.
        s.shutdown().await.unwrap();
        let (r, _) = c.read(vec![0u8; 1]).await;
        assert_eq!(r.unwrap(), 0);
        assert!(c.has_unread(), "close_notify");
    });
}

/// `ticket_key_rotation_s`: a ticket decrypts while its key is the current one or the one
/// before, not once the keys changed twice since (here every second); the lifetime clients
/// are told is twice the period.
#[test]
fn ticket_keys_rotate_on_the_configured_period() {
    let t = ticketer(1).unwrap();
    assert_eq!(t.lifetime(), 2);
    assert_eq!(
        ticketer(TICKET_ROTATION_S_MAX).unwrap().lifetime(),
        2 * TICKET_ROTATION_S_MAX
    );
    let old = t.encrypt(b"session").unwrap();
    assert_eq!(t.decrypt(&old).as_deref(), Some(&b"session"[..]));
    // A use after the period rolls the keys: the old one still decrypts.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let newer = t.encrypt(b"later").unwrap();
    assert_eq!(t.decrypt(&old).as_deref(), Some(&b"session"[..]));
    // Rolled again: the first key is gone, the second still decrypts.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    assert_eq!(
        t.decrypt(&old),
        None,
        "a ticket of keys rotated out decrypted"
    );
    assert_eq!(t.decrypt(&newer).as_deref(), Some(&b"later"[..]));
}

/// `session_tickets: false`: no tickets sent, so the next connection is a full handshake.
#[test]
fn no_tickets_when_they_are_off() {
    let pki = Pki::new(
        "no-tickets",
        &[("server", SERVER_ID), ("client", CLIENT_ID)],
    );
    let wants = (
        [SanMatch::Exact(CLIENT_ID.into())],
        [SanMatch::Exact(SERVER_ID.into())],
    );
    let (off, client) = configs_with_tickets(&pki, &wants.0, &wants.1, None);
    run(async move {
        let (s, c) = pair(off.clone(), client.clone()).await;
        server_speaks(s.unwrap(), c.unwrap()).await;
        let (s, c) = pair(off, client).await;
        let (s, c) = (s.unwrap(), c.unwrap());
        assert!(!s.resumed() && !c.resumed(), "tickets off: no resumption");
    });
}
