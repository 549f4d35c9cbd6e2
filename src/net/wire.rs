//! A connection's byte stream as the codec sees it: the socket's two halves, through the
//! connection's transport (TLS, WebSocket) when it has one. The reader task and the writer
//! task share the transport; reading may produce bytes to send (handshake records, the
//! WebSocket upgrade response, pongs), so the reader wakes the writer for them.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Poll, Waker};

use bytes::{Bytes, BytesMut};
use futures_lite::{AsyncRead, AsyncWriteExt};

use super::split::{ReadHalf, WriteHalf};
use crate::transport::{Transport, TransportError};

/// Bytes asked of the kernel per read.
const READ_CHUNK_BYTES: usize = 16 * 1024;

thread_local! {
    /// Every read on this shard lands here first; only the bytes that arrived are appended
    /// to the connection's buffer. glommio needs the read buffer only during a poll, so a
    /// connection waiting for data holds no buffer at all.
    static READ_SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; READ_CHUNK_BYTES].into_boxed_slice());
}

/// The transport both tasks use, and the reader's way to wake the writer.
pub struct SharedTransport {
    transport: RefCell<Transport>,
    writer_waker: Cell<Option<Waker>>,
}

impl SharedTransport {
    pub fn new(transport: Transport) -> std::rc::Rc<SharedTransport> {
        std::rc::Rc::new(SharedTransport { transport: RefCell::new(transport), writer_waker: Cell::new(None) })
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut Transport) -> T) -> T {
        f(&mut self.transport.borrow_mut())
    }

    fn wake_writer_if_output(&self) {
        if self.transport.borrow().has_output()
            && let Some(waker) = self.writer_waker.take()
        {
            waker.wake();
        }
    }

    /// Writer side: resolves once reading left bytes to send.
    async fn output_ready(&self) {
        poll_fn(|cx| {
            if self.transport.borrow().has_output() {
                return Poll::Ready(());
            }
            self.writer_waker.set(Some(cx.waker().clone()));
            Poll::Pending
        })
        .await
    }
}

pub enum ReadOutcome {
    Data,
    Closed,
    Failed(TransportError),
}

pub struct WireReader {
    half: ReadHalf,
    transport: Option<std::rc::Rc<SharedTransport>>,
}

impl WireReader {
    pub fn new(half: ReadHalf, transport: Option<std::rc::Rc<SharedTransport>>) -> WireReader {
        WireReader { half, transport }
    }

    pub fn transport(&self) -> Option<&SharedTransport> {
        self.transport.as_deref()
    }

    /// Waits for the socket and appends what it brings to `mqtt`, through the transport.
    /// `Data` may have added nothing (a TLS handshake record, say).
    pub async fn read(&mut self, mqtt: &mut BytesMut) -> ReadOutcome {
        let transport = self.transport.as_deref();
        read_socket(&mut self.half, |bytes| through(transport, bytes, mqtt)).await
    }

    /// Reads bytes as they come from the socket, past any transport (a PROXY protocol
    /// header precedes TLS and WebSocket).
    pub async fn read_raw(&mut self, raw: &mut BytesMut) -> ReadOutcome {
        read_socket(&mut self.half, |bytes| through(None, bytes, raw)).await
    }

    /// Bytes that arrived raw (behind a PROXY header) go through the transport now.
    pub fn receive_raw(&mut self, raw: &[u8], mqtt: &mut BytesMut) -> ReadOutcome {
        through(self.transport.as_deref(), raw, mqtt)
    }

    /// Reads and drops what the socket brings. False at its end.
    pub async fn discard(&mut self) -> bool {
        matches!(read_socket(&mut self.half, |_| ReadOutcome::Data).await, ReadOutcome::Data)
    }
}

/// One read from the socket, its bytes handed to `take` while they are in the shard's
/// scratch block.
async fn read_socket(half: &mut ReadHalf, mut take: impl FnMut(&[u8]) -> ReadOutcome) -> ReadOutcome {
    poll_fn(|cx| {
        READ_SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            match Pin::new(&mut *half).poll_read(cx, &mut scratch[..]) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => Poll::Ready(ReadOutcome::Closed),
                Poll::Ready(Ok(count)) => Poll::Ready(take(&scratch[..count])),
                Poll::Pending => Poll::Pending,
            }
        })
    })
    .await
}

/// Socket bytes to MQTT bytes in `mqtt`: through the transport if there is one, waking
/// the writer for whatever that left to send.
fn through(transport: Option<&SharedTransport>, bytes: &[u8], mqtt: &mut BytesMut) -> ReadOutcome {
    let Some(shared) = transport else {
        mqtt.extend_from_slice(bytes);
        return ReadOutcome::Data;
    };
    let received = shared.with(|transport| transport.receive(bytes, mqtt));
    shared.wake_writer_if_output();
    match received {
        Ok(true) => ReadOutcome::Data,
        Ok(false) => ReadOutcome::Closed,
        Err(error) => ReadOutcome::Failed(error),
    }
}

/// What the writer task is given next.
pub enum Outgoing {
    Mqtt(Bytes),
    /// The transport has bytes of its own to send.
    Transport,
}

pub struct WireWriter {
    half: WriteHalf,
    transport: Option<std::rc::Rc<SharedTransport>>,
    /// The transport's output buffer goes back and forth with this one, so that its
    /// capacity is reused rather than reallocated per write.
    spare: Vec<u8>,
}

impl WireWriter {
    pub fn new(half: WriteHalf, transport: Option<std::rc::Rc<SharedTransport>>) -> WireWriter {
        WireWriter { half, transport, spare: Vec::new() }
    }

    /// The next thing to write: `next_mqtt` (the link's output), or bytes the transport
    /// produced while reading. `None`: the link closed.
    pub async fn next(&self, next_mqtt: impl Future<Output = Option<Bytes>>) -> Option<Outgoing> {
        match &self.transport {
            None => next_mqtt.await.map(Outgoing::Mqtt),
            // The link's wait pops its bytes only in the poll that returns them, so losing
            // this race to the transport loses nothing.
            Some(shared) => {
                futures_lite::future::or(async { next_mqtt.await.map(Outgoing::Mqtt) }, async {
                    shared.output_ready().await;
                    Some(Outgoing::Transport)
                })
                .await
            }
        }
    }

    /// Sends `outgoing` (through the transport).
    pub async fn write(&mut self, outgoing: Outgoing) -> Result<(), TransportError> {
        let Some(shared) = &self.transport else {
            if let Outgoing::Mqtt(bytes) = outgoing {
                return self.half.write_all(&bytes).await.map_err(io_error);
            }
            return Ok(());
        };
        if let Outgoing::Mqtt(bytes) = outgoing {
            shared.with(|transport| transport.send(bytes))?;
        }
        self.flush_transport().await
    }

    async fn flush_transport(&mut self) -> Result<(), TransportError> {
        let Some(shared) = &self.transport else { return Ok(()) };
        loop {
            self.spare.clear();
            shared.with(|transport| transport.swap_output(&mut self.spare));
            if self.spare.is_empty() {
                return Ok(());
            }
            self.half.write_all(&self.spare).await.map_err(io_error)?;
        }
    }

    /// The end: the transport's goodbye (close frame, close_notify), then our side of the
    /// socket shut, so the peer reads everything we sent, then EOF.
    pub async fn finish(&mut self) {
        if let Some(shared) = &self.transport {
            shared.with(Transport::close);
            let _ = self.flush_transport().await;
        }
        self.half.shutdown();
    }
}

fn io_error(error: std::io::Error) -> TransportError {
    TransportError::Io(error.to_string())
}
