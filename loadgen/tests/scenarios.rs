//! loadgen against the real ringmq binary, every scenario at small scale: exact delivered
//! counts for QoS 1 and 2, no loss, no QoS 2 duplicates, sane percentiles.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;

/// Builds the broker once (the workspace's release profile) and returns its path.
fn ringmq_binary() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
            let status = Command::new(env!("CARGO"))
                .args(["build", "--release", "--bin", "ringmq"])
                .current_dir(&root)
                .status()
                .expect("run cargo build");
            assert!(status.success(), "building ringmq");
            let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
            target.join("release").join("ringmq")
        })
        .clone()
}

#[path = "../../tests/common/launcher.rs"]
mod launcher;

use launcher::BrokerProcess as Broker;

/// The broker on its defaults, on two shards: bursts beyond a subscriber's 1000-message
/// queue pause the publisher instead of dropping, so the counts below are exact on them.
fn start_broker() -> Broker {
    start_broker_with(&[])
}

fn start_broker_with(extra: &[&str]) -> Broker {
    Broker::spawn(
        Command::new(ringmq_binary())
            .args(["--listen", "127.0.0.1:0", "--cores", "2", "--log", "warn", "--sys-interval-s", "0"])
            .args(extra),
    )
}

/// Runs loadgen with `args` plus --json against `broker`; returns (exit success, report).
fn loadgen(broker: &Broker, args: &[&str]) -> (bool, Value) {
    loadgen_at(broker.addr.port(), args)
}

/// `loadgen` against the listener on `port`.
fn loadgen_at(port: u16, args: &[&str]) -> (bool, Value) {
    let output = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--json", "--warmup-s", "0"])
        .args(args)
        .output()
        .expect("run loadgen");
    let stdout = String::from_utf8(output.stdout).expect("utf8");
    let report: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("loadgen printed no JSON ({e}): {stdout}\nstderr: {}", String::from_utf8_lossy(&output.stderr)));
    (output.status.success(), report)
}

fn count(report: &Value, name: &str) -> u64 {
    report["counts"][name].as_u64().unwrap_or_else(|| panic!("counts.{name} in {report}"))
}

fn assert_exact(report: &Value, expected: u64) {
    assert_eq!(count(report, "expected"), expected, "{report}");
    assert_eq!(count(report, "unique"), expected, "{report}");
    assert_eq!(count(report, "delivered"), expected, "{report}");
    assert_eq!(count(report, "lost"), 0, "{report}");
    assert_eq!(count(report, "duplicated"), 0, "{report}");
    assert_eq!(count(report, "out_of_order"), 0, "{report}");
    assert_sane_latency(report, "latency_us");
}

fn assert_sane_latency(report: &Value, field: &str) {
    let p = &report[field];
    let value = |name: &str| p[name].as_u64().unwrap_or_else(|| panic!("{field}.{name} in {report}"));
    assert!(value("p50") > 0, "{report}");
    assert!(value("p50") <= value("p99") && value("p99") <= value("max"), "{report}");
}

#[test]
fn fanout_qos1_and_qos2_deliver_exactly() {
    let broker = start_broker();
    for qos in ["1", "2"] {
        let (ok, report) = loadgen(
            &broker,
            &[
                "--scenario",
                "fanout",
                "--publishers",
                "2",
                "--subscribers",
                "20",
                "--qos-pub",
                qos,
                "--qos-sub",
                qos,
                "--messages",
                "200",
                "--duration-s",
                "30",
                "--cores",
                "2",
            ],
        );
        assert!(ok, "{report}");
        assert_eq!(report["published"], 400);
        assert_exact(&report, 400 * 20);
    }
}

#[test]
fn fanin_over_a_wildcard_delivers_exactly() {
    let broker = start_broker();
    let (ok, report) = loadgen(
        &broker,
        &[
            "--scenario",
            "fanin",
            "--publishers",
            "30",
            "--subscribers",
            "2",
            "--qos-pub",
            "1",
            "--qos-sub",
            "2",
            "--messages",
            "50",
            "--duration-s",
            "30",
        ],
    );
    assert!(ok, "{report}");
    assert_exact(&report, 30 * 50 * 2);
}

#[test]
fn fanin_over_a_shared_subscription_delivers_each_message_once() {
    let broker = start_broker();
    let (ok, report) = loadgen(
        &broker,
        &[
            "--scenario",
            "fanin",
            "--publishers",
            "10",
            "--subscribers",
            "6",
            "--shared-group",
            "workers",
            "--qos-pub",
            "1",
            "--qos-sub",
            "1",
            "--messages",
            "100",
            "--duration-s",
            "30",
            "--mqtt",
            "5",
            "--cores",
            "2",
        ],
    );
    assert!(ok, "{report}");
    assert_exact(&report, 10 * 100);
}

#[test]
fn p2p_pairs_deliver_exactly_in_open_loop() {
    let broker = start_broker();
    // 40 pairs sharing 4000 msg/s for 100 messages each: about one second, open loop.
    let (ok, report) = loadgen(
        &broker,
        &[
            "--scenario",
            "p2p",
            "--publishers",
            "40",
            "--qos-pub",
            "2",
            "--qos-sub",
            "2",
            "--messages",
            "100",
            "--rate",
            "4000",
            "--duration-s",
            "30",
        ],
    );
    assert!(ok, "{report}");
    assert_exact(&report, 40 * 100);
    assert_eq!(report["rate_per_s"], 4000.0);
}

#[test]
fn qos0_fanout_reports_what_arrived() {
    let broker = start_broker();
    let (ok, report) =
        loadgen(&broker, &["--scenario", "fanout", "--subscribers", "5", "--messages", "1000", "--duration-s", "30", "--mqtt", "5"]);
    assert!(ok, "{report}");
    assert_eq!(report["mqtt"], "5.0");
    // At this scale nothing is shed; QoS 0 loss would be reported, not fatal.
    assert_exact(&report, 5000);
}

#[test]
fn conn_storm_opens_every_connection() {
    let broker = start_broker();
    let (ok, report) = loadgen(&broker, &["--scenario", "conn-storm", "--connections", "300", "--hold-s", "0.2", "--cores", "2"]);
    assert!(ok, "{report}");
    assert_eq!(report["connections_ok"], 300);
    assert!(report["connects_per_s"].as_f64().expect("rate") > 0.0);
    assert_sane_latency(&report, "connack_latency_us");
}

#[test]
fn loss_at_qos1_fails_the_run_loudly() {
    // Nothing listens here: every connection fails, and the run must not pass.
    let dead = start_broker();
    let port = dead.addr.port();
    drop(dead);
    let output = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args([
            "--port",
            &port.to_string(),
            "--scenario",
            "fanout",
            "--subscribers",
            "2",
            "--qos-pub",
            "1",
            "--qos-sub",
            "1",
            "--messages",
            "10",
            "--drain-s",
            "1",
        ])
        .output()
        .expect("run loadgen");
    assert!(!output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("FAILED") && stdout.contains("ERROR"), "{stdout}");
}

#[test]
fn writes_the_percentile_distribution_and_plot_and_reports_its_own_cpu() {
    let broker = start_broker();
    let dir = std::env::temp_dir().join(format!("loadgen-out-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (hist, plot) = (dir.join("latency.txt"), dir.join("latency.svg"));
    let (ok, report) = loadgen(
        &broker,
        &[
            "--scenario",
            "fanout",
            "--subscribers",
            "4",
            "--qos-pub",
            "1",
            "--qos-sub",
            "1",
            "--messages",
            "300",
            "--duration-s",
            "30",
            "--hist",
            hist.to_str().expect("utf8"),
            "--plot",
            plot.to_str().expect("utf8"),
        ],
    );
    assert!(ok, "{report}");
    let cpu = report["client_cpu_fraction"].as_f64().expect("client CPU in the report");
    assert!(cpu > 0.0, "{report}");
    assert_eq!(report["client_saturated"], cpu > 0.9);
    let distribution = std::fs::read_to_string(&hist).expect("distribution written");
    let mut lines = distribution.lines();
    assert_eq!(lines.next(), Some("value_us percentile total_count"));
    let last: Vec<&str> = lines.last().expect("at least one step").split_whitespace().collect();
    assert_eq!(last[1], "1.000000", "the distribution ends at the 100th percentile");
    let svg = std::fs::read_to_string(&plot).expect("plot written");
    assert!(svg.starts_with("<svg") && svg.contains("polyline"), "an SVG with a latency curve");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_stalled_subscriber_among_healthy_ones_costs_them_nothing_once_it_is_disconnected() {
    // One subscriber reads nothing after subscribing. Its queue fills, the publisher is
    // paused (nothing dropped), and after the slow-subscriber timeout it is disconnected;
    // the 20 healthy subscribers then get every message, exactly once and in order.
    let broker = start_broker_with(&["--slow-subscriber-timeout-s", "1", "--queued-messages-max", "100"]);
    let (ok, report) = loadgen(
        &broker,
        &[
            "--scenario",
            "fanout",
            "--subscribers",
            "20",
            "--stalled-subscribers",
            "1",
            "--qos-pub",
            "1",
            "--qos-sub",
            "1",
            "--payload-bytes",
            "1024",
            "--messages",
            "3000",
            "--duration-s",
            "30",
            "--cores",
            "2",
        ],
    );
    assert!(ok, "{report}");
    assert_eq!(report["stalled_subscribers"], 1);
    assert_eq!(report["published"], 3000);
    assert_exact(&report, 3000 * 20);
}

/// A CA and a certificate for 127.0.0.1 signed by it, as PEM files in `dir`: (ca, cert, key).
fn tls_files(dir: &std::path::Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SanType};
    std::fs::create_dir_all(dir).expect("temp dir");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key")).expect("CA");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().expect("ip")));
    let key = KeyPair::generate().expect("key");
    let certificate = params.signed_by(&key, &ca).expect("sign");
    let paths = (dir.join("ca.pem"), dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&paths.0, ca.pem()).expect("write");
    std::fs::write(&paths.1, certificate.pem()).expect("write");
    std::fs::write(&paths.2, key.serialize_pem()).expect("write");
    paths
}

#[test]
fn over_tls_fanout_delivers_exactly_and_the_storm_completes_handshakes() {
    let dir = std::env::temp_dir().join(format!("loadgen-tls-{}", std::process::id()));
    let (ca, cert, key) = tls_files(&dir);
    let broker =
        start_broker_with(&["--listener", "mqtts://127.0.0.1:0", "--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()]);
    let tls_port = broker.addrs[1].port();
    let with_tls = |args: &[&str]| {
        let mut all = vec!["--tls", "--tls-ca", ca.to_str().unwrap()];
        all.extend_from_slice(args);
        loadgen_at(tls_port, &all)
    };
    let (ok, report) = with_tls(&[
        "--scenario",
        "fanout",
        "--subscribers",
        "20",
        "--qos-pub",
        "1",
        "--qos-sub",
        "1",
        "--messages",
        "300",
        "--duration-s",
        "30",
        "--payload-bytes",
        "20000",
        "--cores",
        "2",
    ]);
    assert!(ok, "{report}");
    assert_exact(&report, 300 * 20);
    let (ok, report) = with_tls(&["--scenario", "conn-storm", "--connections", "100", "--hold-s", "0.2", "--cores", "2"]);
    assert!(ok, "{report}");
    assert_eq!(report["connections_ok"], 100);
    // Without trusting the broker's CA, nothing connects.
    let other = tls_files(&dir.join("other"));
    let untrusting = ["--tls", "--tls-ca", other.0.to_str().unwrap(), "--scenario", "conn-storm", "--connections", "3", "--cores", "1"];
    let (ok, report) = loadgen_at(tls_port, &untrusting);
    assert!(!ok && report["connections_ok"] == 0, "{report}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn over_websocket_and_websocket_over_tls_deliveries_are_exact() {
    let dir = std::env::temp_dir().join(format!("loadgen-ws-{}", std::process::id()));
    let (_ca, cert, key) = tls_files(&dir);
    let broker = start_broker_with(&[
        "--listener",
        "ws://127.0.0.1:0/mqtt",
        "--listener",
        "wss://127.0.0.1:0/custom",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let ws = format!("ws://{}/mqtt", broker.addrs[1]);
    let wss = format!("wss://{}/custom", broker.addrs[2]);
    // Payloads larger than one frame: packets span frames and frames carry several packets.
    let (ok, report) = loadgen_at(
        0,
        &[
            "--ws",
            &ws,
            "--scenario",
            "fanout",
            "--subscribers",
            "20",
            "--qos-pub",
            "1",
            "--qos-sub",
            "1",
            "--messages",
            "300",
            "--duration-s",
            "30",
            "--payload-bytes",
            "20000",
            "--cores",
            "2",
        ],
    );
    assert!(ok, "{report}");
    assert_exact(&report, 300 * 20);
    // wss with a certificate nobody vouches for: --tls-insecure accepts it.
    let (ok, report) = loadgen_at(
        0,
        &[
            "--ws",
            &wss,
            "--tls-insecure",
            "--mqtt",
            "5",
            "--scenario",
            "p2p",
            "--publishers",
            "10",
            "--qos-pub",
            "2",
            "--qos-sub",
            "2",
            "--messages",
            "200",
            "--duration-s",
            "30",
        ],
    );
    assert!(ok, "{report}");
    assert_exact(&report, 10 * 200);
    let (ok, report) = loadgen_at(0, &["--ws", &wss, "--tls-insecure", "--scenario", "conn-storm", "--connections", "50", "--cores", "2"]);
    assert!(ok, "{report}");
    assert_eq!(report["connections_ok"], 50);
    // A path the listener does not serve: the upgrade is refused, nothing connects.
    let wrong = format!("ws://{}/other", broker.addrs[1]);
    let (ok, report) = loadgen_at(0, &["--ws", &wrong, "--scenario", "conn-storm", "--connections", "3", "--cores", "1"]);
    assert!(!ok && report["connections_ok"] == 0, "{report}");
    let _ = std::fs::remove_dir_all(&dir);
}
