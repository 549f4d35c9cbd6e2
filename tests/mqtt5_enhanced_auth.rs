//! MQTT 5.0 enhanced authentication (AUTH packets) with the built-in SCRAM-SHA-512 method
//! over the password file: the exchange before CONNACK, re-authentication after it, and
//! the refusals. The client side of SCRAM is computed here, independently of the broker.

mod common;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use common::{Broker, RawClient, WAIT};
use hmac::{Hmac, KeyInit, Mac};
use ringmq::protocol::{Auth, Packet, Properties, ReasonCode};
use sha2::{Digest, Sha512};

const METHOD: &[u8] = b"SCRAM-SHA-512";
const CLIENT_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";

fn hmac(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut mac = <Hmac<Sha512> as KeyInit>::new_from_slice(key).expect("any key length");
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

fn attribute<'m>(message: &'m str, key: &str) -> &'m str {
    message.split(',').find_map(|part| part.strip_prefix(key)?.strip_prefix('=')).expect("attribute present")
}

/// The client-final message and the server signature the client should then see.
fn client_final(password: &str, client_first_bare: &str, server_first: &str) -> (String, String) {
    let salt = BASE64.decode(attribute(server_first, "s")).expect("salt");
    let iterations: u32 = attribute(server_first, "i").parse().expect("iterations");
    let mut salted = [0u8; 64];
    pbkdf2::pbkdf2_hmac::<Sha512>(password.as_bytes(), &salt, iterations, &mut salted);
    let without_proof = format!("c=biws,r={}", attribute(server_first, "r"));
    let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
    let client_key = hmac(&salted, b"Client Key");
    let signature = hmac(&Sha512::digest(&client_key), auth_message.as_bytes());
    let proof: Vec<u8> = client_key.iter().zip(&signature).map(|(k, s)| k ^ s).collect();
    let server_signature = hmac(&hmac(&salted, b"Server Key"), auth_message.as_bytes());
    (format!("{without_proof},p={}", BASE64.encode(proof)), format!("v={}", BASE64.encode(server_signature)))
}

fn auth_properties(data: &str) -> Properties {
    Properties {
        authentication_method: Some(Bytes::from_static(METHOD)),
        authentication_data: Some(Bytes::copy_from_slice(data.as_bytes())),
        ..Properties::default()
    }
}

fn expect_auth(client: &mut RawClient, reason: ReasonCode) -> String {
    match client.recv() {
        Packet::Auth(auth) => {
            assert_eq!(auth.reason, reason);
            assert_eq!(auth.properties.authentication_method.as_deref(), Some(METHOD));
            String::from_utf8(auth.properties.authentication_data.clone().map(|d| d.to_vec()).unwrap_or_default()).expect("utf8")
        }
        other => panic!("expected AUTH {reason:?}, got {other:?}"),
    }
}

/// Runs the SCRAM exchange from CONNECT; returns the CONNACK code and final data.
fn scram_connect(client: &mut RawClient, user: &str, password: &str) -> (u8, Option<String>, String) {
    scram_connect_as(client, user, password, None)
}

/// `scram_connect` with a User Name in the CONNECT too.
fn scram_connect_as(client: &mut RawClient, user: &str, password: &str, username: Option<&str>) -> (u8, Option<String>, String) {
    let bare = format!("n={user},r={CLIENT_NONCE}");
    let mut connect = client.connect_packet("scram-client", true, 60, None);
    let Packet::Connect(inner) = &mut connect else { unreachable!() };
    inner.properties = auth_properties(&format!("n,,{bare}"));
    inner.username = username.map(|name| bytes::Bytes::copy_from_slice(name.as_bytes()));
    client.send(&connect);
    let server_first = expect_auth(client, ReasonCode::CONTINUE_AUTHENTICATION);
    assert!(attribute(&server_first, "r").starts_with(CLIENT_NONCE));
    let (final_message, expected_signature) = client_final(password, &bare, &server_first);
    client.send(&Packet::Auth(Auth { reason: ReasonCode::CONTINUE_AUTHENTICATION, properties: auth_properties(&final_message).into() }));
    match client.recv() {
        Packet::ConnAck(connack) => {
            let data = connack.properties.authentication_data.clone().map(|d| String::from_utf8(d.to_vec()).expect("utf8"));
            (connack.code, data, expected_signature)
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

fn broker_with_password_file(tag: &str) -> (Broker, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("ringmq-scram-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("passwd");
    std::fs::write(&file, ringmq::auth::hash_password_line("alice", b"s3cret", b"0123456789ab", 1000)).expect("write");
    (Broker::start(&["--password-file", file.to_str().expect("utf8")]), dir)
}

#[test]
fn scram_exchange_then_connack_with_the_server_signature_then_reauthentication() {
    let (broker, dir) = broker_with_password_file("ok");
    let mut client = broker.raw_v5();
    let (code, data, expected) = scram_connect(&mut client, "alice", "s3cret");
    assert_eq!(code, 0);
    assert_eq!(data.as_deref(), Some(expected.as_str()), "the server proves it knows the salted password");
    client.subscribe(&[("after/auth", ringmq::protocol::QoS::AtMostOnce)]);

    // Re-authentication on the open connection: 0x19, 0x18 ... then 0x00.
    let bare = format!("n=alice,r={CLIENT_NONCE}x");
    client.send(&Packet::Auth(Auth { reason: ReasonCode::REAUTHENTICATE, properties: auth_properties(&format!("n,,{bare}")).into() }));
    let server_first = expect_auth(&mut client, ReasonCode::CONTINUE_AUTHENTICATION);
    let (final_message, expected) = client_final("s3cret", &bare, &server_first);
    client.send(&Packet::Auth(Auth { reason: ReasonCode::CONTINUE_AUTHENTICATION, properties: auth_properties(&final_message).into() }));
    assert_eq!(expect_auth(&mut client, ReasonCode::SUCCESS), expected);
    client.send(&Packet::PingReq);
    assert!(matches!(client.recv(), Packet::PingResp), "the connection goes on");

    // A failed re-authentication ends the connection with 0x87.
    client.send(&Packet::Auth(Auth { reason: ReasonCode::REAUTHENTICATE, properties: auth_properties(&format!("n,,{bare}")).into() }));
    let server_first = expect_auth(&mut client, ReasonCode::CONTINUE_AUTHENTICATION);
    let (final_message, _) = client_final("wrong", &bare, &server_first);
    client.send(&Packet::Auth(Auth { reason: ReasonCode::CONTINUE_AUTHENTICATION, properties: auth_properties(&final_message).into() }));
    assert_eq!(client.disconnect_reason(), ReasonCode::NOT_AUTHORIZED);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn scram_refusals_and_protocol_errors() {
    let (broker, dir) = broker_with_password_file("bad");
    let mut client = broker.raw_v5();
    let (code, _, _) = scram_connect(&mut client, "alice", "wrong");
    assert_eq!(code, ReasonCode::BAD_USER_NAME_OR_PASSWORD.0);
    client.assert_closed();
    let mut client = broker.raw_v5();
    assert_eq!(scram_connect(&mut client, "mallory", "s3cret").0, ReasonCode::BAD_USER_NAME_OR_PASSWORD.0, "unknown user");

    // Anything but AUTH (or DISCONNECT) in the middle of the exchange closes the connection.
    let mut client = broker.raw_v5();
    let mut connect = client.connect_packet("scram-rude", true, 60, None);
    let Packet::Connect(inner) = &mut connect else { unreachable!() };
    inner.properties = auth_properties(&format!("n,,n=alice,r={CLIENT_NONCE}"));
    client.send(&connect);
    expect_auth(&mut client, ReasonCode::CONTINUE_AUTHENTICATION);
    client.send(&Packet::PingReq);
    let mut seen = Vec::new();
    assert!(client.closed_within(WAIT, &mut seen));
    assert!(seen.is_empty(), "closed without CONNACK: {seen:?}");

    // A connection that authenticated with a password cannot start AUTH.
    let mut client = broker.raw_v5();
    let mut connect = client.connect_packet("plain", true, 60, None);
    let Packet::Connect(inner) = &mut connect else { unreachable!() };
    inner.username = Some(Bytes::from_static(b"alice"));
    inner.password = Some(Bytes::from_static(b"s3cret"));
    assert_eq!(client.connect_sending(connect).code, 0);
    client.send(&Packet::Auth(Auth { reason: ReasonCode::REAUTHENTICATE, properties: auth_properties("n,,n=alice,r=x").into() }));
    assert_eq!(client.disconnect_reason(), ReasonCode::PROTOCOL_ERROR);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_connect_whose_user_name_differs_from_the_scram_user_is_refused() {
    // SCRAM proves alice; a User Name of someone else in the same CONNECT would otherwise
    // decide which ACL rules apply.
    let (broker, dir) = broker_with_password_file("identity");
    let mut client = broker.raw_v5();
    let (code, _, _) = scram_connect_as(&mut client, "alice", "s3cret", Some("admin"));
    assert_eq!(code, ReasonCode::NOT_AUTHORIZED.0);
    let mut client = broker.raw_v5();
    let (code, _, _) = scram_connect_as(&mut client, "alice", "s3cret", Some("alice"));
    assert_eq!(code, 0, "the same name is fine");
    let _ = std::fs::remove_dir_all(dir);
}
