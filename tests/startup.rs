//! Start, serve, stop, many times over, with the CPUs contended: every start prints its
//! listening line, answers a CONNECT, and ends on SIGTERM. (glommio 0.9 could park a
//! shard's executor with a runnable task mid-start: no listening line, no CONNACK, SIGTERM
//! ignored; see `src/runtime/nudge.rs`.)

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const STARTS: usize = 150;
/// Bound on the whole loop.
const DEADLINE: Duration = Duration::from_secs(90);
const STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// The listening line's address, or `None` if it does not come within `STEP_TIMEOUT`.
fn listening_address(child: &mut Child) -> Option<SocketAddr> {
    let stdout = child.stdout.take()?;
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = sender.send(line);
    });
    let line = receiver.recv_timeout(STEP_TIMEOUT).ok()?;
    line.split_whitespace().find_map(|word| word.parse().ok())
}

fn connack(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect(addr) else { return false };
    let _ = stream.set_read_timeout(Some(STEP_TIMEOUT));
    // CONNECT 3.1.1, clean session, empty client id.
    let connect = [0x10, 0x0C, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x00];
    let mut reply = [0u8; 4];
    stream.write_all(&connect).is_ok() && stream.read_exact(&mut reply).is_ok() && reply == [0x20, 0x02, 0x00, 0x00]
}

fn exits_after_sigterm(child: &mut Child) -> bool {
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let deadline = Instant::now() + STEP_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return status.success();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
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
        let mut child = Command::new(env!("CARGO_BIN_EXE_ringmq"))
            .args(["--listen", "127.0.0.1:0", "--cores", "2", "--log", "error", "--sys-interval-s", "0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn ringmq");
        let outcome = match listening_address(&mut child) {
            None => Some("no listening line"),
            Some(addr) if !connack(addr) => Some("no CONNACK"),
            Some(_) if !exits_after_sigterm(&mut child) => Some("did not stop on SIGTERM"),
            Some(_) => None,
        };
        if let Some(what) = outcome {
            failures.push(format!("start {starts}: {what}"));
            let _ = child.kill();
        }
        let _ = child.wait();
    }
    burning.store(false, Ordering::Relaxed);
    for burner in burners {
        burner.join().expect("burner");
    }
    assert!(failures.is_empty(), "{failures:?}");
    assert!(starts >= 50, "at least 50 starts within {DEADLINE:?}: {starts}");
}
