//! One connection's life on its shard: the reader task (the PROXY header, CONNECT and
//! authentication, then packets into the shard) and the writer task (what the shard
//! buffered, out through the transport). Everything a connection decides is decided in
//! `shard`; this only moves bytes and waits.

use std::cell::RefCell;
use std::future::poll_fn;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use futures_lite::future::or;
use glommio::net::TcpStream;
use glommio::timer::sleep;

use super::proxy;
use super::rate::TokenBucket;
use super::split::{ReadHalf, WriteHalf};
use super::wire::{Outgoing, ReadOutcome, SharedTransport, WireReader, WireWriter};
use super::{ListenerContext, TlsSource};
use crate::protocol::{ConnAck, Connect, ConnectRefusal, DecodeError, Packet, ProtocolVersion, decode, short_puback_run_bytes};
use crate::shard::link::Link;
use crate::shard::{CloseReason, ConnectProgress, Shard};
use crate::transport::tls::TlsLayer;
use crate::transport::ws::WsLayer;
use crate::transport::{Transport, TransportKind};

/// After our last packet, how long to keep reading (and discarding) what the client still
/// sends before closing. Closing with unread bytes makes the kernel reset the connection,
/// which can destroy our final DISCONNECT before the client reads it.
const LINGER: Duration = Duration::from_secs(1);

/// Once a connection ends, how long its writer may take to send what the shard still
/// left it (a final DISCONNECT, the transport's close). A peer that reads nothing would
/// otherwise hold the writer, and with it the socket, for as long as it stays connected.
const CLOSING_FLUSH_MAX: Duration = Duration::from_secs(1);

pub(super) async fn serve_connection(shard: Rc<RefCell<Shard>>, stream: TcpStream, listener: Rc<ListenerContext>) {
    if shard.borrow_mut().refuses_half_open() {
        // Too many sockets here still owe their CONNECT: close this one now (dropped).
        return;
    }
    let _ = stream.set_nodelay(true);
    let transport = match new_transport(&shard, &listener) {
        Ok(transport) => transport.map(SharedTransport::new),
        Err(()) => return,
    };
    let link = shard.borrow_mut().new_link();
    if let Ok(peer) = stream.peer_addr() {
        link.set_peer(peer);
    }
    let fd = stream.as_raw_fd();
    let stream = Rc::new(RefCell::new(stream));
    let writer = WireWriter::new(WriteHalf::new(stream.clone()), transport.clone());
    let writer = glommio::spawn_local(write_loop(shard.clone(), link.clone(), writer));
    let mut reader = WireReader::new(ReadHalf::new(stream), transport);
    let outcome = read_loop(&shard, &link, &mut reader, listener.proxy_protocol).await;
    if let (Some(shared), Err(CloseReason::Transport(_))) = (reader.transport(), &outcome) {
        let handshaking = shared.with(|transport| transport.tls().is_some_and(TlsLayer::is_handshaking));
        let counters = &mut shard.borrow_mut().counters;
        if handshaking {
            counters.tls_handshake_failures += 1;
        } else {
            counters.transport_errors += 1;
        }
    }
    shard.borrow_mut().connection_ended(&link, outcome.err().as_ref(), Instant::now());
    // Past the bound the writer task is dropped, which cancels its write.
    let flushed = or(
        async {
            writer.await;
            true
        },
        async {
            sleep(CLOSING_FLUSH_MAX).await;
            false
        },
    )
    .await;
    if !flushed {
        // Nothing we owe it can reach it: reset rather than close, so the kernel frees
        // what is still unsent at once instead of probing a zero window for minutes.
        tracing::debug!("the peer read nothing while closing; the connection is reset");
        reset_on_close(fd);
        return;
    }
    // Boxed like the connect phase: only closing connections need its timer.
    Box::pin(linger(&mut reader)).await;
}

/// The layers a connection on this listener needs; `None` for plain TCP.
fn new_transport(shard: &Rc<RefCell<Shard>>, listener: &ListenerContext) -> Result<Option<Transport>, ()> {
    let packet_bytes_max = shard.borrow().limits().packet_bytes_max;
    let tls = |websocket: bool| -> Result<TlsLayer, ()> {
        let configs = listener.tls.as_ref().and_then(TlsSource::current).ok_or(())?;
        let config = if websocket { configs.websocket } else { configs.mqtt };
        TlsLayer::new(config, configs.username_from).map_err(|error| tracing::warn!(%error, "cannot start a TLS connection"))
    };
    Ok(match &listener.transport {
        TransportKind::Tcp => None,
        TransportKind::Tls => Some(Transport::new(Some(tls(false)?), None)),
        TransportKind::WebSocket { path } => Some(Transport::new(None, Some(WsLayer::new(path.clone(), packet_bytes_max)))),
        TransportKind::WebSocketTls { path } => Some(Transport::new(Some(tls(true)?), Some(WsLayer::new(path.clone(), packet_bytes_max)))),
    })
}

/// Makes the socket's close a reset (SO_LINGER with a zero timeout).
fn reset_on_close(fd: std::os::fd::RawFd) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: `fd` is the connection's socket, open until its stream drops after this
    // call; the option value is a valid `linger` of the size given.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// Discards what the client still sends until it closes too, or `LINGER` passes.
async fn linger(reader: &mut WireReader) {
    let drain = async { while reader.discard().await {} };
    or(drain, sleep(LINGER)).await;
}

/// Writes whatever the shard buffered for this link, one write per wake-up, until the
/// link closes; then ends the transport and shuts our sending side.
async fn write_loop(shard: Rc<RefCell<Shard>>, link: Rc<Link>, mut writer: WireWriter) {
    while let Some(outgoing) = writer.next(link.next_output()).await {
        let mqtt_bytes = match &outgoing {
            Outgoing::Mqtt(bytes) => Some(bytes.len() as u64),
            _ => None,
        };
        let was_mqtt = mqtt_bytes.is_some();
        if let Err(error) = writer.write(outgoing).await {
            tracing::debug!(%error, "write failed");
            link.close();
            break;
        }
        if let Some(count) = mqtt_bytes {
            shard.borrow_mut().counters.bytes_sent += count;
        }
        if was_mqtt && link.wants_drained() && link.buffered_bytes() == 0 {
            // Room again: the shard streams more of what waits for it (retained messages).
            shard.borrow_mut().output_drained(&link, Instant::now());
        }
    }
    writer.finish().await;
}

/// Reads more into `buf`, unless the link starts closing first.
async fn read_more(reader: &mut WireReader, buf: &mut BytesMut, link: &Link) -> ReadOutcome {
    or(reader.read(buf), async {
        link.wait_closing().await;
        ReadOutcome::Closed
    })
    .await
}

/// The next packet, if one arrives before `deadline` and the connection stays open.
async fn packet_before(
    reader: &mut WireReader,
    buf: &mut BytesMut,
    link: &Link,
    version: ProtocolVersion,
    max_packet: u32,
    deadline: Instant,
) -> Option<Result<Packet, CloseReason>> {
    or(
        async {
            loop {
                match decode(buf, version, max_packet) {
                    Ok(Some(packet)) => return Some(Ok(packet)),
                    Ok(None) => {}
                    Err(error) => return Some(Err(CloseReason::Decode(error))),
                }
                match read_more(reader, buf, link).await {
                    ReadOutcome::Data => {}
                    ReadOutcome::Closed => return None,
                    ReadOutcome::Failed(error) => return Some(Err(CloseReason::Transport(error.to_string()))),
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
    reader: &mut WireReader,
    buf: &mut BytesMut,
    max_packet: u32,
    connect_timeout: Duration,
) -> Result<Option<ProtocolVersion>, CloseReason> {
    let deadline = Instant::now() + connect_timeout;
    let first = packet_before(reader, buf, link, ProtocolVersion::V311, max_packet, deadline).await;
    let mut connect = match first {
        None => return Ok(None),
        Some(Ok(Packet::Connect(connect))) => connect,
        Some(Ok(other)) => {
            tracing::debug!(packet = other.name(), "first packet is not CONNECT");
            return Ok(None);
        }
        Some(Err(CloseReason::Decode(DecodeError::UnsupportedProtocolLevel(level)))) => {
            tracing::debug!(level, "unsupported protocol level");
            // CONNACK return code 1 in the 3.1.1 layout, which every version can read.
            let code = ConnectRefusal::UnsupportedProtocolVersion.return_code_v311().unwrap_or(1);
            link.write_packet(
                ProtocolVersion::V311,
                &Packet::ConnAck(ConnAck { session_present: false, code, properties: Default::default() }),
            );
            return Ok(None);
        }
        Some(Err(CloseReason::Decode(error))) => {
            tracing::debug!(%error, "malformed CONNECT");
            return Ok(None);
        }
        Some(Err(error)) => return Err(error),
    };
    let version = connect.version;
    if let Some(shared) = reader.transport() {
        let (tls, websocket) = shared.with(|transport| (transport.tls().is_some(), transport.is_websocket()));
        let counters = &mut shard.borrow_mut().counters;
        counters.tls_handshakes += u64::from(tls);
        counters.websocket_upgrades += u64::from(websocket);
    }
    let credentials = match certificate_username(reader) {
        // The verified certificate is the credential: its name replaces the CONNECT's.
        Some(username) => {
            connect.username = Some(bytes::Bytes::from(username));
            connect.password = None;
            Some(Ok(()))
        }
        None => check_password_off_shard(shard, &connect).await,
    };
    let mut progress = shard.borrow_mut().begin_connect_checked(link, connect, credentials, Instant::now());
    while progress == ConnectProgress::Authenticating {
        match packet_before(reader, buf, link, version, max_packet, deadline).await {
            Some(Ok(packet)) => progress = shard.borrow_mut().continue_authentication(link, packet, Instant::now())?,
            Some(Err(error)) => return Err(error),
            None => return Ok(None),
        }
    }
    Ok(link.wait_open().await.then_some(version))
}

/// `--tls-username-from`: the user name the client's verified certificate gives.
fn certificate_username(reader: &WireReader) -> Option<String> {
    reader.transport()?.with(|transport| transport.tls()?.certificate_username())
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
/// it; what follows it goes through the transport into `buf`. False: missing, malformed or
/// too slow (close).
async fn read_proxy_header(reader: &mut WireReader, buf: &mut BytesMut, link: &Link, deadline: Instant) -> bool {
    let mut raw = BytesMut::new();
    let header = or(
        async {
            loop {
                match proxy::parse(&raw) {
                    Ok(Some(header)) => return Some(header),
                    Ok(None) => {}
                    Err(error) => {
                        tracing::debug!(%error, "closing a connection without a valid PROXY header");
                        return None;
                    }
                }
                let read = or(reader.read_raw(&mut raw), async {
                    link.wait_closing().await;
                    ReadOutcome::Closed
                })
                .await;
                if !matches!(read, ReadOutcome::Data) {
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
    let _ = raw.split_to(header.length);
    if let Some(source) = header.source {
        link.set_peer(source);
    }
    matches!(reader.receive_raw(&raw, buf), ReadOutcome::Data)
}

async fn read_loop(shard: &Rc<RefCell<Shard>>, link: &Rc<Link>, reader: &mut WireReader, proxy_protocol: bool) -> Result<(), CloseReason> {
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
        // One clock read per block of input, not per packet: a fan-out's publisher shard
        // takes a hundred PUBACKs per PUBLISH, and the shard only needs `now` to the
        // millisecond (keep alive, expiry). Re-read after anything that may have waited.
        let mut now = Instant::now();
        loop {
            // A subscriber's acknowledgements in a row (each 4 bytes, nothing but the id)
            // go to the shard as one run: a QoS 1 fan-out's subscribers send one per
            // delivery, and decoding and dispatching each as a packet cost more than
            // retiring it.
            let acks = short_puback_run_bytes(&buf);
            if acks > 0 {
                shard.borrow_mut().handle_short_pubacks(link, &buf[..acks], now)?;
                buf.advance(acks);
                if link.is_closing() {
                    return Ok(());
                }
                continue;
            }
            match decode(&mut buf, version, max_packet) {
                Ok(Some(packet)) => {
                    match &packet {
                        // Back-pressure (shard/flow.rs): the PUBLISH, and what follows it, waits.
                        Packet::Publish(publish) => {
                            let mut waited = false;
                            if let Some(rate) = &mut publish_rate {
                                wait_for_publish_rate(shard, link, rate).await;
                                waited = true;
                            }
                            let qos = publish.qos;
                            poll_fn(|cx| {
                                let allowed = shard.borrow_mut().poll_publish_allowed(link, qos, cx);
                                waited |= allowed.is_pending();
                                allowed
                            })
                            .await;
                            if link.is_closing() {
                                // Closed while the PUBLISH waited: it goes nowhere.
                                return Ok(());
                            }
                            if waited {
                                // Only a wait moves the clock on enough to matter (3.5% of
                                // a p2p profile went to reading it per PUBLISH).
                                now = Instant::now();
                            }
                        }
                        // One SUBSCRIBE's retained messages at a time (shard/flow.rs).
                        Packet::Subscribe(_) => {
                            link.wait_for_retained_sent().await;
                            now = Instant::now();
                        }
                        _ => {}
                    }
                    let subscribing = matches!(packet, Packet::Subscribe(_) | Packet::Unsubscribe(_));
                    shard.borrow_mut().handle_packet(link, packet, now)?;
                    if link.is_closing() {
                        return Ok(());
                    }
                    if subscribing {
                        // Bounded subscribe work per client: its next packets wait their turn.
                        link.wait_for_held_answers().await;
                        now = Instant::now();
                    }
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
        let buffered = buf.len();
        match read_more(reader, &mut buf, link).await {
            ReadOutcome::Data => shard.borrow_mut().counters.bytes_received += (buf.len() - buffered) as u64,
            ReadOutcome::Closed => return Ok(()),
            ReadOutcome::Failed(error) => return Err(CloseReason::Transport(error.to_string())),
        }
        // A socket that always has data never makes this task wait: a client sending
        // flat out would hold the shard, its other connections and peers' batches.
        glommio::yield_if_needed().await;
    }
}
