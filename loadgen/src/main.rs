//! The `loadgen` binary: flags in, one run, a report out. Exit status 1 when the run lost
//! or duplicated what its QoS forbids, or hit errors.

use std::net::ToSocketAddrs;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use loadgen::plan::Scenario;
use loadgen::run::{RunConfig, run};
use ringmq::protocol::{ProtocolVersion, QoS};

#[derive(Debug, Parser)]
#[command(
    name = "loadgen",
    version,
    about = "MQTT load generator with loss/duplicate/order accounting and coordinated-omission-corrected latency"
)]
struct Cli {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 1883)]
    port: u16,
    /// Connect over TLS (rustls; TLS 1.2 or 1.3, the broker's choice), trusting the CA in
    /// --tls-ca (the certificate must then name the --host address, an IP SAN), or any
    /// certificate with --tls-insecure.
    #[arg(long)]
    tls: bool,
    /// PEM file with the CA (or the self-signed certificate) the broker's certificate chains to.
    #[arg(long, value_name = "PEM", conflicts_with = "tls_insecure")]
    tls_ca: Option<PathBuf>,
    /// Accept any broker certificate (test set-ups with self-signed certificates).
    #[arg(long)]
    tls_insecure: bool,
    /// MQTT over WebSocket: ws://HOST:PORT/PATH, or wss://... (TLS, with --tls-ca or
    /// --tls-insecure). Replaces --host and --port.
    #[arg(long, value_name = "URL")]
    ws: Option<String>,
    /// Subscribers connect to these brokers in turn (HOST:PORT, repeatable: a cluster's
    /// nodes) instead of --host/--port; publishers stay on --host/--port. Plain TCP only.
    #[arg(long, value_name = "ADDR")]
    subscribe_to: Vec<std::net::SocketAddr>,
    #[arg(long, value_enum, default_value = "fanout")]
    scenario: Scenario,
    /// Publishers (fanout, fanin); for p2p, the number of pairs.
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    /// Subscribers (fanout, fanin).
    #[arg(long, default_value_t = 10)]
    subscribers: usize,
    /// More subscribers to the same filter (fanout, fanin) that read nothing once
    /// subscribed: a stuck client among healthy ones. Not counted in the deliveries.
    #[arg(long, default_value_t = 0)]
    stalled_subscribers: usize,
    /// Connections to open (conn-storm).
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Filters the storm client subscribes to (subscribe-storm).
    #[arg(long, default_value_t = 100_000)]
    filters: usize,
    /// SUBSCRIBE packets the filters are spread over, sent back to back (subscribe-storm).
    #[arg(long, default_value_t = 100)]
    packets: usize,
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos_pub: u8,
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos_sub: u8,
    /// MQTT version: 3 (3.1.1) or 5.
    #[arg(long, default_value_t = 3)]
    mqtt: u8,
    #[arg(long, default_value_t = 64)]
    payload_bytes: usize,
    #[arg(long, default_value = "loadgen")]
    topic_prefix: String,
    /// Fanout subscribers use PREFIX/# instead of the exact topic.
    #[arg(long)]
    wildcard: bool,
    /// Subscribers share one subscription, `$share/GROUP/<filter>`: each message must reach
    /// exactly one of them (fanin or fanout).
    #[arg(long, value_name = "GROUP")]
    shared_group: Option<String>,
    /// Open loop: total messages per second over all publishers. Without it: closed loop, as fast as acknowledgements allow.
    #[arg(long)]
    rate: Option<f64>,
    /// Unacknowledged QoS 1/2 messages per publisher (closed loop window).
    #[arg(long, default_value_t = 64)]
    inflight: usize,
    #[arg(long, default_value_t = 10.0)]
    duration_s: f64,
    /// Stop each publisher after this many messages (whichever comes first with the duration).
    #[arg(long)]
    messages: Option<u64>,
    /// Latency samples of messages sent in the first seconds are left out.
    #[arg(long, default_value_t = 1.0)]
    warmup_s: f64,
    /// Time after publishing ends to wait for the last deliveries.
    #[arg(long, default_value_t = 5.0)]
    drain_s: f64,
    /// conn-storm: keep the connections open this long before closing them.
    #[arg(long, default_value_t = 0.0)]
    hold_s: f64,
    /// Subscribers (and storm connections) use clean session 0.
    #[arg(long)]
    persistent: bool,
    /// Client executors: a count or a CPU list, as for ringmq --cores.
    #[arg(long, default_value = "1")]
    cores: String,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
    /// Write the latency percentile distribution here.
    #[arg(long)]
    hist: Option<PathBuf>,
    /// Draw the latency percentile curve into this SVG file.
    #[arg(long)]
    plot: Option<PathBuf>,
}

/// A rustls client configuration trusting the certificates in `ca`.
fn tls_client_config(ca: &std::path::Path) -> anyhow::Result<std::sync::Arc<rustls::ClientConfig>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_file_iter(ca).with_context(|| format!("--tls-ca {}", ca.display()))? {
        roots.add(certificate.with_context(|| format!("--tls-ca {}", ca.display()))?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(std::sync::Arc::new(config))
}

/// A rustls client configuration that accepts any certificate (`--tls-insecure`).
fn tls_insecure_config() -> anyhow::Result<std::sync::Arc<rustls::ClientConfig>> {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(loadgen::wire::AcceptAnyCertificate(provider)))
        .with_no_client_auth();
    Ok(std::sync::Arc::new(config))
}

/// `--ws URL`: whether it is wss, the HOST:PORT, and the path.
fn parse_ws_url(url: &str) -> anyhow::Result<(bool, String, String)> {
    let (secure, rest) = if let Some(rest) = url.strip_prefix("ws://") {
        (false, rest)
    } else if let Some(rest) = url.strip_prefix("wss://") {
        (true, rest)
    } else {
        bail!("--ws {url}: the URL must start with ws:// or wss://");
    };
    let (authority, path) = match rest.find('/') {
        Some(slash) => (&rest[..slash], &rest[slash..]),
        None => (rest, "/mqtt"),
    };
    if !authority.contains(':') {
        bail!("--ws {url}: name the port (ws://HOST:PORT/PATH)");
    }
    Ok((secure, authority.to_string(), path.to_string()))
}

fn qos(level: u8) -> QoS {
    QoS::from_bits(level).expect("clap keeps it in 0..=2")
}

fn main() -> ExitCode {
    match main_inner() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("loadgen: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn main_inner() -> anyhow::Result<bool> {
    let cli = Cli::parse();
    let ws = cli.ws.as_deref().map(parse_ws_url).transpose()?;
    let broker = match &ws {
        None => (cli.host.as_str(), cli.port).to_socket_addrs().context("resolving --host")?.next(),
        Some((_, authority, _)) => authority.to_socket_addrs().context("resolving the --ws address")?.next(),
    }
    .context("the broker's address resolves to nothing")?;
    let wants_tls = cli.tls || ws.as_ref().is_some_and(|(secure, _, _)| *secure);
    let tls = match (wants_tls, &cli.tls_ca, cli.tls_insecure) {
        (false, None, false) => None,
        (false, _, _) => bail!("--tls-ca and --tls-insecure need --tls or a wss:// URL"),
        (true, Some(ca), _) => Some(tls_client_config(ca)?),
        (true, None, true) => Some(tls_insecure_config()?),
        (true, None, false) => bail!("TLS needs --tls-ca PEM or --tls-insecure"),
    };
    let transport = loadgen::wire::ClientTransport { tls, ws_path: ws.map(|(_, _, path)| path) };
    let version = match cli.mqtt {
        3 | 4 => ProtocolVersion::V311,
        5 => ProtocolVersion::V5,
        other => bail!("--mqtt must be 3 or 5, not {other}"),
    };
    if cli.scenario == Scenario::SubscribeStorm {
        if !transport.is_plain() {
            bail!("subscribe-storm runs over plain TCP only");
        }
        let storm = loadgen::subscribe_storm::StormConfig {
            broker,
            version,
            filters: cli.filters,
            packets: cli.packets,
            topic_prefix: cli.topic_prefix.clone(),
            timeout: Duration::from_secs_f64(cli.duration_s.max(1.0)),
        };
        let report = loadgen::subscribe_storm::run_storm(&storm)?;
        println!("{}", serde_json::to_string(&report)?);
        return Ok(!report.failed);
    }
    let cpus = ringmq::config::parse_cores(Some(&cli.cores), &ringmq::runtime::allowed_cpus()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (publishers, subscribers) = match cli.scenario {
        Scenario::P2p => (cli.publishers, cli.publishers),
        _ => (cli.publishers, cli.subscribers),
    };
    if !cli.subscribe_to.is_empty() && !transport.is_plain() {
        bail!("--subscribe-to runs over plain TCP only");
    }
    let config = RunConfig {
        broker,
        subscriber_brokers: cli.subscribe_to.clone(),
        transport,
        scenario: cli.scenario,
        publishers,
        subscribers,
        stalled_subscribers: cli.stalled_subscribers,
        connections: cli.connections,
        qos_pub: qos(cli.qos_pub),
        qos_sub: qos(cli.qos_sub),
        version,
        payload_bytes: cli.payload_bytes,
        topic_prefix: cli.topic_prefix.clone(),
        wildcard: cli.wildcard,
        shared_group: cli.shared_group.clone(),
        rate_per_s: cli.rate,
        inflight: cli.inflight,
        duration: Duration::from_secs_f64(cli.duration_s),
        messages_per_publisher: cli.messages,
        warmup: Duration::from_secs_f64(cli.warmup_s),
        drain: Duration::from_secs_f64(cli.drain_s),
        hold: Duration::from_secs_f64(cli.hold_s),
        persistent: cli.persistent,
        cpus,
        progress: !cli.json && unsafe { libc::isatty(2) } == 1,
    };
    let outcome = run(config.clone())?;
    let (report, histogram) = loadgen::report::build(&config, &outcome);
    if cli.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.human());
    }
    if let Some(path) = &cli.hist {
        loadgen::report::write_distribution(&histogram, path).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &cli.plot {
        let title = format!("{:?} QoS {}->{} against {}", report.scenario, report.qos_pub, report.qos_sub, report.broker);
        loadgen::report::write_plot(&histogram, &title, path)?;
    }
    Ok(!report.failed)
}
