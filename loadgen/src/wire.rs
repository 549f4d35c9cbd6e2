//! The client side of the transports loadgen drives, as byte-in/byte-out layers under the
//! MQTT stream (the mirror of the broker's `transport` module): TLS through rustls, and
//! MQTT over WebSocket through tungstenite's frame codec, each optional, TLS below
//! WebSocket (`wss`). The reader and the writer task of a connection share one `Layers`,
//! never borrowed across an await.

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use rustls::{ClientConfig, ClientConnection};
use tungstenite::protocol::{Message, Role, WebSocketConfig, WebSocketContext};

use crate::conn::ConnError;
use ringmq::net::split::{ReadHalf, WriteHalf};
use ringmq::transport::ws::Buffers;

/// The longest upgrade response we wait for.
const UPGRADE_RESPONSE_BYTES_MAX: usize = 8 * 1024;
/// The broker batches many packets into one frame; a generous bound on one message.
const WS_MESSAGE_BYTES_MAX: usize = 64 << 20;
/// What we put in one frame. The outbox hands over up to megabytes at once; browsers and
/// MQTT.js send a frame per packet, so a broker is tuned for frames this size or smaller.
const WS_FRAME_BYTES_MAX: usize = 16 * 1024;

/// How every connection of a run reaches the broker (`--tls`, `--ws`).
#[derive(Debug, Clone, Default)]
pub struct ClientTransport {
    pub tls: Option<Arc<ClientConfig>>,
    /// MQTT over WebSocket, upgrading on this path.
    pub ws_path: Option<String>,
}

impl ClientTransport {
    pub fn is_plain(&self) -> bool {
        self.tls.is_none() && self.ws_path.is_none()
    }
}

/// One connection's layer state.
pub struct Layers {
    tls: Option<ClientConnection>,
    ws: Option<WsClient>,
}

struct WsClient {
    context: WebSocketContext,
    input: BytesMut,
}

fn tls_error(error: impl std::fmt::Display) -> ConnError {
    ConnError::Tls(error.to_string())
}

fn ws_error(error: impl std::fmt::Display) -> ConnError {
    ConnError::WebSocket(error.to_string())
}

pub type SharedLayers = Rc<RefCell<Layers>>;

impl Layers {
    /// Appends to `out` what goes on the socket for the MQTT bytes `plain` (none: only
    /// what the layers have pending, such as handshake records).
    pub fn seal(&mut self, plain: Bytes, out: &mut Vec<u8>) -> Result<(), ConnError> {
        let mut framed = Vec::new();
        let plain: &[u8] = match &mut self.ws {
            Some(ws) if !plain.is_empty() => {
                let mut buffers = Buffers { input: &mut ws.input, output: &mut framed };
                let mut start = 0;
                while start < plain.len() {
                    let end = plain.len().min(start + WS_FRAME_BYTES_MAX);
                    ws.context.write(&mut buffers, Message::Binary(plain.slice(start..end))).map_err(ws_error)?;
                    start = end;
                }
                ws.context.flush(&mut buffers).map_err(ws_error)?;
                &framed
            }
            _ => &plain,
        };
        self.seal_below_ws(plain, out)
    }

    fn seal_below_ws(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), ConnError> {
        match &mut self.tls {
            None => out.extend_from_slice(plain),
            Some(tls) => {
                if !plain.is_empty() {
                    tls.writer().write_all(plain).map_err(tls_error)?;
                }
                while tls.wants_write() {
                    tls.write_tls(out).map_err(tls_error)?;
                }
            }
        }
        Ok(())
    }

    /// Feeds bytes received from the socket through the layers and appends the MQTT
    /// bytes to `mqtt`. False: the broker closed the connection.
    pub fn open(&mut self, received: &[u8], mqtt: &mut BytesMut) -> Result<bool, ConnError> {
        let Some(ws) = &mut self.ws else {
            return open_tls(self.tls.as_mut(), received, mqtt);
        };
        if !open_tls(self.tls.as_mut(), received, &mut ws.input)? {
            return Ok(false);
        }
        let mut unused = Vec::new();
        loop {
            match ws.context.read(&mut Buffers { input: &mut ws.input, output: &mut unused }) {
                Ok(Message::Binary(payload)) => mqtt.extend_from_slice(&payload),
                Ok(Message::Close(_)) => return Ok(false),
                Ok(Message::Text(_)) => return Err(ws_error("the broker sent a text frame")),
                // A pong tungstenite queues goes out with the next frame we write.
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
                Err(tungstenite::Error::Io(error)) if error.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => return Ok(false),
                Err(error) => return Err(ws_error(error)),
            }
        }
    }
}

/// Decrypts `received` (when there is TLS) into `plain`. False: closed.
fn open_tls(tls: Option<&mut ClientConnection>, mut received: &[u8], plain: &mut BytesMut) -> Result<bool, ConnError> {
    let Some(tls) = tls else {
        plain.extend_from_slice(received);
        return Ok(true);
    };
    let mut chunk = [0u8; 16 * 1024];
    while !received.is_empty() {
        tls.read_tls(&mut received).map_err(tls_error)?;
        tls.process_new_packets().map_err(tls_error)?;
        loop {
            match tls.reader().read(&mut chunk) {
                Ok(0) => return Ok(false),
                Ok(count) => plain.extend_from_slice(&chunk[..count]),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => return Ok(false),
            }
        }
    }
    Ok(true)
}

/// The TLS handshake and the WebSocket upgrade on a fresh connection, before its reader
/// and writer split it. Returns the layers and any MQTT bytes that came with the last
/// handshake read.
pub async fn establish(
    read: &mut ReadHalf,
    write: &mut WriteHalf,
    transport: &ClientTransport,
    addr: SocketAddr,
) -> Result<(SharedLayers, BytesMut), ConnError> {
    let tls = match &transport.tls {
        None => None,
        Some(config) => {
            let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
            let mut connection = ClientConnection::new(config.clone(), name).map_err(tls_error)?;
            // The outbox hands over whole batches (megabytes at times): all of it is sealed
            // at once, and written out before the next batch.
            connection.set_buffer_limit(None);
            Some(connection)
        }
    };
    let mut layers = Layers { tls, ws: None };
    let mut chunk = vec![0u8; 16 * 1024];
    let mut out = Vec::new();
    let mut plain = BytesMut::new();
    while layers.tls.as_ref().is_some_and(|tls| tls.is_handshaking()) {
        out.clear();
        layers.seal_below_ws(&[], &mut out)?;
        if !out.is_empty() {
            write.write_all(&out).await.map_err(tls_error)?;
        }
        if !layers.tls.as_ref().is_some_and(|tls| tls.is_handshaking()) {
            break;
        }
        let count = read.read(&mut chunk).await.map_err(tls_error)?;
        if count == 0 || !open_tls(layers.tls.as_mut(), &chunk[..count], &mut plain)? {
            return Err(ConnError::Closed);
        }
    }
    // TLS 1.3 leaves the client's Finished pending after is_handshaking turns false.
    out.clear();
    layers.seal_below_ws(&[], &mut out)?;
    if let Some(path) = &transport.ws_path {
        let key = tungstenite::handshake::client::generate_key();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
        );
        layers.seal_below_ws(request.as_bytes(), &mut out)?;
        write.write_all(&out).await.map_err(ws_error)?;
        let mut response = plain.split();
        let length = loop {
            if let Some(length) = parse_upgrade_response(&response, &key)? {
                break length;
            }
            if response.len() > UPGRADE_RESPONSE_BYTES_MAX {
                return Err(ws_error("the upgrade response is too long"));
            }
            let count = read.read(&mut chunk).await.map_err(ws_error)?;
            if count == 0 || !open_tls(layers.tls.as_mut(), &chunk[..count], &mut response)? {
                return Err(ConnError::Closed);
            }
        };
        let config = WebSocketConfig::default()
            .write_buffer_size(0)
            .max_message_size(Some(WS_MESSAGE_BYTES_MAX))
            .max_frame_size(Some(WS_MESSAGE_BYTES_MAX));
        layers.ws = Some(WsClient { context: WebSocketContext::new(Role::Client, Some(config)), input: BytesMut::new() });
        let tail = response.split_off(length);
        let mut layers = layers;
        // Frames that came with the response (a CONNACK cannot yet, but do not lose them).
        let mut mqtt = BytesMut::new();
        if let Some(ws) = &mut layers.ws {
            ws.input.extend_from_slice(&tail);
        }
        layers.open(&[], &mut mqtt)?;
        return Ok((Rc::new(RefCell::new(layers)), mqtt));
    }
    if !out.is_empty() {
        write.write_all(&out).await.map_err(tls_error)?;
    }
    Ok((Rc::new(RefCell::new(layers)), plain))
}

/// The length of a complete, successful upgrade response; `None`: not complete yet.
fn parse_upgrade_response(response: &[u8], key: &str) -> Result<Option<usize>, ConnError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut parsed = httparse::Response::new(&mut headers);
    let length = match parsed.parse(response) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(error) => return Err(ws_error(format!("a malformed upgrade response ({error})"))),
    };
    if parsed.code != Some(101) {
        return Err(ws_error(format!("the upgrade was refused: HTTP {}", parsed.code.unwrap_or(0))));
    }
    let header = |name: &str| parsed.headers.iter().find(|header| header.name.eq_ignore_ascii_case(name)).map(|header| header.value);
    let expected = tungstenite::handshake::derive_accept_key(key.as_bytes());
    if header("sec-websocket-accept") != Some(expected.as_bytes()) {
        return Err(ws_error("the upgrade response has a wrong Sec-WebSocket-Accept"));
    }
    if header("sec-websocket-protocol").is_some_and(|protocol| !protocol.eq_ignore_ascii_case(b"mqtt")) {
        return Err(ws_error("the broker chose a subprotocol other than mqtt"));
    }
    Ok(Some(length))
}

/// `--tls-insecure`: any certificate is accepted (the handshake's signatures are still
/// checked), for brokers with self-signed certificates in test set-ups.
#[derive(Debug)]
pub struct AcceptAnyCertificate(pub Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    #[test]
    fn upgrade_response_is_checked() {
        // The accept value for KEY is the one RFC 6455 section 1.3 gives.
        let good = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                     Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: mqtt\r\n\r\nTAIL";
        assert_eq!(parse_upgrade_response(good, KEY).unwrap(), Some(good.len() - 4));
        assert_eq!(parse_upgrade_response(&good[..40], KEY).unwrap(), None);
        let wrong_key = String::from_utf8_lossy(good).replace("s3pPL", "AAAAA");
        assert!(parse_upgrade_response(wrong_key.as_bytes(), KEY).is_err());
        let other_protocol = String::from_utf8_lossy(good).replace("Protocol: mqtt", "Protocol: chat");
        assert!(parse_upgrade_response(other_protocol.as_bytes(), KEY).is_err());
        assert!(parse_upgrade_response(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", KEY).is_err());
    }

    #[test]
    fn websocket_layer_frames_large_writes_and_reassembles_what_it_reads() {
        let config = WebSocketConfig::default().write_buffer_size(0);
        let mut layers =
            Layers { tls: None, ws: Some(WsClient { context: WebSocketContext::new(Role::Client, Some(config)), input: BytesMut::new() }) };
        let plain = Bytes::from(vec![7u8; 3 * WS_FRAME_BYTES_MAX + 5]);
        let mut wire = Vec::new();
        layers.seal(plain.clone(), &mut wire).unwrap();
        // Four masked client frames: 3 full and one of 5 bytes.
        let mut server = WebSocketContext::new(Role::Server, None);
        let (mut input, mut output) = (BytesMut::from(&wire[..]), Vec::new());
        let mut received = Vec::new();
        while let Ok(Message::Binary(payload)) = server.read(&mut Buffers { input: &mut input, output: &mut output }) {
            received.push(payload.len());
        }
        assert_eq!(received, vec![WS_FRAME_BYTES_MAX, WS_FRAME_BYTES_MAX, WS_FRAME_BYTES_MAX, 5]);
        // A server frame arriving a byte at a time comes out whole, once.
        let mut frame = Vec::new();
        server
            .write(&mut Buffers { input: &mut input, output: &mut frame }, Message::Binary(Bytes::from_static(b"\x20\x02\x00\x00")))
            .unwrap();
        server.flush(&mut Buffers { input: &mut input, output: &mut frame }).unwrap();
        let mut mqtt = BytesMut::new();
        for byte in &frame {
            assert!(layers.open(std::slice::from_ref(byte), &mut mqtt).unwrap());
        }
        assert_eq!(&mqtt[..], b"\x20\x02\x00\x00");
    }
}
