//! The `ringmq` binary: parse flags, start the shards, stop on SIGINT/SIGTERM.

use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use clap::Parser;
use ringmq::config::Config;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// PBKDF2 rounds for new password-file entries (what mosquitto_passwd uses).
const PASSWORD_HASH_ITERATIONS: u32 = 101;

fn main() -> ExitCode {
    match run(Config::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ringmq: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: Config) -> anyhow::Result<()> {
    if let Some(user) = &config.hash_password {
        let mut password = String::new();
        std::io::stdin().lock().read_line(&mut password).context("reading the password from standard input")?;
        let password = password.trim_end_matches(['\r', '\n']);
        let salt: [u8; 12] = rand::random();
        println!("{}", ringmq::auth::hash_password_line(user, password.as_bytes(), &salt, PASSWORD_HASH_ITERATIONS));
        return Ok(());
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&config.log).context("--log")?)
        .with_writer(std::io::stderr)
        .init();

    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone()).context("installing signal handlers")?;
    }
    let broker = ringmq::runtime::start(&config, stop)?;
    // Tests and scripts read this line to find the port when --listen asks for port 0.
    println!("ringmq listening on {} with {} shards", broker.local_addr, broker.shard_count);
    std::io::stdout().flush()?;
    broker.wait();
    tracing::info!("stopped");
    Ok(())
}
