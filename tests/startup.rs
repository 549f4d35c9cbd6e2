//! Start, serve, stop, many times over, with the CPUs contended: every start prints its
//! listening line, answers a CONNECT, and ends on SIGTERM. (glommio 0.9 could park a
//! shard's executor with a runnable task mid-start: no listening line, no CONNACK, SIGTERM
//! ignored; see `src/runtime/nudge.rs`.)

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::launcher::{BrokerProcess, STEP_TIMEOUT};

const STARTS: usize = 150;
/// Bound on the whole loop.
const DEADLINE: Duration = Duration::from_secs(90);

fn connack(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect(addr) else { return false };
    let _ = stream.set_read_timeout(Some(STEP_TIMEOUT));
    // CONNECT 3.1.1, clean session, empty client id.
    let connect = [0x10, 0x0C, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x00];
    let mut reply = [0u8; 4];
    stream.write_all(&connect).is_ok() && stream.read_exact(&mut reply).is_ok() && reply == [0x20, 0x02, 0x00, 0x00]
}

#[test]
fn every_start_listens_answers_and_stops_under_cpu_contention() {
    let burning = Arc::new(AtomicBool::new(true));
    let burners: Vec<_> = (0..2)
        .map(|_| {
            let burning = burning.clone();
            std::thread::spawn(move || {
                let mut spin = 0u64;
                while burning.load(Ordering::Relaxed) {
                    spin = std::hint::black_box(spin.wrapping_add(1));
                }
            })
        })
        .collect();
    let started = Instant::now();
    let mut failures = Vec::new();
    let mut starts = 0;
    while starts < STARTS && started.elapsed() < DEADLINE {
        starts += 1;
        let mut command = Command::new(env!("CARGO_BIN_EXE_ringmq"));
        command.args(["--listen", "127.0.0.1:0", "--cores", "2", "--log", "error", "--sys-interval-s", "0"]).stderr(Stdio::null());
        let outcome = match BrokerProcess::try_spawn(&mut command) {
            Err(failure) => {
                // Reaped on drop of a process handle: kill and wait here.
                let mut child = failure.child;
                let _ = child.kill();
                let _ = child.wait();
                Some(failure.reason)
            }
            Ok(broker) if !connack(broker.addr) => Some("no CONNACK"),
            Ok(mut broker) => match broker.terminate() {
                Some(status) if status.success() => None,
                _ => Some("did not stop on SIGTERM"),
            },
        };
        if let Some(what) = outcome {
            failures.push(format!("start {starts}: {what}"));
        }
    }
    burning.store(false, Ordering::Relaxed);
    for burner in burners {
        burner.join().expect("burner");
    }
    assert!(failures.is_empty(), "{failures:?}");
    assert!(starts >= 50, "at least 50 starts within {DEADLINE:?}: {starts}");
}
