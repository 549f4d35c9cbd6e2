//! One MQTT client connection on a glommio executor: an outbox drained by a writer task
//! (so acknowledgements and publishes never interleave mid-packet), and a packet reader;
//! over TCP or TLS (rustls, handshake first, then one `ClientConnection` shared by the
//! reader and the writer).

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::{Poll, Waker};

use bytes::{Bytes, BytesMut};
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use ringmq::net::split::{ReadHalf, WriteHalf};
use ringmq::protocol::{Connect, Packet, Properties, ProtocolVersion, decode};
use rustls::{ClientConfig, ClientConnection};
use std::io::{Read, Write};
use std::sync::Arc;

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
}

/// The TLS state both tasks of a connection use (never borrowed across an await).
type SharedTls = Rc<RefCell<ClientConnection>>;

fn tls_error(error: impl std::fmt::Display) -> ConnError {
    ConnError::Tls(error.to_string())
}

/// Encrypts `plain` (if any) and moves every pending record into `out`.
fn seal(tls: &SharedTls, plain: &[u8], out: &mut Vec<u8>) -> Result<(), ConnError> {
    let mut tls = tls.borrow_mut();
    if !plain.is_empty() {
        tls.writer().write_all(plain).map_err(tls_error)?;
    }
    while tls.wants_write() {
        tls.write_tls(out).map_err(tls_error)?;
    }
    Ok(())
}

/// Feeds received records to `tls` and appends the plaintext to `buf`. False: closed.
fn open_records(tls: &SharedTls, mut records: &[u8], buf: &mut BytesMut) -> Result<bool, ConnError> {
    let mut tls = tls.borrow_mut();
    let mut chunk = [0u8; 16 * 1024];
    while !records.is_empty() {
        tls.read_tls(&mut records).map_err(tls_error)?;
        tls.process_new_packets().map_err(tls_error)?;
        loop {
            match tls.reader().read(&mut chunk) {
                Ok(0) => return Ok(false),
                Ok(count) => buf.extend_from_slice(&chunk[..count]),
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => return Ok(false),
            }
        }
    }
    Ok(true)
}

/// The TLS handshake on `stream`, before the reader and writer split it.
async fn handshake(stream: &Rc<RefCell<TcpStream>>, tls: &SharedTls) -> Result<(), ConnError> {
    let (mut read, mut write) = (ReadHalf::new(stream.clone()), WriteHalf::new(stream.clone()));
    let mut out = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    let mut early = BytesMut::new();
    loop {
        out.clear();
        seal(tls, &[], &mut out)?;
        if !out.is_empty() {
            write.write_all(&out).await.map_err(tls_error)?;
        }
        if !tls.borrow().is_handshaking() {
            return Ok(());
        }
        let count = read.read(&mut chunk).await.map_err(tls_error)?;
        if count == 0 || !open_records(tls, &chunk[..count], &mut early)? {
            return Err(ConnError::Closed);
        }
    }
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
    tls: Option<SharedTls>,
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
        let (half, buf, tls) = (&mut self.half, &mut self.buf, &self.tls);
        poll_fn(|cx| {
            SCRATCH.with_borrow_mut(|chunk| match std::pin::Pin::new(&mut *half).poll_read(cx, chunk) {
                Poll::Ready(Ok(0)) => Poll::Ready(Err(ConnError::Closed)),
                Poll::Ready(Ok(count)) => Poll::Ready(match tls {
                    None => {
                        buf.extend_from_slice(&chunk[..count]);
                        Ok(())
                    }
                    Some(tls) => match open_records(tls, &chunk[..count], buf) {
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
    /// TCP connect (and the TLS handshake with `tls`), CONNECT, and wait for a successful CONNACK.
    pub async fn open(
        addr: SocketAddr,
        tls: Option<&Arc<ClientConfig>>,
        client_id: &str,
        clean: bool,
        version: ProtocolVersion,
    ) -> Result<Connection, ConnError> {
        let stream = TcpStream::connect(addr).await.map_err(|error| ConnError::Connect { addr, message: error.to_string() })?;
        let _ = stream.set_nodelay(true);
        let stream = Rc::new(RefCell::new(stream));
        let tls = match tls {
            None => None,
            Some(config) => {
                let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
                let mut connection = ClientConnection::new(config.clone(), name).map_err(tls_error)?;
                // The outbox hands over whole batches (megabytes at times): all of it is sealed
                // at once, and written out before the next batch.
                connection.set_buffer_limit(None);
                let tls = Rc::new(RefCell::new(connection));
                handshake(&stream, &tls).await?;
                Some(tls)
            }
        };
        let outbox = Rc::new(Outbox::default());
        let mut write_half = WriteHalf::new(stream.clone());
        let writer_outbox = outbox.clone();
        let writer_tls = tls.clone();
        let writer = glommio::spawn_local(async move {
            let mut sealed = Vec::new();
            while let Some(bytes) = writer_outbox.next().await {
                let written = match &writer_tls {
                    None => write_half.write_all(&bytes).await,
                    Some(tls) => {
                        sealed.clear();
                        if seal(tls, &bytes, &mut sealed).is_err() {
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
        let reader = Reader { half: ReadHalf::new(stream), buf: BytesMut::new(), version, tls };
        let mut connection = Connection { reader, outbox, version, writer };
        let connect = Connect {
            version,
            clean_start: clean,
            keep_alive_s: 60,
            properties: Properties::default(),
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
