//! The `ringmq` binary: parse flags, start the shards, stop on SIGINT/SIGTERM.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use std::collections::BTreeMap;

use ringmq::config::{Config, LogFormat, layers};
use ringmq::runtime::heap::CountingAllocator;
use ringmq::runtime::reload::Reloadable;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// mimalloc, counted for `--memory-max-bytes` (see `runtime::heap`).
#[global_allocator]
static GLOBAL: CountingAllocator<mimalloc::MiMalloc> = CountingAllocator(mimalloc::MiMalloc);

/// PBKDF2 rounds for new password-file entries (what mosquitto_passwd uses).
const PASSWORD_HASH_ITERATIONS: u32 = 101;

fn main() -> ExitCode {
    GLOBAL.installed();
    // Defaults < -c FILE < RINGMQ_* variables < flags (see `config::layers`).
    let command_line: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if command_line.get(1).is_some_and(|word| word == "ctl") {
        return ctl(&command_line[1..]);
    }
    let layered = match layers::load(command_line.clone(), &ringmq_environment()) {
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
    match run(layered, command_line) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ringmq: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// `ringmq ctl ...`: one admin API request, its JSON answer printed; exit 1 unless 2xx.
fn ctl(arguments: &[std::ffi::OsString]) -> ExitCode {
    use clap::Parser;
    let ctl = ringmq::admin::ctl::Ctl::parse_from(arguments);
    match ctl.run() {
        Ok((status, body)) => {
            println!("{body}");
            if (200..300).contains(&status) {
                ExitCode::SUCCESS
            } else {
                eprintln!("ringmq ctl: HTTP {status}");
                ExitCode::FAILURE
            }
        }
        Err(error) => {
            eprintln!("ringmq ctl: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The process's `RINGMQ_*` variables.
fn ringmq_environment() -> BTreeMap<String, String> {
    std::env::vars().filter(|(name, _)| name.starts_with(layers::ENV_PREFIX)).collect()
}

type LogFilterHandle = tracing_subscriber::reload::Handle<EnvFilter, tracing_subscriber::Registry>;

/// `--log`, with the NATS client's own lines at `warn` unless the filter names it: at
/// `info` it logs every reconnection attempt, which the gateway already sums up.
fn parse_log_filter(directives: &str) -> Result<EnvFilter, tracing_subscriber::filter::ParseError> {
    if directives.contains("async_nats") {
        EnvFilter::try_new(directives)
    } else {
        EnvFilter::try_new(format!("{directives},async_nats=warn"))
    }
}

/// Logs go to stderr through a non-blocking writer: a shard that logs never waits for the
/// terminal, pipe or journal (past its buffer, lines are dropped, not waited for). The
/// filter can be replaced on SIGHUP.
fn start_logging(config: &Config) -> anyhow::Result<(LogFilterHandle, tracing_appender::non_blocking::WorkerGuard)> {
    let (filter, handle) = tracing_subscriber::reload::Layer::new(parse_log_filter(&config.log).context("--log")?);
    let (writer, guard) = tracing_appender::non_blocking(std::io::stderr());
    // Colour only for a person watching a terminal, never into a file or journal.
    let ansi = std::io::stderr().is_terminal();
    let (text, json) = match config.log_format {
        LogFormat::Text => (Some(tracing_subscriber::fmt::layer().with_writer(writer).with_ansi(ansi)), None),
        LogFormat::Json => (None, Some(tracing_subscriber::fmt::layer().json().with_writer(writer))),
    };
    tracing_subscriber::registry().with(filter).with(text).with(json).init();
    Ok((handle, guard))
}

/// SIGHUP: the configuration is read again (file and environment, with the same flags);
/// the log filter, password file, ACL file and certificate files take effect at once,
/// and any other setting that changed is named as needing a restart.
fn reload(running: &layers::Layered, command_line: &[std::ffi::OsString], reloadable: &Reloadable, log_filter: &LogFilterHandle) {
    let fresh = match layers::load(command_line.to_vec(), &ringmq_environment()) {
        Ok(fresh) => fresh,
        Err(error) => {
            let message = error.render().to_string();
            tracing::error!(error = message.lines().next().unwrap_or(""), "SIGHUP: the configuration does not load; nothing changed");
            return;
        }
    };
    match parse_log_filter(&fresh.config.log) {
        Ok(filter) => match log_filter.reload(filter) {
            Ok(()) => tracing::info!(log = %fresh.config.log, "SIGHUP: log filter applied"),
            Err(error) => tracing::error!(%error, "SIGHUP: the log filter could not be replaced"),
        },
        Err(error) => tracing::error!(log = %fresh.config.log, %error, "SIGHUP: bad log filter; the previous one stays"),
    }
    reloadable.reload(&fresh.config);
    let restart = layers::needing_restart(running, &fresh);
    if !restart.is_empty() {
        tracing::warn!(settings = %restart.join(", "), "SIGHUP: these settings changed and take effect only after a restart");
    }
}

fn run(layered: layers::Layered, command_line: Vec<std::ffi::OsString>) -> anyhow::Result<()> {
    let config = layered.config.clone();
    if let Some(user) = &config.hash_password {
        return print_password_line(user);
    }
    let (log_filter, _log_flush) = start_logging(&config)?;

    // A write past the file-size limit (`ulimit -f`) must fail with EFBIG, which the data
    // directory's writer reports and survives, instead of killing the broker (SIGXFSZ's
    // default action).
    // SAFETY: setting a signal's disposition to ignore; no handler code runs.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone()).context("installing signal handlers")?;
    }
    // SIGHUP means "reload" to operators and to systemd's ExecReload (never the default
    // action, which ends the process). The handler is installed before the broker starts;
    // a SIGHUP before it has started is logged and otherwise ignored.
    let mut hangups = signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP]).context("installing the SIGHUP handler")?;
    let reloading: Arc<std::sync::OnceLock<Reloadable>> = Arc::default();
    {
        let reloading = reloading.clone();
        std::thread::Builder::new()
            .name("ringmq-signals".into())
            .spawn(move || {
                for _ in hangups.forever() {
                    match reloading.get() {
                        None => tracing::warn!("SIGHUP before the broker started: nothing reloaded"),
                        Some(reloadable) => {
                            notify_service_manager(sd_notify::NotifyState::Reloading);
                            reload(&layered, &command_line, reloadable, &log_filter);
                            notify_service_manager(sd_notify::NotifyState::Ready);
                        }
                    }
                }
            })
            .context("starting the signal thread")?;
    }
    let broker = ringmq::runtime::start(&config, stop)?;
    let _ = reloading.set(broker.reloadable());
    // Tests and scripts read this line to find the port when --listen asks for port 0.
    let addresses: Vec<String> = broker.local_addrs.iter().map(ToString::to_string).collect();
    match broker.metrics_addr {
        None => println!("ringmq listening on {} with {} shards", addresses.join(" "), broker.shard_count),
        Some(metrics) => println!("ringmq listening on {} with {} shards; metrics on {metrics}", addresses.join(" "), broker.shard_count),
    }
    std::io::stdout().flush()?;
    // Under systemd (Type=notify): ready once every shard listens. Without NOTIFY_SOCKET
    // this does nothing.
    notify_service_manager(sd_notify::NotifyState::Ready);
    broker.wait();
    tracing::info!("stopped");
    Ok(())
}

/// Tells systemd (or any service manager speaking its notify protocol) where we stand.
fn notify_service_manager(state: sd_notify::NotifyState) {
    if let Err(error) = sd_notify::notify(&[state]) {
        tracing::warn!(%error, "could not notify the service manager (NOTIFY_SOCKET)");
    }
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
