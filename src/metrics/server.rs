//! The metrics listener: plain HTTP/1.1 on its own thread, one short request at a time
//! (a scraper every few seconds), `GET /metrics` and nothing else. Blocking std sockets:
//! it never touches a shard's executor, and the shards never wait for it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::{SnapshotBoard, render};

/// A scraper that has not sent its request by then is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
const REQUEST_BYTES_MAX: usize = 8 * 1024;
/// How often the idle accept loop looks at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(100);

/// Binds `addr` (port 0 picks one) and serves until `stop`. Returns the bound address.
pub fn serve(
    addr: SocketAddr,
    board: Arc<SnapshotBoard>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<(SocketAddr, std::thread::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let thread = std::thread::Builder::new().name("ringmq-metrics".into()).spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((stream, _)) => {
                    if let Err(error) = answer(stream, &board) {
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

fn answer(mut stream: TcpStream, board: &SnapshotBoard) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    let mut request = Vec::new();
    let mut chunk = [0u8; 1024];
    let path = loop {
        let count = stream.read(&mut chunk)?;
        if count == 0 {
            return Ok(());
        }
        request.extend_from_slice(&chunk[..count]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut parsed = httparse::Request::new(&mut headers);
        match parsed.parse(&request) {
            Ok(httparse::Status::Complete(_)) => break (parsed.method == Some("GET")).then(|| parsed.path.unwrap_or("").to_string()),
            Ok(httparse::Status::Partial) if request.len() < REQUEST_BYTES_MAX => continue,
            _ => break None,
        }
    };
    let response = match path.as_deref().map(|path| path.split('?').next().unwrap_or("")) {
        Some("/metrics") => {
            let body = render(board);
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
        }
        Some(_) => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string(),
        None => "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string(),
    };
    stream.write_all(response.as_bytes())
}
