//! MQTT over WebSocket (`ws://` and `wss://`) against the real binary with tungstenite
//! clients: messages between WebSocket, TLS WebSocket and TCP clients; packets split across
//! frames and frames holding several packets; ping; and bad input (a wrong path, plain
//! HTTP, text frames, garbage frames, oversize frames, half a packet then a hang-up)
//! closing that connection and nothing else.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use bytes::BytesMut;
use common::transport::{ClientStream, Pki, ws_connect};
use common::{Broker, RawClient, WAIT};
use ringmq::protocol::{Packet, ProtocolVersion, QoS};
use tungstenite::protocol::Message;

/// TCP (addrs[0]), ws:// at /mqtt (addrs[1]) and wss:// at /ws (addrs[2]).
fn ws_broker(pki: &Pki) -> Broker {
    let server = pki.server("server");
    Broker::start(&[
        "--listener",
        "ws://127.0.0.1:0",
        "--listener",
        "wss://127.0.0.1:0/ws",
        "--tls-cert",
        server.cert.to_str().unwrap(),
        "--tls-key",
        server.key.to_str().unwrap(),
        "--max-packet-size-bytes",
        "1048576",
    ])
}

fn ws_client(broker: &Broker, version: ProtocolVersion) -> RawClient {
    let stream = ws_connect(broker.addrs[1], "/mqtt", None).expect("WebSocket upgrade");
    RawClient::over(ClientStream::WebSocket(Box::new(stream)), version)
}

fn wss_client(broker: &Broker, pki: &Pki, version: ProtocolVersion) -> RawClient {
    let stream = ws_connect(broker.addrs[2], "/ws", Some(pki.client_config(None))).expect("TLS WebSocket upgrade");
    RawClient::over(ClientStream::WebSocket(Box::new(stream)), version)
}

fn websocket(client: &mut RawClient) -> &mut tungstenite::WebSocket<common::transport::Lower> {
    match client.stream() {
        ClientStream::WebSocket(stream) => stream.websocket(),
        _ => panic!("a WebSocket client"),
    }
}

#[test]
fn websocket_tls_websocket_and_tcp_clients_exchange_messages() {
    let pki = Pki::new("ws-exchange");
    let broker = ws_broker(&pki);
    for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
        let mut ws = ws_client(&broker, version);
        assert_eq!(ws.connect("ws", true, 60, None).code, 0);
        let mut wss = wss_client(&broker, &pki, version);
        assert_eq!(wss.connect("wss", true, 60, None).code, 0);
        let mut tcp = RawClient::open(broker.addrs[0], version);
        assert_eq!(tcp.connect("tcp", true, 60, None).code, 0);
        for client in [&mut ws, &mut wss, &mut tcp] {
            client.subscribe(&[("all/#", QoS::ExactlyOnce)]);
        }
        let big: Vec<u8> = (0..200 * 1024).map(|index| (index % 253) as u8).collect();
        let mut id = 1;
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            for publisher in 0..3 {
                let payload = if publisher == 0 { &big[..] } else { &b"small"[..] };
                [&mut ws, &mut wss, &mut tcp][publisher].publish("all/x", payload, qos, false, id);
                id += 1;
                for (index, subscriber) in [&mut ws, &mut wss, &mut tcp].into_iter().enumerate() {
                    let received = subscriber.recv_publish();
                    assert_eq!(&received.payload[..], payload, "publisher {publisher} -> subscriber {index} at {qos:?}");
                    subscriber.ack(&received);
                }
            }
        }
        ws.disconnect();
        wss.disconnect();
        tcp.disconnect();
    }
    let counters = broker.wait_for_counters("upgrades counted", |counters| counters.total("websocket_upgrades") >= 4);
    assert!(counters.total("tls_handshakes") >= 2);
}

#[test]
fn packets_split_across_frames_and_frames_holding_several_packets_both_work() {
    let pki = Pki::new("ws-frames");
    let broker = ws_broker(&pki);
    let mut client = ws_client(&broker, ProtocolVersion::V311);
    let mut connect = BytesMut::new();
    client.connect_packet("frames", true, 60, None).encode(ProtocolVersion::V311, &mut connect);
    // The CONNECT in three frames, one of them a single byte.
    for part in [&connect[..1], &connect[1..5], &connect[5..]] {
        websocket(&mut client).send(Message::binary(part.to_vec())).unwrap();
    }
    assert!(matches!(client.recv(), Packet::ConnAck(connack) if connack.code == 0));
    // SUBSCRIBE and PINGREQ in one frame.
    let subscribe = [0x82, 0x08, 0x00, 0x01, 0x00, 0x03, b'a', b'/', b'b', 0x00];
    let mut both = subscribe.to_vec();
    both.extend_from_slice(&[0xc0, 0x00]);
    websocket(&mut client).send(Message::binary(both)).unwrap();
    // (SUBACK waits for the other shards to learn of the subscription; PINGRESP does
    // not, and the spec orders neither against the other.)
    let answers = [client.recv(), client.recv()];
    assert!(answers.iter().any(|packet| matches!(packet, Packet::SubAck(_))), "{answers:?}");
    assert!(answers.iter().any(|packet| matches!(packet, Packet::PingResp)), "{answers:?}");
    // A WebSocket ping is answered with a pong, and MQTT goes on.
    websocket(&mut client).send(Message::Ping(b"are you there".to_vec().into())).unwrap();
    client.publish("a/b", b"after ping", QoS::AtMostOnce, false, 1);
    assert_eq!(&client.recv_publish().payload[..], b"after ping");
}

/// Sends `request` (raw bytes) to the ws:// port and returns what comes back before close.
fn raw_exchange(broker: &Broker, request: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(broker.addrs[1]).unwrap();
    stream.write_all(request).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    answer
}

#[test]
fn bad_upgrades_get_an_http_answer_and_bad_frames_close_only_that_connection() {
    let pki = Pki::new("ws-bad");
    let broker = ws_broker(&pki);
    let mut bystander = ws_client(&broker, ProtocolVersion::V5);
    assert_eq!(bystander.connect("bystander", true, 60, None).code, 0);
    bystander.subscribe(&[("t", QoS::AtLeastOnce)]);

    let upgrade = |path: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
        )
    };
    let answer = String::from_utf8_lossy(&raw_exchange(&broker, upgrade("/elsewhere").as_bytes())).into_owned();
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    let answer = String::from_utf8_lossy(&raw_exchange(&broker, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")).into_owned();
    assert!(answer.starts_with("HTTP/1.1 4"), "{answer}");
    // An MQTT CONNECT where the upgrade should be.
    let answer = raw_exchange(&broker, &[0x10, 0x0c, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3c, 0x00, 0x00]);
    assert!(answer.starts_with(b"HTTP/1.1 400"), "{}", String::from_utf8_lossy(&answer));

    let after_upgrade = |frames: &[u8]| {
        let mut request = upgrade("/mqtt").into_bytes();
        request.extend_from_slice(frames);
        let answer = raw_exchange(&broker, &request);
        assert!(answer.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&answer));
    };
    // A text frame ("hi", masked).
    after_upgrade(&[0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2]);
    // An unmasked binary frame (clients must mask).
    after_upgrade(&[0x82, 0x02, 0x10, 0x00]);
    // A reserved opcode.
    after_upgrade(&[0x83, 0x80, 1, 2, 3, 4]);
    // An oversize frame: a 64-bit length of 2 GiB.
    after_upgrade(&[0x82, 0xff, 0, 0, 0, 0, 0x80, 0, 0, 0, 1, 2, 3, 4]);
    // Half a CONNECT in a frame, then the client hangs up.
    let mut client = ws_client(&broker, ProtocolVersion::V311);
    websocket(&mut client).send(Message::binary(vec![0x10, 0x0c, 0x00, 0x04])).unwrap();
    client.drop_abruptly();
    // A frame carrying a malformed MQTT packet: closed like on TCP.
    let mut client = ws_client(&broker, ProtocolVersion::V311);
    assert_eq!(client.connect("malformed", true, 60, None).code, 0);
    websocket(&mut client).send(Message::binary(vec![0x30, 0xff, 0xff, 0xff, 0xff, 0x01])).unwrap();
    client.assert_closed();

    broker.wait_for_counters("transport errors counted", |counters| counters.total("transport_errors") >= 4);
    bystander.publish("t", b"unaffected", QoS::AtLeastOnce, false, 1);
    assert_eq!(&bystander.recv_publish().payload[..], b"unaffected");
}

#[test]
fn a_client_pinging_without_reading_the_pongs_is_closed_before_they_pile_up() {
    let pki = Pki::new("ws-pings");
    let broker = ws_broker(&pki);
    let mut bystander = ws_client(&broker, ProtocolVersion::V311);
    assert_eq!(bystander.connect("bystander", true, 60, None).code, 0);
    bystander.subscribe(&[("t", QoS::AtLeastOnce)]);

    // A tiny receive window, so the pongs back up in the broker almost at once.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&broker.addrs[1].into()).unwrap();
    let mut stream: TcpStream = socket.into();
    stream
        .write_all(
            b"GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n",
        )
        .unwrap();
    let mut response = Vec::new();
    let mut byte = [0u8; 1];
    while !response.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).unwrap();
        response.push(byte[0]);
    }
    assert!(response.starts_with(b"HTTP/1.1 101"));
    // Masked pings with 125-byte payloads, never reading a pong. Without a bound the
    // broker would queue every pong for as long as pings come; with it, it closes once
    // 256 KiB wait on top of what the kernel buffers hold (and, like every close, drains
    // what still arrives for a second before the socket goes).
    let mut ping = vec![0x89, 0x80 | 125, 0, 0, 0, 0];
    ping.extend_from_slice(&[b'p'; 125]);
    let burst: Vec<u8> = ping.iter().copied().cycle().take(ping.len() * 1024).collect();
    stream.set_write_timeout(Some(WAIT)).unwrap();
    let mut sent = 0usize;
    let started = std::time::Instant::now();
    let closed = loop {
        if started.elapsed() > std::time::Duration::from_secs(10) {
            break false;
        }
        match stream.write_all(&burst) {
            Ok(()) => sent += burst.len(),
            // A write that times out means the broker stopped reading without closing.
            Err(error) => break !matches!(error.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
        }
    };
    assert!(closed, "the broker kept reading {sent} bytes of pings whose pongs nobody read");
    broker.wait_for_counters("the closing counted", |counters| counters.total("transport_errors") >= 1);
    bystander.publish("t", b"unaffected", QoS::AtLeastOnce, false, 1);
    assert_eq!(&bystander.recv_publish().payload[..], b"unaffected");
}
