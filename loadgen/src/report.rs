//! Turning a finished run into numbers: totals, rates, percentiles, the verdict, and the
//! three outputs (a human table, one JSON object, the percentile distribution and plot).

use std::path::Path;

use hdrhistogram::Histogram;
use ringmq::protocol::QoS;

use crate::plan::Scenario;
use crate::run::{RunConfig, RunOutcome, new_histogram};
use crate::tracker::Counts;

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Percentiles {
    pub samples: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p99_9: u64,
    pub p99_99: u64,
    pub max: u64,
}

impl Percentiles {
    pub fn of(histogram: &Histogram<u64>) -> Option<Percentiles> {
        (!histogram.is_empty()).then(|| Percentiles {
            samples: histogram.len(),
            p50: histogram.value_at_quantile(0.5),
            p90: histogram.value_at_quantile(0.9),
            p99: histogram.value_at_quantile(0.99),
            p99_9: histogram.value_at_quantile(0.999),
            p99_99: histogram.value_at_quantile(0.9999),
            max: histogram.max(),
        })
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub scenario: Scenario,
    pub broker: String,
    pub mqtt: &'static str,
    pub qos_pub: u8,
    pub qos_sub: u8,
    pub payload_bytes: usize,
    pub publishers: usize,
    pub subscribers: usize,
    /// Subscribers that read nothing after subscribing (`--stalled-subscribers`).
    pub stalled_subscribers: usize,
    pub client_cores: usize,
    pub rate_per_s: Option<f64>,
    pub shared_group: Option<String>,
    pub published: u64,
    pub counts: Counts,
    pub publish_seconds: f64,
    pub deliveries_per_s: f64,
    pub latency_us: Option<Percentiles>,
    pub connections_ok: u64,
    pub connack_latency_us: Option<Percentiles>,
    pub connects_per_s: Option<f64>,
    /// Client CPU time over (wall time x client cores): near 1.0 means the client, not the
    /// broker, may be the bottleneck.
    pub client_cpu_fraction: f64,
    pub client_saturated: bool,
    pub errors: Vec<String>,
    /// QoS >= 1 loss, QoS 2 duplication, or errors: the run failed.
    pub failed: bool,
}

/// Everything a report is computed from, and the merged latency histogram for the files.
pub fn build(config: &RunConfig, outcome: &RunOutcome) -> (Report, Histogram<u64>) {
    let mut latency = new_histogram();
    let mut connack = new_histogram();
    let mut counts = Counts::default();
    let mut errors = Vec::new();
    let mut connections_ok = 0;
    let mut last_ns = 0;
    let mut group: Option<crate::tracker::Tracker> = None;
    for result in &outcome.results {
        for tracker in &result.group_trackers {
            group.get_or_insert_with(Default::default).merge(tracker);
        }
        latency.add(&result.latency_us).expect("same bounds");
        connack.add(&result.connack_us).expect("same bounds");
        counts += result.counts;
        errors.extend(result.errors.iter().cloned());
        connections_ok += result.connections_ok;
        last_ns = last_ns.max(result.last_delivery_ns);
    }
    if let Some(group) = group {
        // Every member hears the same publishers; the group as a whole must get each once.
        let heard = config.plan().publishers_heard_by(0);
        counts += group.counts(&heard, &outcome.published_per_publisher);
    }
    let seconds = |ns: u64| ns as f64 / 1e9;
    let publish_seconds = seconds(outcome.publish_end_ns.saturating_sub(outcome.start_ns));
    let delivery_seconds = seconds(last_ns.saturating_sub(outcome.start_ns)).max(publish_seconds);
    let effective_qos = config.qos_pub.min(config.qos_sub);
    let client_cpu_fraction = outcome.cpu.as_secs_f64() / (outcome.wall.as_secs_f64() * config.cpus.len() as f64);
    let storm = config.scenario == Scenario::ConnStorm;
    let failed = !errors.is_empty()
        || (effective_qos >= QoS::AtLeastOnce && counts.lost > 0)
        || (effective_qos == QoS::ExactlyOnce && counts.duplicated > 0)
        || (storm && connections_ok < config.connections as u64);
    let report = Report {
        scenario: config.scenario,
        broker: config.broker.to_string(),
        mqtt: if config.version.is_v5() { "5.0" } else { "3.1.1" },
        qos_pub: config.qos_pub as u8,
        qos_sub: config.qos_sub as u8,
        payload_bytes: config.payload_bytes,
        publishers: if storm { 0 } else { config.publishers },
        subscribers: if storm { 0 } else { config.subscribers },
        stalled_subscribers: if storm { 0 } else { config.stalled_subscribers },
        client_cores: config.cpus.len(),
        rate_per_s: config.rate_per_s,
        shared_group: config.shared_group.clone(),
        published: outcome.published,
        counts,
        publish_seconds,
        deliveries_per_s: if delivery_seconds > 0.0 { counts.unique as f64 / delivery_seconds } else { 0.0 },
        latency_us: Percentiles::of(&latency),
        connections_ok,
        connack_latency_us: Percentiles::of(&connack),
        connects_per_s: (storm && last_ns > 0).then(|| connections_ok as f64 / seconds(last_ns)),
        client_cpu_fraction,
        client_saturated: client_cpu_fraction > 0.9,
        errors,
        failed,
    };
    (report, if storm { connack } else { latency })
}

impl Report {
    pub fn human(&self) -> String {
        let mut out = String::new();
        let line = |out: &mut String, name: &str, value: String| out.push_str(&format!("  {name:<22} {value}\n"));
        out.push_str(&format!(
            "{:?} against {} (MQTT {}, QoS {}->{}, {} B payload, {} client cores)\n",
            self.scenario, self.broker, self.mqtt, self.qos_pub, self.qos_sub, self.payload_bytes, self.client_cores
        ));
        if self.scenario == Scenario::ConnStorm {
            line(&mut out, "connections", format!("{}", self.connections_ok));
            if let Some(rate) = self.connects_per_s {
                line(&mut out, "connects/s", format!("{rate:.0}"));
            }
            if let Some(p) = &self.connack_latency_us {
                line(&mut out, "CONNACK latency us", Self::percentiles(p));
            }
        } else {
            line(&mut out, "publishers/subscribers", format!("{}/{}", self.publishers, self.subscribers));
            if self.stalled_subscribers > 0 {
                line(&mut out, "stalled subscribers", format!("{} (not counted below)", self.stalled_subscribers));
            }
            line(&mut out, "published", format!("{} in {:.2} s", self.published, self.publish_seconds));
            let c = &self.counts;
            line(&mut out, "deliveries", format!("{} expected, {} delivered, {} unique", c.expected, c.delivered, c.unique));
            line(&mut out, "lost/dup/reordered", format!("{} / {} / {}", c.lost, c.duplicated, c.out_of_order));
            line(&mut out, "deliveries/s", format!("{:.0}", self.deliveries_per_s));
            if let Some(p) = &self.latency_us {
                line(&mut out, "latency us", Self::percentiles(p));
            }
        }
        line(
            &mut out,
            "client CPU",
            format!(
                "{:.0}%{}",
                self.client_cpu_fraction * 100.0,
                if self.client_saturated { "  SATURATED: the client may be the limit" } else { "" }
            ),
        );
        for error in &self.errors {
            out.push_str(&format!("  ERROR {error}\n"));
        }
        if self.failed {
            out.push_str("  FAILED: loss, duplication or errors where the QoS forbids them\n");
        }
        out
    }

    fn percentiles(p: &Percentiles) -> String {
        format!("p50 {} p90 {} p99 {} p99.9 {} p99.99 {} max {} (n={})", p.p50, p.p90, p.p99, p.p99_9, p.p99_99, p.max, p.samples)
    }
}

/// The percentile distribution, one line per step: value (µs), percentile, count so far.
pub fn write_distribution(histogram: &Histogram<u64>, path: &Path) -> std::io::Result<()> {
    let mut text = String::from("value_us percentile total_count\n");
    for step in histogram.iter_quantiles(1) {
        text.push_str(&format!("{} {:.6} {}\n", step.value_iterated_to(), step.quantile_iterated_to(), step.count_since_last_iteration()));
    }
    std::fs::write(path, text)
}

/// The latency percentile curve as SVG, x on the usual "nines" scale.
pub fn write_plot(histogram: &Histogram<u64>, title: &str, path: &Path) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let points: Vec<(f64, f64)> = histogram
        .iter_quantiles(1)
        .filter(|step| step.quantile_iterated_to() < 1.0)
        .map(|step| ((1.0 / (1.0 - step.quantile_iterated_to())).log10(), step.value_iterated_to() as f64))
        .collect();
    let max_x = points.iter().map(|p| p.0).fold(1.0, f64::max);
    let max_y = points.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_x, 0.0..max_y)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (us)")
        .x_label_formatter(&|x| format!("{:.4}%", 100.0 * (1.0 - 10f64.powf(-*x))))
        .draw()?;
    chart.draw_series(LineSeries::new(points, &BLUE))?;
    root.present()?;
    Ok(())
}
