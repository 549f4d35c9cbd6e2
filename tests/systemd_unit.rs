//! `tuning/ringmq.service` is a unit systemd accepts (`systemd-analyze verify`, run on a
//! copy naming the binary under test), and the broker speaks its readiness protocol:
//! READY=1 on NOTIFY_SOCKET once it listens, RELOADING=1 / READY=1 around a SIGHUP,
//! STOPPING=1 is not required.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::launcher::BrokerProcess;

#[test]
fn the_unit_file_verifies() {
    let Ok(analyze) = which("systemd-analyze") else {
        // Counted by the harness as a pass; said loudly so a CI log shows it. .ci/run
        // installs systemd, so there it always runs.
        eprintln!("SKIPPED: systemd-analyze not found (apt-get install systemd)");
        assert!(std::env::var_os("CI").is_none(), "CI must have systemd-analyze");
        return;
    };
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tuning/ringmq.service")).expect("the unit file");
    assert!(unit.contains("ExecStart=/usr/local/bin/ringmq -c /etc/ringmq/ringmq.toml"));
    let dir = std::env::temp_dir().join(format!("ringmq-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join("ringmq.service");
    std::fs::write(&copy, unit.replace("/usr/local/bin/ringmq", env!("CARGO_BIN_EXE_ringmq"))).unwrap();
    let output = Command::new(analyze).arg("verify").arg(&copy).output().expect("run systemd-analyze");
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{said}");
    // Unknown keys are only warnings to systemd: none allowed here.
    assert!(!said.contains("Unknown") && !said.contains("ignoring"), "{said}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn which(program: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .ok_or(())
}

#[test]
fn ready_is_notified_once_listening_and_around_a_reload() {
    let dir = std::env::temp_dir().join(format!("ringmq-notify-{}-{}", std::process::id(), common::rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket_path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind the notify socket");
    socket.set_read_timeout(Some(common::WAIT)).unwrap();
    let mut broker = BrokerProcess::spawn(
        Command::new(env!("CARGO_BIN_EXE_ringmq"))
            .args(["--listen", "127.0.0.1:0", "--cores", "1", "--log", "warn"])
            .env("NOTIFY_SOCKET", &socket_path)
            .stderr(Stdio::inherit()),
    );
    let mut message = [0u8; 256];
    let receive = |message: &mut [u8]| {
        let count = socket.recv(message).expect("a notification");
        String::from_utf8_lossy(&message[..count]).into_owned()
    };
    assert_eq!(receive(&mut message).trim(), "READY=1");
    // The port is open by then.
    std::net::TcpStream::connect(broker.addr).expect("listening when READY=1 came");
    broker.signal(libc::SIGHUP);
    assert_eq!(receive(&mut message).trim(), "RELOADING=1");
    assert_eq!(receive(&mut message).trim(), "READY=1");
    std::thread::sleep(Duration::from_millis(50));
    assert!(broker.terminate().is_some_and(|status| status.success()));
    let _ = std::fs::remove_dir_all(&dir);
}
