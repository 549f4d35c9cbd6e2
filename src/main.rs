//! The `ringmq` binary: parse flags, start the shards, stop on SIGINT/SIGTERM.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use ringmq::config::{Config, layers};
use ringmq::runtime::heap::CountingAllocator;

/// mimalloc, counted for `--memory-max-bytes` (see `runtime::heap`).
#[global_allocator]
static GLOBAL: CountingAllocator<mimalloc::MiMalloc> = CountingAllocator(mimalloc::MiMalloc);

/// PBKDF2 rounds for new password-file entries (what mosquitto_passwd uses).
const PASSWORD_HASH_ITERATIONS: u32 = 101;

fn main() -> ExitCode {
    GLOBAL.installed();
    // Defaults < -c FILE < RINGMQ_* variables < flags (see `config::layers`).
    let environment = std::env::vars().filter(|(name, _)| name.starts_with(layers::ENV_PREFIX)).collect();
    let layered = match layers::load(std::env::args_os().collect(), &environment) {
        Ok(layered) => layered,
        Err(error) => error.exit(),
    };
    if layered.config.check_config {
        print!("{}", layers::describe(&layered));
        return match ringmq::runtime::check(&layered.config) {
            Ok(()) => {
                println!("# configuration OK");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("ringmq: {error:#}");
                ExitCode::FAILURE
            }
        };
    }
    match run(layered.config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ringmq: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: Config) -> anyhow::Result<()> {
    if let Some(user) = &config.hash_password {
        return print_password_line(user);
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&config.log).context("--log")?)
        .with_writer(std::io::stderr)
        // Colour only for a person watching a terminal, never into a file or journal.
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone()).context("installing signal handlers")?;
    }
    // SIGHUP means "reload" to operators and to systemd's ExecReload: the password file and
    // the ACL file are read again (never the default action, which ends the process). The
    // handler is installed before the broker starts; a SIGHUP before it has started is
    // logged and otherwise ignored.
    let mut hangups = signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP]).context("installing the SIGHUP handler")?;
    let reloading: Arc<std::sync::OnceLock<ringmq::runtime::reload::Reloadable>> = Arc::default();
    {
        let (reloading, config) = (reloading.clone(), config.clone());
        std::thread::Builder::new()
            .name("ringmq-signals".into())
            .spawn(move || {
                for _ in hangups.forever() {
                    match reloading.get() {
                        None => tracing::warn!("SIGHUP before the broker started: nothing reloaded"),
                        Some(reloadable) => reloadable.reload(&config),
                    }
                }
            })
            .context("starting the signal thread")?;
    }
    let broker = ringmq::runtime::start(&config, stop)?;
    let _ = reloading.set(broker.reloadable());
    // Tests and scripts read this line to find the port when --listen asks for port 0.
    let addresses: Vec<String> = broker.local_addrs.iter().map(ToString::to_string).collect();
    println!("ringmq listening on {} with {} shards", addresses.join(" "), broker.shard_count);
    std::io::stdout().flush()?;
    broker.wait();
    tracing::info!("stopped");
    Ok(())
}

/// `--hash-password USER`: reads the password (without echo from a terminal) and prints
/// the password-file line. Refuses what the password file could not hold.
fn print_password_line(user: &str) -> anyhow::Result<()> {
    if user.is_empty() || user.contains(':') || user.contains(char::is_whitespace) {
        anyhow::bail!("--hash-password: a user name must be non-empty, without ':' or white space (the password file's separators)");
    }
    let stdin = std::io::stdin();
    let interactive = stdin.is_terminal();
    if interactive {
        eprint!("Password for {user}: ");
        std::io::stderr().flush()?;
    }
    let echo = interactive.then(EchoOff::new).flatten();
    let mut password = String::new();
    let read = stdin.lock().read_line(&mut password).context("reading the password from standard input");
    drop(echo);
    if interactive {
        eprintln!();
    }
    read?;
    let password = password.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        anyhow::bail!("--hash-password: empty password (give it on standard input)");
    }
    let salt: [u8; 12] = rand::random();
    println!("{}", ringmq::auth::hash_password_line(user, password.as_bytes(), &salt, PASSWORD_HASH_ITERATIONS));
    Ok(())
}

/// Turns terminal echo off on standard input until dropped.
struct EchoOff(libc::termios);

impl EchoOff {
    fn new() -> Option<EchoOff> {
        // SAFETY: tcgetattr/tcsetattr on fd 0 with a termios value we own.
        unsafe {
            let mut original: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut original) != 0 {
                return None;
            }
            let mut silent = original;
            silent.c_lflag &= !libc::ECHO;
            (libc::tcsetattr(0, libc::TCSANOW, &silent) == 0).then_some(EchoOff(original))
        }
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in `new`.
        unsafe {
            libc::tcsetattr(0, libc::TCSANOW, &self.0);
        }
    }
}
