//! The Prometheus endpoint (`--metrics-listen`). Owns the snapshot board each shard
//! copies its counters and gauges to once a second (a lock per shard per second, never on
//! the hot path: the counters themselves stay plain fields of the shard), the exposition
//! (prometheus-client's text format, `ringmq_*` with a `shard` label, plus process
//! metrics), and the small HTTP server on its own thread (`server.rs`).

mod process;
pub mod server;
pub mod sys;

use std::sync::{Arc, Mutex};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::shard::{Counters, Gauges};

/// How often each shard copies its figures to the board.
pub const SNAPSHOT_PERIOD: std::time::Duration = std::time::Duration::from_secs(1);

/// One shard's figures as of its last snapshot.
#[derive(Debug, Clone, Default)]
pub struct ShardSnapshot {
    pub counters: Counters,
    pub gauges: Gauges,
}

/// Where the shards leave their snapshots and the scrape reads them.
pub struct SnapshotBoard {
    shards: Vec<Mutex<ShardSnapshot>>,
}

impl SnapshotBoard {
    pub fn new(shard_count: usize) -> Arc<SnapshotBoard> {
        Arc::new(SnapshotBoard { shards: (0..shard_count).map(|_| Mutex::new(ShardSnapshot::default())).collect() })
    }

    pub fn store(&self, shard: usize, snapshot: ShardSnapshot) {
        if let Some(slot) = self.shards.get(shard) {
            match slot.lock() {
                Ok(mut slot) => *slot = snapshot,
                Err(poisoned) => *poisoned.into_inner() = snapshot,
            }
        }
    }

    /// Every shard's latest snapshot, in shard order.
    pub fn read(&self) -> Vec<ShardSnapshot> {
        self.shards.iter().map(|slot| slot.lock().map_or_else(|poisoned| poisoned.into_inner().clone(), |slot| slot.clone())).collect()
    }
}

type ShardLabel = Vec<(String, String)>;

fn shard_label(shard: usize) -> ShardLabel {
    vec![("shard".to_string(), shard.to_string())]
}

/// The exposition: every counter and gauge per shard, then the process's figures.
pub fn render(board: &SnapshotBoard) -> String {
    let snapshots = board.read();
    let mut registry = Registry::with_prefix("ringmq");
    let Some(first) = snapshots.first() else { return String::new() };
    for (index, (name, _)) in first.counters.fields().iter().enumerate() {
        let family = Family::<ShardLabel, Counter>::default();
        for (shard, snapshot) in snapshots.iter().enumerate() {
            family.get_or_create(&shard_label(shard)).inc_by(snapshot.counters.fields()[index].1);
        }
        registry.register(*name, counter_help(name), family);
    }
    for (index, (name, help, _)) in first.gauges.fields().iter().enumerate() {
        let family = Family::<ShardLabel, Gauge>::default();
        for (shard, snapshot) in snapshots.iter().enumerate() {
            family.get_or_create(&shard_label(shard)).set(snapshot.gauges.fields()[index].2 as i64);
        }
        registry.register(*name, *help, family);
    }
    process::register(&mut registry);
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut text, &registry);
    text
}

/// The counter's meaning, from its name (the fields are documented in `shard::counters`).
fn counter_help(name: &str) -> String {
    format!("ringmq counter {name} (see README, Flags and Operations), per shard")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_has_every_shard_counter_and_gauge() {
        let board = SnapshotBoard::new(2);
        let counters = Counters { publishes_received: 7, ..Counters::default() };
        board.store(1, ShardSnapshot { counters, gauges: Gauges { connections: 3, ..Gauges::default() } });
        let text = render(&board);
        assert!(text.contains("ringmq_publishes_received_total{shard=\"1\"} 7"), "{text}");
        assert!(text.contains("ringmq_publishes_received_total{shard=\"0\"} 0"), "{text}");
        assert!(text.contains("ringmq_connections{shard=\"1\"} 3"), "{text}");
        assert!(text.contains("# TYPE ringmq_messages_delivered counter"), "{text}");
        assert!(text.contains("ringmq_process_resident_memory_bytes"), "{text}");
        assert!(text.trim_end().ends_with("# EOF"), "{text}");
    }

    /// Every metric the Grafana dashboard in tuning/ queries is one the endpoint serves.
    #[test]
    fn the_dashboard_queries_only_metrics_that_exist() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tuning/grafana-dashboard.json");
        let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).expect("the dashboard")).expect("JSON");
        let exposition = render(&SnapshotBoard::new(1));
        let served: std::collections::HashSet<&str> =
            exposition.lines().filter(|line| !line.starts_with('#')).filter_map(|line| line.split(['{', ' ']).next()).collect();
        let mut queried = 0;
        for panel in dashboard["panels"].as_array().expect("panels") {
            for target in panel["targets"].as_array().expect("targets") {
                let expr = target["expr"].as_str().expect("expr");
                for (at, _) in expr.match_indices("ringmq_") {
                    let name: String = expr[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                    assert!(served.contains(name.as_str()), "the dashboard queries {name}, which /metrics does not serve");
                    queried += 1;
                }
            }
        }
        assert!(queried > 20, "{queried}");
    }
}
