//! Thin glue between sockets and the shard: accept, read and decode, hand packets to the
//! shard, write what the shard buffered. The only module besides `runtime` that knows
//! glommio. Everything a connection decides is decided in `shard`.

mod connection;
pub mod proxy;
pub mod rate;
pub mod split;
pub mod wire;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use futures_lite::future::or;
use glommio::net::TcpListener;
use glommio::timer::sleep;

use crate::runtime::reload::TlsSlot;
use crate::shard::Shard;
use crate::transport::TransportKind;
use crate::transport::tls::TlsConfigs;
use rate::TokenBucket;

/// What every connection accepted on one listener shares.
pub struct ListenerContext {
    pub transport: TransportKind,
    /// Every connection starts with a PROXY protocol header (`proxy.rs`).
    pub proxy_protocol: bool,
    /// Where TLS listeners take the current certificate from.
    pub tls: Option<TlsSource>,
}

/// The certificate new TLS connections get: the latest one loaded (`reload.rs`).
#[derive(Clone)]
pub struct TlsSource(pub Arc<TlsSlot>);

impl TlsSource {
    pub fn current(&self) -> Option<TlsConfigs> {
        self.0.current()
    }
}

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
pub async fn accept_loop(
    shard: Rc<RefCell<Shard>>,
    listener: TcpListener,
    context: ListenerContext,
    accepts_per_s: Option<f64>,
    stop: impl Future<Output = ()>,
) {
    let context = Rc::new(context);
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
                glommio::spawn_local(connection::serve_connection(shard, stream, context.clone())).detach();
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
