//! MQTT over TLS (`mqtts://`) against the real binary with rustls clients: messages both
//! ways between TLS and TCP clients, TLS 1.2 and 1.3, ALPN; mutual TLS accepted and
//! refused (no certificate, expired, another CA); the user name from the certificate;
//! certificate reload (SIGHUP and file change) with live connections untouched; a bad
//! certificate file; and garbage on the TLS port closing only that connection.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::transport::{ClientStream, Pki, client_config_trusting, tls_connect};
use common::{Broker, RawClient, WAIT};
use ringmq::protocol::{Connect, Packet, ProtocolVersion, QoS, ReasonCode};
use rustls::ClientConfig;

/// A broker with a plain listener (addrs[0]) and a TLS one (addrs[1]).
fn tls_broker(pki: &Pki, server_stem: &str, extra: &[&str]) -> Broker {
    let server = pki.server(server_stem);
    let (cert, key) = (server.cert.to_str().unwrap().to_string(), server.key.to_str().unwrap().to_string());
    let mut args = vec!["--listener", "mqtts://127.0.0.1:0", "--tls-cert", &cert, "--tls-key", &key];
    args.extend_from_slice(extra);
    Broker::start(&args)
}

fn tls_client(broker: &Broker, config: Arc<ClientConfig>, version: ProtocolVersion) -> std::io::Result<RawClient> {
    let stream = tls_connect(broker.addrs[1], config)?;
    Ok(RawClient::over(ClientStream::Tls(Box::new(stream)), version))
}

fn connect_as(client: &mut RawClient, client_id: &str, username: Option<&str>) -> u8 {
    let connect = Connect {
        username: username.map(|name| Bytes::copy_from_slice(name.as_bytes())),
        ..Connect::new(client.version, Bytes::copy_from_slice(client_id.as_bytes()))
    };
    client.connect_sending(Packet::Connect(Box::new(connect))).code
}

/// The Common Name of the certificate the broker presented.
fn presented_common_name(client: &mut RawClient) -> String {
    let ClientStream::Tls(stream) = client.stream() else { panic!("a TLS client") };
    let der = stream.conn.peer_certificates().expect("a server certificate")[0].clone();
    let (_, certificate) = x509_parser::parse_x509_certificate(&der).expect("parse");
    certificate.subject().iter_common_name().next().unwrap().as_str().unwrap().to_string()
}

#[test]
fn tls_and_tcp_clients_exchange_messages_of_every_qos_and_size() {
    let pki = Pki::new("exchange");
    let broker = tls_broker(&pki, "server", &[]);
    for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
        let mut tls = tls_client(&broker, pki.client_config(None), version).expect("TLS handshake");
        assert_eq!(connect_as(&mut tls, "tls-sub", None), 0);
        let mut tcp = RawClient::open(broker.addrs[0], version);
        assert_eq!(connect_as(&mut tcp, "tcp-pub", None), 0);
        tls.subscribe(&[("x/#", QoS::ExactlyOnce)]);
        tcp.subscribe(&[("y/#", QoS::ExactlyOnce)]);
        // 300 KiB spans many TLS records each way.
        let big: Vec<u8> = (0..300 * 1024).map(|index| (index % 251) as u8).collect();
        for (id, qos) in [(1, QoS::AtMostOnce), (2, QoS::AtLeastOnce), (3, QoS::ExactlyOnce)] {
            tcp.publish("x/1", &big, qos, false, id);
            let received = tls.recv_publish();
            assert_eq!((received.qos, &received.payload[..]), (qos, &big[..]), "TCP -> TLS at {qos:?}");
            tls.ack(&received);
            tls.publish("y/1", b"back", qos, false, id);
            let received = tcp.recv_publish();
            assert_eq!(&received.payload[..], b"back", "TLS -> TCP at {qos:?}");
            tcp.ack(&received);
        }
        tls.disconnect();
        tcp.disconnect();
    }
    let counters = broker.wait_for_counters("handshakes counted", |counters| counters.total("tls_handshakes") >= 2);
    assert_eq!(counters.total("tls_handshake_failures"), 0);
}

#[test]
fn tls_1_2_and_alpn_mqtt_are_served_and_a_foreign_alpn_is_refused() {
    let pki = Pki::new("versions");
    let broker = tls_broker(&pki, "server", &[]);
    let ca = pki.ca_path();
    let tls12 = {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for certificate in rustls::pki_types::CertificateDer::pem_file_iter(&ca).unwrap() {
            roots.add(certificate.unwrap()).unwrap();
        }
        let config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    };
    let mut client = tls_client(&broker, tls12, ProtocolVersion::V311).expect("TLS 1.2 handshake");
    assert_eq!(connect_as(&mut client, "tls12", None), 0);
    let ClientStream::Tls(stream) = client.stream() else { unreachable!() };
    assert_eq!(stream.conn.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_2));

    let mut client = tls_client(&broker, client_config_trusting(&ca, None, &[b"mqtt"]), ProtocolVersion::V5).expect("ALPN mqtt");
    let ClientStream::Tls(stream) = client.stream() else { unreachable!() };
    assert_eq!(stream.conn.alpn_protocol(), Some(&b"mqtt"[..]));
    assert_eq!(connect_as(&mut client, "alpn", None), 0);
    assert!(tls_client(&broker, client_config_trusting(&ca, None, &[b"h2"]), ProtocolVersion::V5).is_err(), "no common protocol");

    // A client that does not trust the broker's CA refuses it (the broker is not lenient
    // about its own certificate either: it is what the files say).
    let other = Pki::new("other");
    assert!(tls_client(&broker, other.client_config(None), ProtocolVersion::V5).is_err());
}

#[test]
fn mutual_tls_accepts_a_valid_certificate_and_refuses_none_expired_or_foreign() {
    let pki = Pki::new("mtls");
    let ca = pki.ca_path().to_str().unwrap().to_string();
    let broker = tls_broker(&pki, "server", &["--tls-client-ca", &ca]);
    let alice = pki.client("alice");
    let mut client = tls_client(&broker, pki.client_config(Some(&alice)), ProtocolVersion::V5).expect("a valid certificate");
    assert_eq!(connect_as(&mut client, "alice-device", None), 0);
    client.subscribe(&[("t", QoS::AtLeastOnce)]);

    let refused = [
        ("no certificate", pki.client_config(None)),
        ("expired", pki.client_config(Some(&pki.expired_client("alice")))),
        ("another CA", pki.client_config(Some(&pki.foreign_client("alice")))),
    ];
    for (what, config) in refused {
        let outcome = tls_client(&broker, config, ProtocolVersion::V5).and_then(|mut client| {
            // Should TLS 1.3 let the handshake look finished, the broker's alert arrives
            // in place of the CONNACK.
            client.send(&client.connect_packet("refused", true, 60, None));
            match client.try_recv(WAIT) {
                Some(packet) => Ok(packet),
                None => Err(std::io::Error::other("closed")),
            }
        });
        assert!(outcome.is_err(), "{what}: refused, got {outcome:?}");
    }
    let counters = broker.wait_for_counters("failed handshakes counted", |counters| counters.total("tls_handshake_failures") >= 3);
    assert_eq!(counters.total("tls_handshakes"), 1);
    // The accepted client was never disturbed.
    client.publish("t", b"still here", QoS::AtLeastOnce, false, 7);
    assert_eq!(&client.recv_publish().payload[..], b"still here");
}

#[test]
fn the_user_name_comes_from_the_certificate_when_asked_and_acls_see_it() {
    let pki = Pki::new("identity");
    let acl = pki.dir.join("acl");
    std::fs::write(&acl, "topic read $SYS/#\nuser alice\ntopic readwrite alice/#\n").unwrap();
    let (ca, acl) = (pki.ca_path().to_str().unwrap().to_string(), acl.to_str().unwrap().to_string());
    let args = ["--tls-client-ca", &ca, "--tls-client-certificate", "optional", "--tls-username-from", "cn", "--acl-file", &acl];
    let broker = tls_broker(&pki, "server", &args);

    // The certificate says alice; the CONNECT's claim to be bob is not what counts.
    let mut alice = tls_client(&broker, pki.client_config(Some(&pki.client("alice"))), ProtocolVersion::V5).expect("handshake");
    assert_eq!(connect_as(&mut alice, "a1", Some("bob")), 0);
    let suback = alice.subscribe(&[("alice/#", QoS::AtLeastOnce)]);
    assert_eq!(suback.codes, [ReasonCode::GRANTED_QOS_1], "alice's rules apply");
    alice.publish("alice/x", b"mine", QoS::AtLeastOnce, false, 1);
    assert_eq!(&alice.recv_publish().payload[..], b"mine");

    // Without a certificate (optional), a client is whoever its CONNECT says: anonymous
    // here, with the anonymous rules.
    let mut anonymous = tls_client(&broker, pki.client_config(None), ProtocolVersion::V5).expect("no certificate is optional");
    assert_eq!(connect_as(&mut anonymous, "a2", None), 0);
    assert_eq!(anonymous.subscribe(&[("alice/#", QoS::AtLeastOnce)]).codes, [ReasonCode::NOT_AUTHORIZED]);
}

#[test]
fn certificates_reload_on_sighup_and_on_file_change_and_live_connections_stay() {
    let pki = Pki::new("reload");
    let first = pki.server("first");
    let (cert, key) = (pki.dir.join("live.pem"), pki.dir.join("live.key"));
    std::fs::copy(&first.cert, &cert).unwrap();
    std::fs::copy(&first.key, &key).unwrap();
    let broker =
        Broker::start(&["--listener", "mqtts://127.0.0.1:0", "--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()]);
    let mut live = tls_client(&broker, pki.client_config(None), ProtocolVersion::V5).expect("handshake");
    assert_eq!(presented_common_name(&mut live), "first");
    assert_eq!(connect_as(&mut live, "live", None), 0);
    live.subscribe(&[("t", QoS::AtLeastOnce)]);

    let install = |identity: &common::transport::Identity| {
        // As certbot does: new files renamed into place.
        for (from, to) in [(&identity.cert, &cert), (&identity.key, &key)] {
            let staged = to.with_extension("new");
            std::fs::copy(from, &staged).unwrap();
            std::fs::rename(&staged, to).unwrap();
        }
    };
    let presented_now = || {
        let mut client = tls_client(&broker, pki.client_config(None), ProtocolVersion::V5).expect("handshake");
        presented_common_name(&mut client)
    };

    install(&pki.server("second"));
    broker.signal(libc::SIGHUP);
    let deadline = Instant::now() + WAIT;
    while presented_now() != "second" {
        assert!(Instant::now() < deadline, "SIGHUP reloads the certificate");
        std::thread::sleep(Duration::from_millis(50));
    }

    // No signal: the file watch notices the change.
    install(&pki.server("third"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while presented_now() != "third" {
        assert!(Instant::now() < deadline, "a changed file reloads the certificate");
        std::thread::sleep(Duration::from_millis(100));
    }

    // A broken file at reload: logged, and the certificate in use stays.
    std::fs::write(&cert, "not a certificate").unwrap();
    broker.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(presented_now(), "third");

    // Through all of it, the first connection kept working.
    live.publish("t", b"through three certificates", QoS::AtLeastOnce, false, 1);
    assert_eq!(&live.recv_publish().payload[..], b"through three certificates");
}

#[test]
fn a_bad_certificate_file_at_start_is_an_error_naming_it() {
    let pki = Pki::new("bad");
    let server = pki.server("server");
    let garbage = pki.dir.join("garbage.pem");
    std::fs::write(&garbage, "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n").unwrap();
    let run = |cert: &std::path::Path, key: &std::path::Path| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_ringmq"))
            .args(["--listener", "mqtts://127.0.0.1:0", "--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()])
            .output()
            .expect("run ringmq");
        assert!(!output.status.success());
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let stderr = run(&garbage, &server.key);
    assert!(stderr.contains(garbage.to_str().unwrap()), "{stderr}");
    let missing = pki.dir.join("missing.key");
    let stderr = run(&server.cert, &missing);
    assert!(stderr.contains(missing.to_str().unwrap()), "{stderr}");
    // A key that is not the certificate's.
    let other = pki.server("other");
    let stderr = run(&server.cert, &other.key);
    assert!(stderr.contains(server.cert.to_str().unwrap()), "{stderr}");
    let output =
        std::process::Command::new(env!("CARGO_BIN_EXE_ringmq")).args(["--listener", "mqtts://127.0.0.1:0"]).output().expect("run ringmq");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("--tls-cert"), "{stderr}");
}

#[test]
fn garbage_truncated_records_and_plain_mqtt_on_the_tls_port_close_only_that_connection() {
    let pki = Pki::new("garbage");
    let broker = tls_broker(&pki, "server", &[]);
    let mut bystander = tls_client(&broker, pki.client_config(None), ProtocolVersion::V311).expect("handshake");
    assert_eq!(connect_as(&mut bystander, "bystander", None), 0);
    bystander.subscribe(&[("t", QoS::AtLeastOnce)]);

    let closes = |bytes: &[u8], then_hang_up: bool| {
        let mut stream = TcpStream::connect(broker.addrs[1]).unwrap();
        stream.write_all(bytes).unwrap();
        if then_hang_up {
            let _ = stream.shutdown(std::net::Shutdown::Write);
        }
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let mut answer = Vec::new();
        // Whatever the broker says (an alert), it then closes.
        let _ = stream.read_to_end(&mut answer);
        answer
    };
    // A plain MQTT CONNECT: a TLS alert at most, never a CONNACK.
    let answer = closes(&[0x10, 0x0c, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3c, 0x00, 0x00], false);
    assert!(answer.first().is_none_or(|&kind| kind == 0x15), "an alert or nothing: {answer:?}");
    // Random bytes.
    closes(&[0x42; 300], false);
    // A handshake record announcing 16 KiB, of which 10 bytes arrive before the client hangs up.
    closes(&[0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x00, 0x3f, 0xfc, 0x03, 0x03, 0, 0, 0, 0], true);
    // A real handshake, then a corrupted application-data record.
    let mut stream = tls_connect(broker.addrs[1], pki.client_config(None)).expect("handshake");
    stream.sock.write_all(&[0x17, 0x03, 0x03, 0x00, 0x20]).unwrap();
    stream.sock.write_all(&[0x99; 32]).unwrap();
    stream.sock.set_read_timeout(Some(WAIT)).unwrap();
    let mut rest = Vec::new();
    let _ = stream.sock.read_to_end(&mut rest);

    broker.wait_for_counters("failures counted", |counters| {
        counters.total("tls_handshake_failures") + counters.total("transport_errors") >= 3
    });
    bystander.publish("t", b"unaffected", QoS::AtLeastOnce, false, 1);
    assert_eq!(&bystander.recv_publish().payload[..], b"unaffected");
}
