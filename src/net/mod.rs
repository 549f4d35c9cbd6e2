//! Thin glue between sockets and the shard: accept, read and decode, hand packets to the
//! shard, write what the shard buffered. The only module besides `runtime` that knows
//! glommio. Everything a connection decides is decided in `shard`.

pub mod proxy;
pub mod rate;
pub mod split;

use std::cell::RefCell;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::Poll;
use std::time::Instant;

use bytes::BytesMut;
use futures_lite::future::or;
use futures_lite::{AsyncRead, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use glommio::timer::sleep;

use crate::protocol::{ConnAck, Connect, ConnectRefusal, DecodeError, Packet, Properties, ProtocolVersion, decode};
use crate::shard::link::Link;
use crate::shard::{CloseReason, ConnectProgress, Shard};
use rate::TokenBucket;
use split::{ReadHalf, WriteHalf};

/// Bytes asked of the kernel per read.
const READ_CHUNK_BYTES: usize = 16 * 1024;
/// After our last packet, how long to keep reading (and discarding) what the client still
/// sends before closing. Closing with unread bytes makes the kernel reset the connection,
/// which can destroy our final DISCONNECT before the client reads it.
const LINGER: std::time::Duration = std::time::Duration::from_secs(1);

/// How often the "open-file limit reached" warning may repeat, per shard.
const FD_LIMIT_WARNING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Accepts connections until `stop` resolves.
///
/// At the open-file limit (EMFILE/ENFILE) a connection waiting in the backlog is accepted
/// through a descriptor held in reserve for that and closed at once, so the client learns
/// promptly instead of hanging unanswered in the listen queue; the warning is logged once
/// per interval with a count, not once per attempt.
///
/// `accepts_per_s`: this shard's share of `--connection-rate-max`. Past it the loop waits
/// before accepting again, so waiting connections stay in the kernel's listen queue.
///
/// `proxy_protocol`: every connection starts with a PROXY protocol header (`proxy.rs`).
pub async fn accept_loop(
    shard: Rc<RefCell<Shard>>,
    listener: TcpListener,
    accepts_per_s: Option<f64>,
    proxy_protocol: bool,
    stop: impl Future<Output = ()>,
) {
    // One stop future for the whole loop, not a fresh one (and a fresh waker) per accept:
    // a waker registered per accepted connection once overflowed glommio's 16-bit task
    // reference count after ~32k connections.
    futures_lite::pin!(stop);
    let mut reserve = std::fs::File::open("/dev/null").ok();
    let mut closed_since_warning = 0u64;
    let mut last_warning: Option<Instant> = None;
    let mut rate = accepts_per_s.map(|rate| TokenBucket::new(rate, Instant::now()));
    loop {
        if let Some(rate) = &mut rate {
            let mut delayed = false;
            while let Some(wait) = rate.take(Instant::now()) {
                if !delayed {
                    shard.borrow_mut().counters.accepts_delayed_by_rate += 1;
                    delayed = true;
                }
                let stopped = or(
                    async {
                        sleep(wait).await;
                        false
                    },
                    async {
                        (&mut stop).await;
                        true
                    },
                )
                .await;
                if stopped {
                    return;
                }
            }
        }
        let accepted = or(async { Some(listener.accept().await) }, async {
            (&mut stop).await;
            None
        })
        .await;
        match accepted {
            None => return,
            Some(Ok(stream)) => {
                let shard = shard.clone();
                glommio::spawn_local(serve_connection(shard, stream, proxy_protocol)).detach();
            }
            Some(Err(error)) if is_out_of_descriptors(&error) => {
                // Free the reserve, take the waiting connection with it, close both.
                if reserve.take().is_some()
                    && let Ok(Ok(excess)) = futures_lite::future::or(async { Ok(listener.accept().await) }, async {
                        sleep(std::time::Duration::from_millis(10)).await;
                        Err(())
                    })
                    .await
                {
                    drop(excess);
                    closed_since_warning += 1;
                    shard.borrow_mut().counters.connections_closed_at_fd_limit += 1;
                }
                if last_warning.is_none_or(|at| at.elapsed() >= FD_LIMIT_WARNING_INTERVAL) {
                    tracing::warn!(
                        closed = closed_since_warning,
                        "open-file limit reached: new connections are closed at once (raise `ulimit -n` / LimitNOFILE=)"
                    );
                    last_warning = Some(Instant::now());
                    closed_since_warning = 0;
                }
                sleep(std::time::Duration::from_millis(1)).await;
                reserve = reserve.or_else(|| std::fs::File::open("/dev/null").ok());
            }
            Some(Err(error)) => {
                tracing::warn!(%error, "accept failed");
                sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

fn is_out_of_descriptors(error: &glommio::GlommioError<()>) -> bool {
    let os_error = match error {
        glommio::GlommioError::IoError(source) | glommio::GlommioError::EnhancedIoError { source, .. } => source.raw_os_error(),
        _ => None,
    };
    matches!(os_error, Some(libc::EMFILE | libc::ENFILE))
}

async fn serve_connection(shard: Rc<RefCell<Shard>>, stream: TcpStream, proxy_protocol: bool) {
    if shard.borrow_mut().refuses_half_open() {
        // Too many sockets here still owe their CONNECT: close this one now (dropped).
        return;
    }
    let _ = stream.set_nodelay(true);
    let link = shard.borrow_mut().new_link();
    if let Ok(peer) = stream.peer_addr() {
        link.set_peer(peer);
    }
    let stream = Rc::new(RefCell::new(stream));
    let writer = glommio::spawn_local(write_loop(shard.clone(), link.clone(), WriteHalf::new(stream.clone())));
    let mut reader = ReadHalf::new(stream);
    let outcome = read_loop(&shard, &link, &mut reader, proxy_protocol).await;
    shard.borrow_mut().connection_ended(&link, outcome.err().as_ref(), Instant::now());
    writer.await;
    // Boxed like the connect phase: only closing connections need its timer.
    Box::pin(linger(&mut reader)).await;
}

/// Discards what the client still sends until it closes too, or `LINGER` passes.
async fn linger(reader: &mut ReadHalf) {
    let drain = async {
        loop {
            let read =
                poll_fn(|cx| READ_SCRATCH.with(|scratch| std::pin::Pin::new(&mut *reader).poll_read(cx, &mut scratch.borrow_mut()[..])))
                    .await;
            if !matches!(read, Ok(count) if count > 0) {
                return;
            }
        }
    };
    or(drain, sleep(LINGER)).await;
}

/// Writes whatever the shard buffered for this link, one write per wake-up, until the
/// link closes; then shuts our sending side so the peer sees the end after our last byte.
async fn write_loop(shard: Rc<RefCell<Shard>>, link: Rc<Link>, mut writer: WriteHalf) {
    while let Some(bytes) = link.next_output().await {
        if writer.write_all(&bytes).await.is_err() {
            link.close();
            break;
        }
        if link.wants_drained() && link.buffered_bytes() == 0 {
            // Room again: the shard streams more of what waits for it (retained messages).
            shard.borrow_mut().output_drained(&link, Instant::now());
        }
    }
    writer.shutdown();
}

enum ReadOutcome {
    Data,
    Closed,
}

thread_local! {
    /// Every read on this shard lands here first; only the bytes that arrived are appended
    /// to the connection's buffer. glommio needs the read buffer only during a poll, so a
    /// connection waiting for data holds no buffer at all.
    static READ_SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; READ_CHUNK_BYTES].into_boxed_slice());
}

/// Reads more bytes into `buf`, unless the link starts closing first.
async fn read_more(reader: &mut ReadHalf, buf: &mut BytesMut, link: &Link) -> ReadOutcome {
    let read = or(
        async {
            Some(
                poll_fn(|cx| {
                    READ_SCRATCH.with(|scratch| {
                        let mut scratch = scratch.borrow_mut();
                        match std::pin::Pin::new(&mut *reader).poll_read(cx, &mut scratch[..]) {
                            Poll::Ready(Ok(count)) => {
                                buf.extend_from_slice(&scratch[..count]);
                                Poll::Ready(Ok(count))
                            }
                            other => other,
                        }
                    })
                })
                .await,
            )
        },
        async {
            link.wait_closing().await;
            None
        },
    )
    .await;
    match read {
        Some(Ok(count)) if count > 0 => ReadOutcome::Data,
        _ => ReadOutcome::Closed,
    }
}

/// The next packet, if one arrives before `deadline` and the connection stays open.
async fn packet_before(
    reader: &mut ReadHalf,
    buf: &mut BytesMut,
    link: &Link,
    version: ProtocolVersion,
    max_packet: u32,
    deadline: Instant,
) -> Option<Result<Packet, DecodeError>> {
    or(
        async {
            loop {
                match decode(buf, version, max_packet) {
                    Ok(Some(packet)) => return Some(Ok(packet)),
                    Ok(None) => {}
                    Err(error) => return Some(Err(error)),
                }
                if let ReadOutcome::Closed = read_more(reader, buf, link).await {
                    return None;
                }
            }
        },
        async {
            sleep(deadline.saturating_duration_since(Instant::now())).await;
            None
        },
    )
    .await
}

/// CONNECT (and any enhanced-authentication exchange after it) within the connect
/// timeout, then the wait for CONNACK. The protocol version once open, `None` if not.
async fn establish(
    shard: &Rc<RefCell<Shard>>,
    link: &Rc<Link>,
    reader: &mut ReadHalf,
    buf: &mut BytesMut,
    max_packet: u32,
    connect_timeout: std::time::Duration,
) -> Result<Option<ProtocolVersion>, CloseReason> {
    let deadline = Instant::now() + connect_timeout;
    let first = packet_before(reader, buf, link, ProtocolVersion::V311, max_packet, deadline).await;
    let connect = match first {
        None => return Ok(None),
        Some(Ok(Packet::Connect(connect))) => connect,
        Some(Ok(other)) => {
            tracing::debug!(packet = other.name(), "first packet is not CONNECT");
            return Ok(None);
        }
        Some(Err(DecodeError::UnsupportedProtocolLevel(level))) => {
            tracing::debug!(level, "unsupported protocol level");
            // CONNACK return code 1 in the 3.1.1 layout, which every version can read.
            let code = ConnectRefusal::UnsupportedProtocolVersion.return_code_v311().unwrap_or(1);
            link.write_packet(
                ProtocolVersion::V311,
                &Packet::ConnAck(ConnAck { session_present: false, code, properties: Properties::default() }),
            );
            return Ok(None);
        }
        Some(Err(error)) => {
            tracing::debug!(%error, "malformed CONNECT");
            return Ok(None);
        }
    };
    let version = connect.version;
    let credentials = check_password_off_shard(shard, &connect).await;
    let mut progress = shard.borrow_mut().begin_connect_checked(link, connect, credentials, Instant::now());
    while progress == ConnectProgress::Authenticating {
        match packet_before(reader, buf, link, version, max_packet, deadline).await {
            Some(Ok(packet)) => progress = shard.borrow_mut().continue_authentication(link, packet, Instant::now())?,
            Some(Err(error)) => return Err(CloseReason::Decode(error)),
            None => return Ok(None),
        }
    }
    Ok(link.wait_open().await.then_some(version))
}

/// Password hashing takes milliseconds by design: it runs on the executor's blocking
/// pool while this shard goes on serving everyone else. `None` when there is nothing slow
/// to check (no password file, or enhanced authentication, which the shard drives).
async fn check_password_off_shard(shard: &Rc<RefCell<Shard>>, connect: &Connect) -> Option<Result<(), ConnectRefusal>> {
    let auth = shard.borrow().authenticator().clone();
    if !auth.has_password_file() || connect.properties.authentication_method.is_some() {
        return None;
    }
    let (username, password) = (connect.username.clone(), connect.password.clone());
    Some(glommio::executor().spawn_blocking(move || auth.check(username.as_deref(), password.as_deref())).await)
}

/// `--publish-rate-max`: this PUBLISH (and what follows it) waits unread until the
/// connection's rate allows it. Counted as waiting to publish, so keep alive is not broken
/// by the wait.
async fn wait_for_publish_rate(shard: &Rc<RefCell<Shard>>, link: &Link, rate: &mut TokenBucket) {
    let Some(mut wait) = rate.take(Instant::now()) else { return };
    shard.borrow_mut().counters.publishes_delayed_by_rate += 1;
    link.set_waiting_to_publish(true);
    loop {
        // A connection closing meanwhile (taken over, shut down) stops waiting at once.
        let closing = or(
            async {
                sleep(wait).await;
                false
            },
            async {
                link.wait_closing().await;
                true
            },
        )
        .await;
        if closing {
            break;
        }
        match rate.take(Instant::now()) {
            None => break,
            Some(more) => wait = more,
        }
    }
    link.set_waiting_to_publish(false);
}

/// Reads the PROXY protocol header (within `deadline`) and takes the client's address from
/// it; what follows it stays in `buf`. False: missing, malformed or too slow (close).
async fn read_proxy_header(reader: &mut ReadHalf, buf: &mut BytesMut, link: &Link, deadline: Instant) -> bool {
    let header = or(
        async {
            loop {
                match proxy::parse(buf) {
                    Ok(Some(header)) => return Some(header),
                    Ok(None) => {}
                    Err(error) => {
                        tracing::debug!(%error, "closing a connection without a valid PROXY header");
                        return None;
                    }
                }
                if let ReadOutcome::Closed = read_more(reader, buf, link).await {
                    return None;
                }
            }
        },
        async {
            sleep(deadline.saturating_duration_since(Instant::now())).await;
            None
        },
    )
    .await;
    let Some(header) = header else { return false };
    let _ = buf.split_to(header.length);
    if let Some(source) = header.source {
        link.set_peer(source);
    }
    true
}

async fn read_loop(shard: &Rc<RefCell<Shard>>, link: &Rc<Link>, reader: &mut ReadHalf, proxy_protocol: bool) -> Result<(), CloseReason> {
    let (max_packet, connect_timeout, publish_rate_max) = {
        let shard = shard.borrow();
        (shard.limits().packet_bytes_max, shard.limits().connect_timeout, shard.limits().publish_rate_max)
    };
    let mut buf = BytesMut::new();
    if proxy_protocol && !Box::pin(read_proxy_header(reader, &mut buf, link, Instant::now() + connect_timeout)).await {
        return Ok(());
    }
    // Boxed: connecting happens once, and its state (a whole decoded packet, a timer)
    // would otherwise be part of every idle connection's task for its whole life.
    let Some(version) = Box::pin(establish(shard, link, reader, &mut buf, max_packet, connect_timeout)).await? else {
        return Ok(());
    };
    // Boxed: only connections under `--publish-rate-max` carry one.
    let mut publish_rate = publish_rate_max.map(|rate| Box::new(TokenBucket::new(f64::from(rate), Instant::now())));

    loop {
        loop {
            match decode(&mut buf, version, max_packet) {
                Ok(Some(packet)) => {
                    match &packet {
                        // Back-pressure (shard/flow.rs): the PUBLISH, and what follows it, waits.
                        Packet::Publish(publish) => {
                            if let Some(rate) = &mut publish_rate {
                                wait_for_publish_rate(shard, link, rate).await;
                            }
                            let qos = publish.qos;
                            poll_fn(|cx| shard.borrow_mut().poll_publish_allowed(link, qos, cx)).await;
                            if link.is_closing() {
                                // Closed while the PUBLISH waited: it goes nowhere.
                                return Ok(());
                            }
                        }
                        // One SUBSCRIBE's retained messages at a time (shard/flow.rs).
                        Packet::Subscribe(_) => link.wait_for_retained_sent().await,
                        _ => {}
                    }
                    shard.borrow_mut().handle_packet(link, packet, Instant::now())?;
                    if link.is_closing() {
                        return Ok(());
                    }
                    // Bounded subscribe work per client: its next packets wait their turn.
                    link.wait_for_held_answers().await;
                }
                Ok(None) => break,
                Err(error) => return Err(CloseReason::Decode(error)),
            }
        }
        if buf.is_empty() {
            // Everything consumed: give the rest of the read block back rather than hold
            // up to 16 KiB for every idle connection.
            buf = BytesMut::new();
        }
        if let ReadOutcome::Closed = read_more(reader, &mut buf, link).await {
            return Ok(());
        }
    }
}
