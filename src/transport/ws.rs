//! MQTT over WebSocket (MQTT 5.0 section 6), sans-IO: the HTTP upgrade, then binary
//! frames in both directions through tungstenite's frame codec. Bytes in, bytes out; the
//! socket is someone else's.
//!
//! The spec's rules that land here: only binary frames carry MQTT (anything else closes
//! the connection), and frame boundaries mean nothing (one frame may hold half a packet or
//! several), so the payloads are simply appended to the MQTT byte stream.

use std::io::{self, Read, Write};

use bytes::{Bytes, BytesMut};
use tungstenite::protocol::{Message, Role, WebSocketConfig, WebSocketContext};

use super::TransportError;

/// The longest upgrade request we read before refusing it (431).
const UPGRADE_REQUEST_BYTES_MAX: usize = 8 * 1024;
/// Headers in an upgrade request; browsers send about 15.
const UPGRADE_HEADERS_MAX: usize = 48;
/// tungstenite's read chunk per connection: small, since most MQTT packets are.
const READ_BUFFER_BYTES: usize = 4 * 1024;

/// One WebSocket connection's framing state.
pub struct WsLayer {
    state: State,
    /// `ws://HOST:PORT/PATH`: the path the upgrade must ask for.
    path: std::sync::Arc<str>,
    /// Largest message (and frame) a client may send: a whole MQTT packet, plus room.
    message_bytes_max: usize,
}

enum State {
    /// Collecting the HTTP request.
    Upgrading {
        request: BytesMut,
    },
    Open {
        context: Box<WebSocketContext>,
        input: BytesMut,
    },
    Closed,
}

/// tungstenite reads and writes a stream; this one is two buffers: reads take from
/// `input` (WouldBlock when it is empty), writes append to `output`. loadgen's client
/// side uses it too.
pub struct Buffers<'a> {
    pub input: &'a mut BytesMut,
    pub output: &'a mut Vec<u8>,
}

impl Read for Buffers<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.input.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let count = buf.len().min(self.input.len());
        buf[..count].copy_from_slice(&self.input.split_to(count));
        Ok(count)
    }
}

impl Write for Buffers<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl WsLayer {
    pub fn new(path: std::sync::Arc<str>, packet_bytes_max: u32) -> WsLayer {
        let message_bytes_max = (packet_bytes_max as usize).saturating_add(1024).max(64 * 1024);
        WsLayer { state: State::Upgrading { request: BytesMut::new() }, path, message_bytes_max }
    }

    #[cfg(test)]
    fn is_open(&self) -> bool {
        matches!(self.state, State::Open { .. })
    }

    /// Bytes from below; MQTT bytes go to `mqtt`, anything to send back (the upgrade
    /// response, pongs, close replies) to `output`. `Ok(false)`: the peer closed.
    pub fn receive(&mut self, bytes: &[u8], mqtt: &mut BytesMut, output: &mut Vec<u8>) -> Result<bool, TransportError> {
        if let State::Upgrading { request } = &mut self.state {
            request.extend_from_slice(bytes);
            let Some((context, tail)) = upgrade(request, &self.path, self.message_bytes_max, output)? else {
                return Ok(true);
            };
            self.state = State::Open { context: Box::new(context), input: tail };
            return self.read_messages(mqtt, output);
        }
        if let State::Open { input, .. } = &mut self.state {
            input.extend_from_slice(bytes);
        }
        self.read_messages(mqtt, output)
    }

    fn read_messages(&mut self, mqtt: &mut BytesMut, output: &mut Vec<u8>) -> Result<bool, TransportError> {
        let State::Open { context, input } = &mut self.state else {
            return Ok(false);
        };
        loop {
            match context.read(&mut Buffers { input, output }) {
                Ok(Message::Binary(payload)) => mqtt.extend_from_slice(&payload),
                // The pong is queued by tungstenite and written on the next read.
                Ok(Message::Ping(_) | Message::Pong(_)) => {}
                Ok(Message::Text(_)) => {
                    self.state = State::Closed;
                    return Err(TransportError::WebSocket("a text frame (MQTT travels in binary frames only)".into()));
                }
                Ok(Message::Close(_)) => {}
                Ok(Message::Frame(_)) => {}
                Err(tungstenite::Error::Io(error)) if error.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    self.state = State::Closed;
                    return Ok(false);
                }
                Err(error) => {
                    self.state = State::Closed;
                    return Err(TransportError::WebSocket(error.to_string()));
                }
            }
        }
    }

    /// MQTT bytes to send: one binary frame appended to `output`.
    pub fn send(&mut self, mqtt: Bytes, output: &mut Vec<u8>) -> Result<(), TransportError> {
        let State::Open { context, input } = &mut self.state else {
            return Err(TransportError::WebSocket("not open".into()));
        };
        let mut buffers = Buffers { input, output };
        context
            .write(&mut buffers, Message::Binary(mqtt))
            .and_then(|()| context.flush(&mut buffers))
            .map_err(|error| TransportError::WebSocket(error.to_string()))
    }

    /// Our side ends: a close frame (normal closure), if the connection is open.
    pub fn close(&mut self, output: &mut Vec<u8>) {
        if let State::Open { context, input } = &mut self.state {
            let mut buffers = Buffers { input, output };
            let _ = context.close(&mut buffers, None);
            let _ = context.flush(&mut buffers);
        }
        self.state = State::Closed;
    }
}

/// The upgrade, once `request` holds a whole HTTP request: the 101 response (or the
/// refusal) into `output`, the context and the bytes after the request. `None`: not
/// complete yet.
fn upgrade(
    request: &mut BytesMut,
    path: &str,
    message_bytes_max: usize,
    output: &mut Vec<u8>,
) -> Result<Option<(WebSocketContext, BytesMut)>, TransportError> {
    let mut headers = [httparse::EMPTY_HEADER; UPGRADE_HEADERS_MAX];
    let mut parsed = httparse::Request::new(&mut headers);
    let length = match parsed.parse(request) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) if request.len() <= UPGRADE_REQUEST_BYTES_MAX => return Ok(None),
        Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
            return Err(refuse(output, "431 Request Header Fields Too Large", "an oversized upgrade request"));
        }
        Err(error) => return Err(refuse(output, "400 Bad Request", &format!("a malformed upgrade request ({error})"))),
    };
    let header = |name: &str| parsed.headers.iter().find(|header| header.name.eq_ignore_ascii_case(name)).map(|header| header.value);
    let has_token = |name: &str, token: &str| {
        header(name)
            .and_then(|value| std::str::from_utf8(value).ok())
            .is_some_and(|value| value.split(',').any(|item| item.trim().eq_ignore_ascii_case(token)))
    };
    if parsed.method != Some("GET") {
        return Err(refuse(output, "405 Method Not Allowed", "an upgrade request that is not GET"));
    }
    let requested_path = parsed.path.unwrap_or("").split('?').next().unwrap_or("");
    if requested_path != path {
        return Err(refuse(output, "404 Not Found", &format!("an upgrade for path {requested_path:?} (this listener serves {path:?})")));
    }
    if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") {
        return Err(refuse(output, "426 Upgrade Required", "a plain HTTP request on a WebSocket listener"));
    }
    if header("sec-websocket-version") != Some(b"13") {
        output.extend_from_slice(
            b"HTTP/1.1 426 Upgrade Required\r\nSec-WebSocket-Version: 13\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
        );
        return Err(TransportError::WebSocket("an unsupported WebSocket version".into()));
    }
    let Some(key) = header("sec-websocket-key") else {
        return Err(refuse(output, "400 Bad Request", "an upgrade without Sec-WebSocket-Key"));
    };
    // MQTT.js and browsers offer "mqtt"; older clients "mqttv3.1". A client offering
    // subprotocols but neither is not an MQTT client.
    let subprotocol = match header("sec-websocket-protocol") {
        None => None,
        Some(_) if has_token("sec-websocket-protocol", "mqtt") => Some("mqtt"),
        Some(_) if has_token("sec-websocket-protocol", "mqttv3.1") => Some("mqttv3.1"),
        Some(_) => return Err(refuse(output, "400 Bad Request", "an upgrade offering no MQTT subprotocol")),
    };
    output.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ");
    output.extend_from_slice(tungstenite::handshake::derive_accept_key(key).as_bytes());
    if let Some(subprotocol) = subprotocol {
        output.extend_from_slice(b"\r\nSec-WebSocket-Protocol: ");
        output.extend_from_slice(subprotocol.as_bytes());
    }
    output.extend_from_slice(b"\r\n\r\n");
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(0)
        .max_message_size(Some(message_bytes_max))
        .max_frame_size(Some(message_bytes_max));
    let tail = request.split_off(length);
    Ok(Some((WebSocketContext::new(Role::Server, Some(config)), tail)))
}

/// An HTTP refusal into `output`; the error to close with.
fn refuse(output: &mut Vec<u8>, status: &str, why: &str) -> TransportError {
    output.extend_from_slice(format!("HTTP/1.1 {status}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n").as_bytes());
    TransportError::WebSocket(why.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPGRADE: &str = "GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n";

    fn layer() -> WsLayer {
        WsLayer::new("/mqtt".into(), 1024)
    }

    /// A masked client frame, as RFC 6455 requires of clients.
    fn client_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mask = [0x11, 0x22, 0x33, 0x44];
        let mut frame = vec![(u8::from(fin) << 7) | opcode];
        match payload.len() {
            length @ 0..=125 => frame.push(0x80 | length as u8),
            length @ 126..=65535 => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(length as u16).to_be_bytes());
            }
            length => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(length as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(index, byte)| byte ^ mask[index % 4]));
        frame
    }

    fn open(layer: &mut WsLayer) {
        let (mut mqtt, mut output) = (BytesMut::new(), Vec::new());
        assert!(layer.receive(UPGRADE.as_bytes(), &mut mqtt, &mut output).unwrap());
        let response = String::from_utf8(output).unwrap();
        assert!(response.starts_with("HTTP/1.1 101"), "{response}");
        // RFC 6455's own example key and answer.
        assert!(response.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"), "{response}");
        assert!(response.contains("Sec-WebSocket-Protocol: mqtt\r\n"), "{response}");
        assert!(layer.is_open());
    }

    #[test]
    fn upgrade_arriving_byte_by_byte_then_frames_split_anywhere() {
        let mut layer = layer();
        let (mut mqtt, mut output) = (BytesMut::new(), Vec::new());
        for byte in UPGRADE.as_bytes() {
            assert!(layer.receive(std::slice::from_ref(byte), &mut mqtt, &mut output).unwrap());
        }
        assert!(layer.is_open() && String::from_utf8_lossy(&output).starts_with("HTTP/1.1 101"));
        // Half a CONNECT in one frame, the rest in a fragmented message fed byte by byte.
        let mut wire = client_frame(0x2, true, &[0x10, 0x0c, 0x00]);
        wire.extend(client_frame(0x2, false, &[0x04, b'M']));
        wire.extend(client_frame(0x0, true, b"QTT"));
        for byte in &wire {
            layer.receive(std::slice::from_ref(byte), &mut mqtt, &mut output).unwrap();
        }
        assert_eq!(&mqtt[..], &[0x10, 0x0c, 0x00, 0x04, b'M', b'Q', b'T', b'T']);
    }

    #[test]
    fn ping_is_answered_and_close_is_echoed() {
        let mut layer = layer();
        open(&mut layer);
        let (mut mqtt, mut output) = (BytesMut::new(), Vec::new());
        assert!(layer.receive(&client_frame(0x9, true, b"hi"), &mut mqtt, &mut output).unwrap());
        assert_eq!(output, [0x8a, 2, b'h', b'i'], "an unmasked pong with the ping's payload");
        output.clear();
        assert!(!layer.receive(&client_frame(0x8, true, &[0x03, 0xe8]), &mut mqtt, &mut output).unwrap());
        assert_eq!(output[0], 0x88, "the close is echoed");
    }

    #[test]
    fn sent_mqtt_bytes_are_one_unmasked_binary_frame() {
        let mut layer = layer();
        open(&mut layer);
        let mut output = Vec::new();
        layer.send(Bytes::from_static(&[0x20, 0x02, 0x00, 0x00]), &mut output).unwrap();
        assert_eq!(output, [0x82, 4, 0x20, 0x02, 0x00, 0x00]);
    }

    #[test]
    fn bad_input_is_refused() {
        let refused = |request: &str| {
            let (mut mqtt, mut output) = (BytesMut::new(), Vec::new());
            let result = layer().receive(request.as_bytes(), &mut mqtt, &mut output);
            assert!(result.is_err(), "{request:?}");
            String::from_utf8(output).unwrap()
        };
        assert!(refused(&UPGRADE.replace("/mqtt", "/other")).starts_with("HTTP/1.1 404"));
        assert!(refused(&UPGRADE.replace("Upgrade: websocket", "Upgrade: h2c")).starts_with("HTTP/1.1 426"));
        assert!(refused(&UPGRADE.replace("Version: 13", "Version: 8")).contains("Sec-WebSocket-Version: 13"));
        assert!(refused(&UPGRADE.replace("Protocol: mqtt", "Protocol: chat")).starts_with("HTTP/1.1 400"));
        assert!(refused("\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00\r\n\r\n").starts_with("HTTP/1.1 400"));
        let endless = format!("GET /mqtt HTTP/1.1\r\nX: {}", "a".repeat(UPGRADE_REQUEST_BYTES_MAX));
        assert!(refused(&endless).starts_with("HTTP/1.1 431"));

        let mut open_layer = layer();
        open(&mut open_layer);
        let (mut mqtt, mut output) = (BytesMut::new(), Vec::new());
        assert!(open_layer.receive(&client_frame(0x1, true, b"text"), &mut mqtt, &mut output).is_err(), "text frames");
        let mut open_layer = layer();
        open(&mut open_layer);
        let oversize = client_frame(0x2, true, &vec![0u8; 70 * 1024]);
        assert!(open_layer.receive(&oversize, &mut mqtt, &mut output).is_err(), "an oversize frame");
        let mut open_layer = layer();
        open(&mut open_layer);
        let mut unmasked = client_frame(0x2, true, b"x");
        unmasked[1] &= 0x7f;
        unmasked.drain(2..6);
        assert!(open_layer.receive(&unmasked, &mut mqtt, &mut output).is_err(), "an unmasked client frame");
        assert!(mqtt.is_empty());
    }
}
