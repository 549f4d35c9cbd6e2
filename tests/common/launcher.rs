//! Starts a ringmq process and finds its address in the first line it prints (`listening
//! on ...`); signals it, stops it, and kills it when dropped. The one launcher for every
//! test that runs the real binary: the broker's own (`tests/common`) and loadgen's
//! (`loadgen/tests`, which includes this file by path).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a start (`try_spawn`), or a stop, may take before the test calls it a failure.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `spawn` waits for the listening line. Only `tests/startup.rs` tests how fast
/// a broker starts (with `try_spawn`, under `STEP_TIMEOUT`); elsewhere a start is a step
/// towards what the test is about, and on a loaded 2-core CI machine (a cluster test runs
/// three NATS servers and three nodes, beside other tests) it has taken longer than 5 s.
const SPAWN_PATIENCE: Duration = Duration::from_secs(30);

/// A running broker process.
pub struct BrokerProcess {
    child: Child,
    /// The first listener's address.
    pub addr: SocketAddr,
    /// Every listener's address, as the listening line gives them.
    pub addrs: Vec<SocketAddr>,
    /// Shards the command line asked for (`--cores N`; 1 when it does not say).
    pub shards: usize,
}

/// Why a broker did not come up.
#[derive(Debug)]
pub struct StartFailure {
    /// The process, still to be reaped (it may be running, stuck before listening).
    pub child: Child,
    pub reason: &'static str,
}

impl BrokerProcess {
    /// Spawns `command` (its stdout is taken for the listening line) and waits for the
    /// address (up to `SPAWN_PATIENCE`), or panics saying why.
    pub fn spawn(command: &mut Command) -> BrokerProcess {
        match Self::try_spawn_within(command, SPAWN_PATIENCE) {
            Ok(process) => process,
            Err(mut failure) => {
                let state = describe_stuck(&mut failure.child);
                let _ = failure.child.kill();
                let _ = failure.child.wait();
                panic!("ringmq did not start: {}; {state}", failure.reason);
            }
        }
    }

    /// `spawn`, handing back the process when no address came within `STEP_TIMEOUT`.
    pub fn try_spawn(command: &mut Command) -> Result<BrokerProcess, StartFailure> {
        Self::try_spawn_within(command, STEP_TIMEOUT)
    }

    fn try_spawn_within(command: &mut Command, patience: Duration) -> Result<BrokerProcess, StartFailure> {
        let shards = shards_asked(command);
        let mut child = command.stdout(Stdio::piped()).spawn().expect("spawn ringmq");
        match listening_addresses(&mut child, patience) {
            Some(addrs) if !addrs.is_empty() => Ok(BrokerProcess { child, addr: addrs[0], addrs, shards }),
            _ => Err(StartFailure { child, reason: "no listening line" }),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` to the broker process.
    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: signalling our own child process by pid.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, signal);
        }
    }

    /// SIGTERM, then wait (bounded) for the exit status.
    pub fn terminate(&mut self) -> Option<ExitStatus> {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + STEP_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last `--cores N` on `command`'s line, or 1.
fn shards_asked(command: &Command) -> usize {
    let args: Vec<_> = command.get_args().filter_map(|arg| arg.to_str()).collect();
    args.windows(2).filter(|pair| pair[0] == "--cores").filter_map(|pair| pair[1].parse().ok()).next_back().unwrap_or(1)
}

/// The addresses in the first line `child` prints, or `None` if it does not come within
/// `patience` (read on a helper thread, so a stuck broker cannot hang the test).
fn listening_addresses(child: &mut Child, patience: Duration) -> Option<Vec<SocketAddr>> {
    let stdout = child.stdout.take()?;
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = sender.send(line);
    });
    let line = receiver.recv_timeout(patience).ok()?;
    Some(line.split_whitespace().filter_map(|word| word.parse().ok()).collect())
}

/// What a broker that did not start was doing: its exit status if it exited, otherwise
/// each thread's name and the system call it waits in (`/proc`), and with gdb on the
/// machine every thread's stack (printed to stderr), so that a start that hangs in CI
/// leaves evidence.
fn describe_stuck(child: &mut Child) -> String {
    if let Ok(Some(status)) = child.try_wait() {
        return format!("it exited: {status}");
    }
    let pid = child.id();
    let mut threads = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            let path = task.path();
            let read = |name: &str| std::fs::read_to_string(path.join(name)).unwrap_or_default().trim().to_string();
            let syscall = read("syscall");
            let number = syscall.split_whitespace().next().unwrap_or("?").to_string();
            // Field 3 of `stat` (after the parenthesised name) is the state: R, S, D, T, t...
            let stat = read("stat");
            let after_name = stat.rsplit_once(") ").map_or("", |(_, rest)| rest);
            let fields: Vec<&str> = after_name.split_whitespace().collect();
            let (state, user_ticks, system_ticks) =
                (fields.first().copied().unwrap_or("?"), fields.get(11).copied().unwrap_or("?"), fields.get(12).copied().unwrap_or("?"));
            threads.push(format!(
                "{} (state {state}, CPU ticks {user_ticks} user {system_ticks} system, syscall {number}, wchan {})",
                read("comm"),
                read("wchan")
            ));
        }
    }
    let gdb = Command::new("gdb").args(["-p", &pid.to_string(), "-batch", "-ex", "thread apply all bt"]).stdin(Stdio::null()).output();
    if let Ok(output) = gdb {
        eprintln!(
            "ringmq {pid} did not start; its threads' stacks:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    format!("still running, threads: {}", threads.join(", "))
}
