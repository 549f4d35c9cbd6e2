//! A broker keeps accepting for its whole life: tens of thousands of short connections
//! (reconnecting devices) once stopped every new CONNACK, when a waker was leaked per
//! accepted connection and glommio's 16-bit task reference count overflowed at ~32,768
//! per shard.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::Broker;

/// Well past 2 x 32,768 (two shards).
const CONNECTIONS: u64 = 72_000;
/// One at a time, as reconnecting devices arrive: each accept then waits, which is when
/// the leaked waker was registered (with a busy backlog, accept is ready at once).
const THREADS: u64 = 1;
/// Bound on the whole loop.
const DEADLINE: Duration = Duration::from_secs(150);

/// CONNECT (3.1.1, clean session, empty client id) then DISCONNECT, in one write.
const CONNECT_THEN_DISCONNECT: [u8; 16] = [0x10, 0x0C, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x00, 0xE0, 0x00];

fn connack_for_one_connection(addr: std::net::SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect(addr) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    if stream.write_all(&CONNECT_THEN_DISCONNECT).is_err() {
        return false;
    }
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack).is_ok() && connack == [0x20, 0x02, 0x00, 0x00]
}

#[test]
fn the_broker_still_accepts_after_seventy_thousand_connections() {
    let broker = Broker::start(&[]);
    let addr = broker.addr;
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..THREADS)
        .map(|_| {
            let (done, failed) = (done.clone(), failed.clone());
            std::thread::spawn(move || {
                while done.fetch_add(1, Ordering::Relaxed) < CONNECTIONS && started.elapsed() < DEADLINE {
                    if !connack_for_one_connection(addr) {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("worker");
    }
    let made = done.load(Ordering::Relaxed).min(CONNECTIONS);
    assert_eq!(made, CONNECTIONS, "all connections made within {DEADLINE:?}");
    assert_eq!(failed.load(Ordering::Relaxed), 0, "every connection got its CONNACK");
    assert!(connack_for_one_connection(addr), "and one more after them");
}
