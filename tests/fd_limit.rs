//! At the open-file limit the broker closes new connections at once (they would otherwise
//! hang in the listen queue), logs that rarely, and serves again once descriptors free up.

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::RawClient;
use common::launcher::BrokerProcess;
use ringmq::protocol::ProtocolVersion;

const OPEN_FILES_MAX: libc::rlim_t = 64;

#[test]
fn connections_past_the_open_file_limit_are_closed_promptly_and_service_resumes() {
    let log = std::env::temp_dir().join(format!("ringmq-fd-limit-{}", std::process::id()));
    let mut command = Command::new(env!("CARGO_BIN_EXE_ringmq"));
    command
        .args(["--listen", "127.0.0.1:0", "--cores", "1", "--log", "warn", "--sys-interval-s", "0"])
        .stderr(std::fs::File::create(&log).expect("log file"));
    // SAFETY: setrlimit is async-signal-safe; it only lowers this child's own limit.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit { rlim_cur: OPEN_FILES_MAX, rlim_max: OPEN_FILES_MAX };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let broker = BrokerProcess::spawn(&mut command);
    let addr = broker.addr;

    // Twice as many connections as the broker may hold descriptors for, none sending CONNECT.
    let mut clients: Vec<TcpStream> = (0..2 * OPEN_FILES_MAX).map(|_| TcpStream::connect(addr).expect("connect")).collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut closed = 0;
    for client in &mut clients {
        client.set_read_timeout(Some(deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1)))).expect("timeout");
        let mut byte = [0u8; 1];
        // EOF or reset: the broker closed it. A timeout: still waiting for its CONNECT.
        match client.read(&mut byte) {
            Ok(0) => closed += 1,
            Err(error) if !matches!(error.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => closed += 1,
            _ => {}
        }
    }
    assert!(closed as libc::rlim_t >= OPEN_FILES_MAX / 2, "connections past the limit are closed, not left hanging: {closed}");

    drop(clients);
    let deadline = Instant::now() + Duration::from_secs(10);
    let served = loop {
        let mut client = RawClient::open(addr, ProtocolVersion::V311);
        let packet = client.connect_packet("after-the-storm", true, 60, None);
        client.send(&packet);
        if let Some(ringmq::protocol::Packet::ConnAck(connack)) = client.try_recv(Duration::from_millis(500)) {
            break connack.code == 0;
        }
        assert!(Instant::now() < deadline, "the broker serves again once descriptors are free");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(served);
    drop(broker);
    let written = std::fs::read_to_string(&log).expect("log");
    let _ = std::fs::remove_file(&log);
    let warnings = written.matches("open-file limit reached").count();
    assert!((1..=3).contains(&warnings), "one warning per interval, not one per attempt: {warnings}\n{written}");
}
