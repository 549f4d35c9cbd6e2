//! One MQTT client connection on a glommio executor: an outbox drained by a writer task
//! (so acknowledgements and publishes never interleave mid-packet), and a packet reader;
//! over TCP, TLS, WebSocket or WebSocket over TLS (the layers are in `wire`).

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::{Poll, Waker};

use bytes::{Bytes, BytesMut};
use futures_lite::{AsyncRead, AsyncWriteExt};
use glommio::net::TcpStream;
use ringmq::net::split::{ReadHalf, WriteHalf};
use ringmq::protocol::{Connect, Packet, ProtocolVersion, decode};

use crate::wire::{ClientTransport, SharedLayers, establish};

#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("connect to {addr}: {message}")]
    Connect { addr: SocketAddr, message: String },
    #[error("connection closed by the broker")]
    Closed,
    #[error("read: {0}")]
    Io(String),
    #[error("broker sent a malformed packet: {0}")]
    Decode(#[from] ringmq::protocol::DecodeError),
    #[error("CONNACK refused with code {0:#04x}")]
    Refused(u8),
    #[error("expected {expected}, got {got}")]
    Unexpected { expected: &'static str, got: &'static str },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("WebSocket: {0}")]
    WebSocket(String),
}

/// A wake-up slot shared by two tasks on one executor.
#[derive(Default)]
pub struct Signal {
    waker: Cell<Option<Waker>>,
}

impl Signal {
    pub fn notify(&self) {
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    /// Waits until `ready()` holds, re-checking after each notify.
    pub async fn wait_until(&self, ready: impl Fn() -> bool) {
        poll_fn(|cx| {
            if ready() {
                return Poll::Ready(());
            }
            self.waker.set(Some(cx.waker().clone()));
            Poll::Pending
        })
        .await
    }
}

/// Bytes waiting for the writer task.
#[derive(Default)]
pub struct Outbox {
    buf: RefCell<BytesMut>,
    closed: Cell<bool>,
    has_data: Signal,
    /// Notified after each write, for senders waiting for room.
    pub drained: Signal,
}

impl Outbox {
    pub fn push(&self, packet: &Packet, version: ProtocolVersion) {
        packet.encode(version, &mut self.buf.borrow_mut());
        self.has_data.notify();
    }

    pub fn len(&self) -> usize {
        self.buf.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.borrow().is_empty()
    }

    pub fn close(&self) {
        self.closed.set(true);
        self.has_data.notify();
    }

    async fn next(&self) -> Option<Bytes> {
        self.has_data.wait_until(|| !self.buf.borrow().is_empty() || self.closed.get()).await;
        let mut buf = self.buf.borrow_mut();
        if buf.is_empty() {
            return None;
        }
        Some(buf.split().freeze())
    }
}

pub struct Reader {
    half: ReadHalf,
    buf: BytesMut,
    version: ProtocolVersion,
    layers: Option<SharedLayers>,
}

impl Reader {
    /// The next packet; `Err(Closed)` at end of stream. Dropping the future loses nothing.
    pub async fn next(&mut self) -> Result<Packet, ConnError> {
        loop {
            if let Some(packet) = self.buffered()? {
                return Ok(packet);
            }
            self.read_more().await?;
        }
    }

    /// A packet already received, without waiting.
    pub fn buffered(&mut self) -> Result<Option<Packet>, ConnError> {
        Ok(decode(&mut self.buf, self.version, u32::MAX)?)
    }

    /// Waits for more bytes from the socket. Dropping the future loses nothing.
    pub async fn read_more(&mut self) -> Result<(), ConnError> {
        // One scratch block per thread, borrowed only while a poll copies out of the socket:
        // a fresh zeroed 16 KiB array per read cost more than the read itself at 100k
        // small messages per second.
        thread_local! {
            static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; 16 * 1024].into_boxed_slice());
        }
        let (half, buf, layers) = (&mut self.half, &mut self.buf, &self.layers);
        poll_fn(|cx| {
            SCRATCH.with_borrow_mut(|chunk| match std::pin::Pin::new(&mut *half).poll_read(cx, chunk) {
                Poll::Ready(Ok(0)) => Poll::Ready(Err(ConnError::Closed)),
                Poll::Ready(Ok(count)) => Poll::Ready(match layers {
                    None => {
                        buf.extend_from_slice(&chunk[..count]);
                        Ok(())
                    }
                    Some(layers) => match layers.borrow_mut().open(&chunk[..count], buf) {
                        Ok(true) => Ok(()),
                        Ok(false) => Err(ConnError::Closed),
                        Err(error) => Err(error),
                    },
                }),
                Poll::Ready(Err(error)) => Poll::Ready(Err(ConnError::Io(error.to_string()))),
                Poll::Pending => Poll::Pending,
            })
        })
        .await
    }
}

pub struct Connection {
    pub reader: Reader,
    pub outbox: Rc<Outbox>,
    pub version: ProtocolVersion,
    writer: glommio::task::JoinHandle<()>,
}

impl Connection {
    /// TCP connect (then the TLS handshake and the WebSocket upgrade, as `transport`
    /// says), CONNECT, and wait for a successful CONNACK.
    pub async fn open(
        addr: SocketAddr,
        transport: &ClientTransport,
        client_id: &str,
        clean: bool,
        version: ProtocolVersion,
    ) -> Result<Connection, ConnError> {
        let stream = TcpStream::connect(addr).await.map_err(|error| ConnError::Connect { addr, message: error.to_string() })?;
        let _ = stream.set_nodelay(true);
        let stream = Rc::new(RefCell::new(stream));
        let mut read_half = ReadHalf::new(stream.clone());
        let mut write_half = WriteHalf::new(stream);
        let (layers, early) = if transport.is_plain() {
            (None, BytesMut::new())
        } else {
            let (layers, early) = establish(&mut read_half, &mut write_half, transport, addr).await?;
            (Some(layers), early)
        };
        let outbox = Rc::new(Outbox::default());
        let writer_outbox = outbox.clone();
        let writer_layers = layers.clone();
        let writer = glommio::spawn_local(async move {
            let mut sealed = Vec::new();
            while let Some(bytes) = writer_outbox.next().await {
                let written = match &writer_layers {
                    None => write_half.write_all(&bytes).await,
                    Some(layers) => {
                        sealed.clear();
                        if layers.borrow_mut().seal(bytes, &mut sealed).is_err() {
                            break;
                        }
                        write_half.write_all(&sealed).await
                    }
                };
                if written.is_err() {
                    break;
                }
                writer_outbox.drained.notify();
            }
            write_half.shutdown();
        })
        .detach();
        let reader = Reader { half: read_half, buf: early, version, layers };
        let mut connection = Connection { reader, outbox, version, writer };
        let connect = Connect {
            version,
            clean_start: clean,
            keep_alive_s: 60,
            properties: Default::default(),
            client_id: Bytes::copy_from_slice(client_id.as_bytes()),
            will: None,
            username: None,
            password: None,
        };
        connection.send(&Packet::Connect(Box::new(connect)));
        match connection.reader.next().await? {
            Packet::ConnAck(connack) if connack.code == 0 => Ok(connection),
            Packet::ConnAck(connack) => Err(ConnError::Refused(connack.code)),
            other => Err(ConnError::Unexpected { expected: "CONNACK", got: other.name() }),
        }
    }

    pub fn send(&self, packet: &Packet) {
        self.outbox.push(packet, self.version);
    }

    /// DISCONNECT, flush, close.
    pub async fn close(self) {
        self.send(&Packet::Disconnect(ringmq::protocol::Disconnect::new(ringmq::protocol::ReasonCode::SUCCESS)));
        self.outbox.close();
        let _ = self.writer.await;
    }
}
