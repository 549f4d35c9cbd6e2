//! The broker-wide `$SYS/broker/...` topics Mosquitto users and dashboards know, from the
//! shards' snapshots (pure: snapshots and times in, topic/value pairs out). Shard 0
//! publishes them every `--sys-interval-s`; each shard still publishes its own counters
//! under `$SYS/broker/shards/<n>/`.
//!
//! What the names mean here: `messages/*` and `publish/messages/*` both count PUBLISH
//! packets (received from clients, delivered to subscribers), `bytes/*` the MQTT bytes,
//! `load/*` the per-minute rates averaged over 1, 5 and 15 minutes (exponentially, as
//! Mosquitto does).

use std::time::{Duration, Instant};

use super::ShardSnapshot;

/// The averaging windows of the `load/` topics.
const LOAD_WINDOWS: [(&str, f64); 3] = [("1min", 60.0), ("5min", 300.0), ("15min", 900.0)];
/// The rates averaged (the `load/<name>/<window>` topics).
const LOAD_RATES: [&str; 6] = ["messages/received", "messages/sent", "publish/received", "publish/sent", "bytes/received", "bytes/sent"];

/// What the `$SYS/broker` report remembers between intervals.
pub struct BrokerStatus {
    started: Instant,
    version: &'static str,
    clients_maximum: u64,
    /// The totals the rates are taken from, and when.
    last: Option<([u64; LOAD_RATES.len()], Instant)>,
    /// Per rate, per window: the averaged per-minute rate.
    load: [[f64; LOAD_WINDOWS.len()]; LOAD_RATES.len()],
}

impl BrokerStatus {
    pub fn new(started: Instant) -> BrokerStatus {
        BrokerStatus {
            started,
            version: env!("CARGO_PKG_VERSION"),
            clients_maximum: 0,
            last: None,
            load: [[0.0; LOAD_WINDOWS.len()]; LOAD_RATES.len()],
        }
    }

    /// The topics (under `$SYS/broker/`) and their values, as of `now`.
    pub fn report(&mut self, snapshots: &[ShardSnapshot], now: Instant) -> Vec<(String, String)> {
        let sum = |field: fn(&ShardSnapshot) -> u64| snapshots.iter().map(field).sum::<u64>();
        let connected = sum(|s| s.gauges.connections);
        let sessions = sum(|s| s.gauges.sessions);
        self.clients_maximum = self.clients_maximum.max(connected);
        let received = sum(|s| s.counters.publishes_received);
        let sent = sum(|s| s.counters.messages_delivered);
        let bytes_received = sum(|s| s.counters.bytes_received);
        let bytes_sent = sum(|s| s.counters.bytes_sent);
        let dropped = sum(|s| {
            s.counters.qos0_dropped_slow_subscriber
                + s.counters.session_queue_drops
                + s.counters.oversize_drops
                + s.counters.qos0_dropped_memory
        });
        let totals = [received, sent, received, sent, bytes_received, bytes_sent];
        self.update_load(totals, now);
        let mut topics = vec![
            ("version".to_string(), format!("ringmq version {}", self.version)),
            ("uptime".to_string(), format!("{} seconds", now.saturating_duration_since(self.started).as_secs())),
            ("clients/connected".to_string(), connected.to_string()),
            ("clients/disconnected".to_string(), sessions.saturating_sub(connected).to_string()),
            ("clients/total".to_string(), sessions.to_string()),
            ("clients/maximum".to_string(), self.clients_maximum.to_string()),
            ("messages/received".to_string(), received.to_string()),
            ("messages/sent".to_string(), sent.to_string()),
            ("publish/messages/received".to_string(), received.to_string()),
            ("publish/messages/sent".to_string(), sent.to_string()),
            ("publish/messages/dropped".to_string(), dropped.to_string()),
            ("bytes/received".to_string(), bytes_received.to_string()),
            ("bytes/sent".to_string(), bytes_sent.to_string()),
            ("subscriptions/count".to_string(), sum(|s| s.gauges.subscriptions).to_string()),
            // Every shard holds the whole store: one replica's count.
            ("retained messages/count".to_string(), snapshots.first().map_or(0, |s| s.gauges.retained_messages).to_string()),
        ];
        for (rate, averages) in LOAD_RATES.iter().zip(&self.load) {
            for ((window, _), average) in LOAD_WINDOWS.iter().zip(averages) {
                topics.push((format!("load/{rate}/{window}"), format!("{average:.2}")));
            }
        }
        topics
    }

    fn update_load(&mut self, totals: [u64; LOAD_RATES.len()], now: Instant) {
        if let Some((previous, at)) = self.last {
            let elapsed = now.saturating_duration_since(at).max(Duration::from_millis(1)).as_secs_f64();
            for ((total, before), averages) in totals.iter().zip(previous).zip(&mut self.load) {
                let per_minute = total.saturating_sub(before) as f64 / elapsed * 60.0;
                for ((_, window_s), average) in LOAD_WINDOWS.iter().zip(averages.iter_mut()) {
                    let keep = (-elapsed / window_s).exp();
                    *average = *average * keep + per_minute * (1.0 - keep);
                }
            }
        }
        self.last = Some((totals, now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::{Counters, Gauges};

    fn snapshot(received: u64, connections: u64, sessions: u64) -> ShardSnapshot {
        ShardSnapshot {
            counters: Counters { publishes_received: received, messages_delivered: 2 * received, ..Counters::default() },
            gauges: Gauges { connections, sessions, subscriptions: 4, retained_messages: 9, ..Gauges::default() },
        }
    }

    fn value<'a>(report: &'a [(String, String)], topic: &str) -> &'a str {
        &report.iter().find(|(name, _)| name == topic).unwrap_or_else(|| panic!("no {topic}")).1
    }

    #[test]
    fn shards_are_summed_and_loads_follow_the_rate() {
        let start = Instant::now();
        let mut status = BrokerStatus::new(start);
        let report = status.report(&[snapshot(0, 2, 3), snapshot(0, 1, 1)], start);
        assert_eq!(value(&report, "clients/connected"), "3");
        assert_eq!(value(&report, "clients/disconnected"), "1");
        assert_eq!(value(&report, "clients/total"), "4");
        assert_eq!(value(&report, "subscriptions/count"), "8");
        assert_eq!(value(&report, "retained messages/count"), "9", "one replica, not the sum");
        assert_eq!(value(&report, "load/messages/received/1min"), "0.00");
        // 60 messages a second on each shard for 15 minutes: the 1-minute average is close
        // to 7,200 a minute, the 15-minute one well on its way.
        let mut report = Vec::new();
        for step in 1..=90u64 {
            let at = start + Duration::from_secs(10 * step);
            report = status.report(&[snapshot(600 * step, 1, 1), snapshot(600 * step, 0, 0)], at);
        }
        let one: f64 = value(&report, "load/messages/received/1min").parse().unwrap();
        let fifteen: f64 = value(&report, "load/messages/received/15min").parse().unwrap();
        assert!((one - 7200.0).abs() < 1.0, "{one}");
        assert!(fifteen > 4000.0 && fifteen < 7200.0, "{fifteen}");
        assert_eq!(value(&report, "messages/sent"), (2 * 2 * 600 * 90).to_string());
        assert_eq!(value(&report, "clients/maximum"), "3", "the most seen at once");
        assert_eq!(value(&report, "uptime"), "900 seconds");
    }
}
