//! The metrics listener: plain HTTP/1.1 on its own thread, one short request at a time
//! (a scraper every few seconds), `GET /metrics` and nothing else. Blocking std sockets:
//! it never touches a shard's executor, and the shards never wait for it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::{SnapshotBoard, render};
use crate::admin::AdminDesk;

/// The admin API beside the metrics: its desk, and the token it asks for (`None`:
/// loopback peers only).
#[derive(Clone)]
pub struct AdminAccess {
    pub desk: Arc<AdminDesk>,
    pub token: Option<String>,
}

/// A scraper that has not sent its request by then is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
const REQUEST_BYTES_MAX: usize = 8 * 1024;
/// How often the idle accept loop looks at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(100);

/// Binds `addr` (port 0 picks one) and serves until `stop`. Returns the bound address.
pub fn serve(
    addr: SocketAddr,
    board: Arc<SnapshotBoard>,
    admin: AdminAccess,
    stop: Arc<AtomicBool>,
) -> std::io::Result<(SocketAddr, std::thread::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let thread = std::thread::Builder::new().name("ringmq-metrics".into()).spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((stream, peer)) => {
                    if let Err(error) = answer(stream, peer, &board, &admin) {
                        tracing::debug!(%error, "metrics request failed");
                    }
                }
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(STOP_POLL),
                Err(error) => {
                    tracing::warn!(%error, "metrics listener: accept failed");
                    std::thread::sleep(STOP_POLL);
                }
            }
        }
    })?;
    Ok((bound, thread))
}

fn answer(mut stream: TcpStream, peer: SocketAddr, board: &SnapshotBoard, admin: &AdminAccess) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    let mut request = Vec::new();
    let mut chunk = [0u8; 1024];
    // (method, path, may use the admin API)
    let parsed = loop {
        let count = stream.read(&mut chunk)?;
        if count == 0 {
            return Ok(());
        }
        request.extend_from_slice(&chunk[..count]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut parsed = httparse::Request::new(&mut headers);
        match parsed.parse(&request) {
            Ok(httparse::Status::Complete(_)) => {
                let authorization =
                    parsed.headers.iter().find(|header| header.name.eq_ignore_ascii_case("authorization")).map(|header| header.value);
                let allowed = crate::admin::allowed(peer, admin.token.as_deref(), authorization);
                break Some((parsed.method.unwrap_or("").to_string(), parsed.path.unwrap_or("").to_string(), allowed));
            }
            Ok(httparse::Status::Partial) if request.len() < REQUEST_BYTES_MAX => continue,
            _ => break None,
        }
    };
    let (status, content_type, body) = match parsed {
        None => ("400 Bad Request", "text/plain", String::new()),
        Some((method, path, _)) if method == "GET" && path.split('?').next() == Some("/metrics") => {
            ("200 OK", "application/openmetrics-text; version=1.0.0; charset=utf-8", render(board))
        }
        Some((_, path, false)) if path.starts_with("/api/") => (
            "403 Forbidden",
            "application/json",
            "{\"error\":\"the admin API needs --admin-token's bearer token, or a loopback peer without one\"}".to_string(),
        ),
        Some((method, path, true)) if path.starts_with("/api/") => {
            let reply = crate::admin::handle(&admin.desk, &method, &path["/api".len()..]);
            (reply.status, "application/json", reply.body)
        }
        Some(_) => ("404 Not Found", "text/plain", String::new()),
    };
    let head = format!("HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())
}
