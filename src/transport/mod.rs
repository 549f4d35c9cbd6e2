//! Transports: the layers between a connection's socket and the MQTT codec (TLS,
//! WebSocket, or WebSocket over TLS), sans-IO. The reader task feeds `receive` with what
//! the socket read and gets MQTT bytes; the writer task feeds `send` with MQTT bytes; both
//! take the bytes for the socket from `swap_output`. Plain TCP has no transport at all, so
//! it pays nothing for this.
//!
//! Reading can produce bytes to write (TLS handshake records and alerts, the WebSocket
//! upgrade response, pongs): `has_output` tells the reader to wake the writer.

pub mod tls;
pub mod ws;

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use tls::TlsLayer;
use ws::WsLayer;

/// Bytes that reading may leave for the writer before the peer counts as not reading:
/// replies to its own frames (pongs, TLS records) pile up only while the socket will not
/// take them, and a client that keeps pinging without reading must not grow them for ever.
/// Far above any handshake flight (a certificate chain is a few KiB).
const REPLIES_PENDING_BYTES_MAX: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("TLS: {0}")]
    Tls(rustls::Error),
    #[error("WebSocket: {0}")]
    WebSocket(String),
    #[error("socket: {0}")]
    Io(String),
    #[error("{0} bytes of replies to the peer's own frames wait unread")]
    PeerNotReading(usize),
}

/// What a listener speaks above TCP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportKind {
    Tcp,
    Tls,
    /// MQTT over WebSocket, upgraded at this path.
    WebSocket {
        path: Arc<str>,
    },
    WebSocketTls {
        path: Arc<str>,
    },
}

impl TransportKind {
    pub fn is_tls(&self) -> bool {
        matches!(self, TransportKind::Tls | TransportKind::WebSocketTls { .. })
    }

    pub fn scheme(&self) -> &'static str {
        match self {
            TransportKind::Tcp => "mqtt",
            TransportKind::Tls => "mqtts",
            TransportKind::WebSocket { .. } => "ws",
            TransportKind::WebSocketTls { .. } => "wss",
        }
    }
}

/// One connection's layers, bottom (socket side) first.
pub struct Transport {
    tls: Option<TlsLayer>,
    ws: Option<WsLayer>,
    /// Bytes for the socket, not yet taken.
    output: Vec<u8>,
    /// Between the TLS and WebSocket layers: plaintext not yet framed (read side) and
    /// frames not yet encrypted (write side).
    between_in: BytesMut,
    between_out: Vec<u8>,
}

impl Transport {
    pub fn new(tls: Option<TlsLayer>, ws: Option<WsLayer>) -> Transport {
        Transport { tls, ws, output: Vec::new(), between_in: BytesMut::new(), between_out: Vec::new() }
    }

    /// Bytes the socket read; MQTT bytes appended to `mqtt`. `Ok(false)`: the peer closed
    /// at the TLS or WebSocket level (as good as the end of the stream).
    pub fn receive(&mut self, wire: &[u8], mqtt: &mut BytesMut) -> Result<bool, TransportError> {
        let open = self.receive_through_layers(wire, mqtt)?;
        if self.output.len() > REPLIES_PENDING_BYTES_MAX {
            return Err(TransportError::PeerNotReading(self.output.len()));
        }
        Ok(open)
    }

    fn receive_through_layers(&mut self, wire: &[u8], mqtt: &mut BytesMut) -> Result<bool, TransportError> {
        match (&mut self.tls, &mut self.ws) {
            (None, None) => {
                mqtt.extend_from_slice(wire);
                Ok(true)
            }
            (Some(tls), None) => tls.receive(wire, mqtt, &mut self.output),
            (None, Some(ws)) => ws.receive(wire, mqtt, &mut self.output),
            (Some(tls), Some(ws)) => {
                let tls_open = tls.receive(wire, &mut self.between_in, &mut self.output)?;
                let plain = self.between_in.split();
                let ws_open = ws.receive(&plain, mqtt, &mut self.between_out);
                // The WebSocket layer's answers (the upgrade response, pongs) are encrypted
                // even when it failed: a refusal is an HTTP response the client should read.
                if !self.between_out.is_empty() {
                    tls.send(&self.between_out, &mut self.output)?;
                    self.between_out.clear();
                }
                Ok(tls_open && ws_open?)
            }
        }
    }

    /// MQTT bytes to send.
    pub fn send(&mut self, mqtt: Bytes) -> Result<(), TransportError> {
        match (&mut self.tls, &mut self.ws) {
            (None, None) => {
                self.output.extend_from_slice(&mqtt);
                Ok(())
            }
            (Some(tls), None) => tls.send(&mqtt, &mut self.output),
            (None, Some(ws)) => ws.send(mqtt, &mut self.output),
            (Some(tls), Some(ws)) => {
                ws.send(mqtt, &mut self.between_out)?;
                let sent = tls.send(&self.between_out, &mut self.output);
                self.between_out.clear();
                sent
            }
        }
    }

    /// Our side ends: a WebSocket close frame and TLS close_notify, as the layers have.
    pub fn close(&mut self) {
        if let Some(ws) = &mut self.ws {
            match &mut self.tls {
                None => ws.close(&mut self.output),
                Some(_) => ws.close(&mut self.between_out),
            }
        }
        if let Some(tls) = &mut self.tls {
            if !self.between_out.is_empty() {
                let _ = tls.send(&self.between_out, &mut self.output);
                self.between_out.clear();
            }
            tls.close(&mut self.output);
        }
    }

    pub fn has_output(&self) -> bool {
        !self.output.is_empty()
    }

    /// The bytes for the socket, swapped with `spare` (empty, its capacity reused).
    pub fn swap_output(&mut self, spare: &mut Vec<u8>) {
        debug_assert!(spare.is_empty());
        std::mem::swap(&mut self.output, spare);
    }

    pub fn is_websocket(&self) -> bool {
        self.ws.is_some()
    }

    pub fn tls(&self) -> Option<&TlsLayer> {
        self.tls.as_ref()
    }
}
