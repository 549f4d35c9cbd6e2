//! Running a scenario: connections spread round-robin over pinned glommio executors,
//! subscribers first, publishers once every subscriber is ready, then a drain until every
//! subscriber has what was published to it (or the drain time runs out).

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::future::or;
use glommio::timer::sleep;
use glommio::{LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;
use ringmq::protocol::{Ack, Packet, PacketId, ProtocolVersion, Publish, QoS, Subscribe, SubscriptionOptions};

use crate::conn::{Connection, Signal};
use crate::plan::{Plan, Scenario};
use crate::schedule::Schedule;
use crate::stamp::Stamp;
use crate::tracker::{Counts, Tracker};

/// Latencies above this (in µs) are clamped; a minute is far past any sane run.
const LATENCY_MAX_US: u64 = 60_000_000;
/// QoS 0 publishers wait while this many bytes are unwritten, to bound client memory.
const QOS0_OUTBOX_MAX_BYTES: usize = 1 << 20;

/// What one run does; built from the command line.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub broker: SocketAddr,
    /// Where subscribers connect, in turn (`--subscribe-to`: a cluster's nodes); empty:
    /// `broker`, as the publishers.
    pub subscriber_brokers: Vec<SocketAddr>,
    /// TLS and/or WebSocket under MQTT (`--tls`, `--ws`).
    pub transport: crate::wire::ClientTransport,
    pub scenario: Scenario,
    pub publishers: usize,
    pub subscribers: usize,
    /// Extra subscribers that stop reading once subscribed (see `stalled_subscriber`).
    pub stalled_subscribers: usize,
    pub connections: usize,
    pub qos_pub: QoS,
    pub qos_sub: QoS,
    pub version: ProtocolVersion,
    pub payload_bytes: usize,
    pub topic_prefix: String,
    pub wildcard: bool,
    /// Subscribers share one `$share/GROUP/...` subscription.
    pub shared_group: Option<String>,
    pub rate_per_s: Option<f64>,
    pub inflight: usize,
    pub duration: Duration,
    pub messages_per_publisher: Option<u64>,
    pub warmup: Duration,
    pub drain: Duration,
    pub hold: Duration,
    pub persistent: bool,
    pub cpus: Vec<usize>,
    pub progress: bool,
}

impl RunConfig {
    pub fn plan(&self) -> Plan {
        Plan::new(self.scenario, self.publishers, self.subscribers, &self.topic_prefix, self.wildcard, self.shared_group.as_deref())
    }
}

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 3).expect("valid histogram bounds")
}

/// Shared by every executor: phase changes and progress, all atomics.
struct Shared {
    origin: Instant,
    subscribers_ready: AtomicUsize,
    start_ns: AtomicU64,
    published: Vec<AtomicU64>,
    publishers_done: AtomicUsize,
    publish_end_ns: AtomicU64,
    sent: AtomicU64,
    delivered: AtomicU64,
    /// Fresh deliveries to members of the shared group, for knowing when they are done.
    group_delivered: AtomicU64,
    abort: AtomicBool,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }
}

/// What one executor measured.
pub struct ExecutorResult {
    pub latency_us: Histogram<u64>,
    pub connack_us: Histogram<u64>,
    pub counts: Counts,
    pub connections_ok: u64,
    pub errors: Vec<String>,
    pub last_delivery_ns: u64,
    /// Trackers of shared-group members, merged into one account by the report.
    pub group_trackers: Vec<Tracker>,
}

impl ExecutorResult {
    fn new() -> ExecutorResult {
        ExecutorResult {
            latency_us: new_histogram(),
            connack_us: new_histogram(),
            counts: Counts::default(),
            connections_ok: 0,
            errors: Vec::new(),
            last_delivery_ns: 0,
            group_trackers: Vec::new(),
        }
    }
}

/// Everything the report needs from a finished run.
pub struct RunOutcome {
    pub results: Vec<ExecutorResult>,
    pub published: u64,
    pub published_per_publisher: Vec<u64>,
    pub start_ns: u64,
    pub publish_end_ns: u64,
    pub wall: Duration,
    pub cpu: Duration,
}

fn client_id(role: &str, index: usize) -> String {
    format!("loadgen-{}-{role}-{index}", std::process::id())
}

fn cpu_time() -> Duration {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct we pass.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    Duration::from_micros(micros(usage.ru_utime) + micros(usage.ru_stime))
}

pub fn run(config: RunConfig) -> anyhow::Result<RunOutcome> {
    let plan = config.plan();
    let shared = Arc::new(Shared {
        origin: Instant::now(),
        subscribers_ready: AtomicUsize::new(0),
        start_ns: AtomicU64::new(0),
        published: (0..plan.publishers.len()).map(|_| AtomicU64::new(0)).collect(),
        publishers_done: AtomicUsize::new(0),
        publish_end_ns: AtomicU64::new(0),
        sent: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
        group_delivered: AtomicU64::new(0),
        abort: AtomicBool::new(false),
    });
    let config = Arc::new(config);
    let plan = Arc::new(plan);
    let cpu_before = cpu_time();
    let wall_start = Instant::now();
    let cores = config.cpus.len();
    let mut handles = Vec::with_capacity(cores);
    for (index, &cpu) in config.cpus.iter().enumerate() {
        let (config, plan, shared) = (config.clone(), plan.clone(), shared.clone());
        let handle = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&format!("loadgen-{index}"))
            .io_memory(256 * 1024)
            .spawn(move || async move { executor_main(index, cores, config, plan, shared).await })
            .map_err(|error| anyhow::anyhow!("starting executor on CPU {cpu}: {error}"))?;
        handles.push(handle);
    }
    let progress_done = Arc::new(AtomicBool::new(false));
    let progress = config.progress.then(|| {
        let (shared, done) = (shared.clone(), progress_done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_secs(1));
                eprint!(
                    "\r{:>6.1}s  sent {:>12}  delivered {:>12}",
                    shared.origin.elapsed().as_secs_f64(),
                    shared.sent.load(Ordering::Relaxed),
                    shared.delivered.load(Ordering::Relaxed)
                );
            }
            eprintln!();
        })
    });
    let mut results = Vec::with_capacity(cores);
    for handle in handles {
        results.push(handle.join().map_err(|error| anyhow::anyhow!("executor failed: {error}"))?);
    }
    progress_done.store(true, Ordering::Relaxed);
    if let Some(progress) = progress {
        let _ = progress.join();
    }
    Ok(RunOutcome {
        results,
        published: shared.published.iter().map(|p| p.load(Ordering::Relaxed)).sum(),
        published_per_publisher: shared.published.iter().map(|p| p.load(Ordering::Relaxed)).collect(),
        start_ns: shared.start_ns.load(Ordering::Relaxed),
        publish_end_ns: shared.publish_end_ns.load(Ordering::Relaxed),
        wall: wall_start.elapsed(),
        cpu: cpu_time().saturating_sub(cpu_before),
    })
}

async fn executor_main(index: usize, cores: usize, config: Arc<RunConfig>, plan: Arc<Plan>, shared: Arc<Shared>) -> ExecutorResult {
    let result = Rc::new(RefCell::new(ExecutorResult::new()));
    let mut tasks = Vec::new();
    if config.scenario == Scenario::ConnStorm {
        for connection in (index..config.connections).step_by(cores) {
            tasks.push(glommio::spawn_local(storm_connection(connection, config.clone(), shared.clone(), result.clone())));
        }
    } else {
        for stalled in (index..config.stalled_subscribers).step_by(cores) {
            tasks.push(glommio::spawn_local(stalled_subscriber(stalled, config.clone(), plan.clone(), shared.clone(), result.clone())));
        }
        // Subscribers, then publishers, dealt round-robin over executors.
        let subscribers = plan.subscribers.len();
        for slot in (index..subscribers + plan.publishers.len()).step_by(cores) {
            let (config, plan, shared, result) = (config.clone(), plan.clone(), shared.clone(), result.clone());
            tasks.push(if slot < subscribers {
                glommio::spawn_local(subscriber(slot, config, plan, shared, result))
            } else {
                glommio::spawn_local(publisher(slot - subscribers, config, plan, shared, result))
            });
        }
    }
    for task in tasks {
        task.await;
    }
    Rc::try_unwrap(result).ok().expect("all tasks finished").into_inner()
}

/// A subscriber that subscribes like the first ordinary one, then reads nothing more: its
/// socket fills, the broker's queue for it fills, and the broker's flow control decides
/// what becomes of it (pause the publisher, then disconnect it after
/// `--slow-subscriber-timeout-s`). Held until publishing and the drain are over.
async fn stalled_subscriber(
    index: usize,
    config: Arc<RunConfig>,
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    result: Rc<RefCell<ExecutorResult>>,
) {
    let connection = match subscribed(&config, index, &client_id("stalled", index), true, &plan.subscribers[0]).await {
        Ok(connection) => connection,
        Err(error) => return fail(&result, &shared, format!("stalled subscriber {index}: {error}")),
    };
    shared.subscribers_ready.fetch_add(1, Ordering::SeqCst);
    while shared.publishers_done.load(Ordering::SeqCst) < plan.publishers.len() && !shared.abort.load(Ordering::Relaxed) {
        sleep(Duration::from_millis(50)).await;
    }
    sleep(config.drain).await;
    drop(connection);
}

/// A connection subscribed to `filter` at the run's subscriber QoS, its SUBACK read.
/// Subscriber `index` connects to its turn of `subscriber_brokers`, or to `broker`.
async fn subscribed(config: &RunConfig, index: usize, client_id: &str, clean: bool, filter: &str) -> Result<Connection, String> {
    let broker = match config.subscriber_brokers.len() {
        0 => config.broker,
        brokers => config.subscriber_brokers[index % brokers],
    };
    let mut connection =
        Connection::open(broker, &config.transport, client_id, clean, config.version).await.map_err(|error| error.to_string())?;
    connection.send(&Packet::Subscribe(Subscribe {
        packet_id: PacketId::new(1).expect("non-zero"),
        properties: Default::default(),
        filters: vec![(Bytes::copy_from_slice(filter.as_bytes()), SubscriptionOptions::with_qos(config.qos_sub))],
    }));
    match connection.reader.next().await {
        Ok(Packet::SubAck(suback)) if suback.codes.iter().all(|code| !code.is_error()) => Ok(connection),
        Ok(other) => Err(format!("expected SUBACK, got {}", other.name())),
        Err(error) => Err(error.to_string()),
    }
}

fn fail(result: &RefCell<ExecutorResult>, shared: &Shared, what: String) {
    result.borrow_mut().errors.push(what);
    shared.abort.store(true, Ordering::Relaxed);
}

async fn subscriber(index: usize, config: Arc<RunConfig>, plan: Arc<Plan>, shared: Arc<Shared>, result: Rc<RefCell<ExecutorResult>>) {
    let heard = plan.publishers_heard_by(index);
    let in_group = config.shared_group.is_some();
    let mut connection = match subscribed(&config, index, &client_id("sub", index), !config.persistent, &plan.subscribers[index]).await {
        Ok(connection) => connection,
        Err(error) => return fail(&result, &shared, format!("subscriber {index}: {error}")),
    };
    shared.subscribers_ready.fetch_add(1, Ordering::SeqCst);

    let warmup_ns = config.warmup.as_nanos() as u64;
    let mut tracker = Tracker::default();
    let mut awaiting_pubrel: HashSet<PacketId> = HashSet::new();
    let mut latency = new_histogram();
    let mut delivered_unflushed = 0u64;
    let mut last_delivery_ns = 0;
    'receiving: loop {
        // Everything already buffered first; a timer only when we must wait for bytes.
        loop {
            let packet = match connection.reader.buffered() {
                Ok(Some(packet)) => packet,
                Ok(None) => break,
                Err(error) => {
                    fail(&result, &shared, format!("subscriber {index}: {error}"));
                    break 'receiving;
                }
            };
            match packet {
                Packet::Publish(publish) => {
                    let fresh = match (publish.qos, publish.packet_id) {
                        (QoS::AtLeastOnce, Some(id)) => {
                            connection.send(&Packet::PubAck(Ack::new(id)));
                            true
                        }
                        (QoS::ExactlyOnce, Some(id)) => {
                            connection.send(&Packet::PubRec(Ack::new(id)));
                            // A resend before PUBREL is the same message: a QoS 2 receiver
                            // keeps the id until PUBREL and does not deliver it twice.
                            awaiting_pubrel.insert(id)
                        }
                        _ => true,
                    };
                    if fresh && let Some(stamp) = Stamp::read(&publish.payload) {
                        let now = shared.now_ns();
                        tracker.record(stamp.publisher, stamp.sequence);
                        let start = shared.start_ns.load(Ordering::Relaxed);
                        if stamp.sent_ns >= start + warmup_ns {
                            latency.saturating_record((now.saturating_sub(stamp.sent_ns) / 1000).max(1));
                        }
                        last_delivery_ns = now;
                        if in_group {
                            shared.group_delivered.fetch_add(1, Ordering::Relaxed);
                        }
                        delivered_unflushed += 1;
                        if delivered_unflushed == 1024 {
                            shared.delivered.fetch_add(delivered_unflushed, Ordering::Relaxed);
                            delivered_unflushed = 0;
                        }
                    }
                }
                Packet::PubRel(ack) => {
                    awaiting_pubrel.remove(&ack.packet_id);
                    connection.send(&Packet::PubComp(Ack::new(ack.packet_id)));
                }
                _ => {}
            }
        }
        if shared.abort.load(Ordering::Relaxed) {
            break;
        }
        if shared.publishers_done.load(Ordering::SeqCst) == plan.publishers.len() {
            let expected: u64 = heard.iter().map(|&p| shared.published[p as usize].load(Ordering::SeqCst)).sum();
            let drain_over = shared.now_ns() > shared.publish_end_ns.load(Ordering::SeqCst) + config.drain.as_nanos() as u64;
            let received = if in_group { shared.group_delivered.load(Ordering::Relaxed) } else { tracker.unique_from(&heard) };
            if received >= expected || drain_over {
                break;
            }
        }
        let read = or(async { Some(connection.reader.read_more().await) }, async {
            sleep(Duration::from_millis(20)).await;
            None
        })
        .await;
        if let Some(Err(error)) = read {
            fail(&result, &shared, format!("subscriber {index}: {error}"));
            break;
        }
    }
    shared.delivered.fetch_add(delivered_unflushed, Ordering::Relaxed);
    connection.close().await;
    let published: Vec<u64> = shared.published.iter().map(|p| p.load(Ordering::SeqCst)).collect();
    let mut result = result.borrow_mut();
    if in_group {
        result.group_trackers.push(tracker);
    } else {
        result.counts += tracker.counts(&heard, &published);
    }
    result.latency_us.add(&latency).expect("same bounds");
    result.last_delivery_ns = result.last_delivery_ns.max(last_delivery_ns);
}

async fn publisher(index: usize, config: Arc<RunConfig>, plan: Arc<Plan>, shared: Arc<Shared>, result: Rc<RefCell<ExecutorResult>>) {
    let publisher_count = plan.publishers.len();
    let finish = |shared: &Shared, sent: u64| {
        shared.published[index].store(sent, Ordering::SeqCst);
        if shared.publishers_done.fetch_add(1, Ordering::SeqCst) + 1 == publisher_count {
            shared.publish_end_ns.store(shared.now_ns(), Ordering::SeqCst);
        }
    };
    let connection = match Connection::open(config.broker, &config.transport, &client_id("pub", index), true, config.version).await {
        Ok(connection) => connection,
        Err(error) => {
            fail(&result, &shared, format!("publisher {index}: {error}"));
            return finish(&shared, 0);
        }
    };
    let ready_needed = plan.subscribers.len() + config.stalled_subscribers;
    while shared.subscribers_ready.load(Ordering::SeqCst) < ready_needed && !shared.abort.load(Ordering::Relaxed) {
        sleep(Duration::from_millis(1)).await;
    }
    // The first publisher to get here fixes a common start a little ahead.
    let proposed = shared.now_ns() + 10_000_000;
    let start_ns = match shared.start_ns.compare_exchange(0, proposed, Ordering::SeqCst, Ordering::SeqCst) {
        Ok(_) => proposed,
        Err(existing) => existing,
    };
    while shared.now_ns() < start_ns {
        sleep(Duration::from_nanos(start_ns - shared.now_ns())).await;
    }

    let Connection { mut reader, outbox, version, .. } = connection;
    let in_flight = Rc::new(Cell::new(0usize));
    let acknowledged = Rc::new(Signal::default());
    let reader_done = Rc::new(Cell::new(false));
    let ack_task = {
        let (in_flight, acknowledged, outbox, reader_done) = (in_flight.clone(), acknowledged.clone(), outbox.clone(), reader_done.clone());
        glommio::spawn_local(async move {
            let error = loop {
                match reader.next().await {
                    Ok(Packet::PubAck(_)) | Ok(Packet::PubComp(_)) => {
                        in_flight.set(in_flight.get().saturating_sub(1));
                        acknowledged.notify();
                    }
                    Ok(Packet::PubRec(ack)) => outbox.push(&Packet::PubRel(Ack::new(ack.packet_id)), version),
                    Ok(_) => {}
                    Err(error) => break error,
                }
            };
            reader_done.set(true);
            acknowledged.notify();
            error
        })
    };

    let payload_size = config.payload_bytes;
    let topic = Bytes::from(plan.publishers[index].clone());
    let end_ns = start_ns + config.duration.as_nanos() as u64;
    let limit = config.messages_per_publisher.unwrap_or(u64::MAX);
    let schedule = config.rate_per_s.map(|rate| Schedule::new(start_ns, rate, publisher_count, index));
    let window = config.inflight.max(1);
    let mut sequence = 0u64;
    let mut payload = Stamp { publisher: index as u32, sequence: 0, sent_ns: 0 }.payload(payload_size);
    'publishing: while sequence < limit && shared.now_ns() < end_ns && !shared.abort.load(Ordering::Relaxed) {
        let due = match &schedule {
            Some(schedule) => schedule.due_count(shared.now_ns()).min(limit),
            None => sequence + 1,
        };
        while sequence < due {
            // A broker that stops reading must not hold the run past its duration.
            let time_left = Duration::from_nanos(end_ns.saturating_sub(shared.now_ns()));
            let out_of_time = async {
                sleep(time_left).await;
                false
            };
            let room = if config.qos_pub == QoS::AtMostOnce {
                or(
                    async {
                        outbox.drained.wait_until(|| outbox.len() < QOS0_OUTBOX_MAX_BYTES).await;
                        true
                    },
                    out_of_time,
                )
                .await
            } else {
                or(
                    async {
                        acknowledged.wait_until(|| in_flight.get() < window || reader_done.get()).await;
                        !reader_done.get()
                    },
                    out_of_time,
                )
                .await
            };
            if !room {
                break 'publishing;
            }
            let sent_ns = match &schedule {
                Some(schedule) => schedule.due_ns(sequence),
                None => shared.now_ns(),
            };
            Stamp { publisher: index as u32, sequence, sent_ns }.write(&mut payload);
            let packet_id = (config.qos_pub != QoS::AtMostOnce).then(|| PacketId::new((sequence % 65_535) as u16 + 1).expect("non-zero"));
            outbox.push(
                &Packet::Publish(Publish {
                    dup: false,
                    qos: config.qos_pub,
                    retain: false,
                    topic: topic.clone(),
                    packet_id,
                    properties: Default::default(),
                    payload: Bytes::copy_from_slice(&payload),
                }),
                version,
            );
            if config.qos_pub != QoS::AtMostOnce {
                in_flight.set(in_flight.get() + 1);
            }
            sequence += 1;
            if sequence.is_multiple_of(256) {
                shared.sent.fetch_add(256, Ordering::Relaxed);
                glommio::yield_if_needed().await;
            }
        }
        if let Some(schedule) = &schedule {
            let next_due = schedule.due_ns(sequence);
            let now = shared.now_ns();
            if next_due > now {
                sleep(Duration::from_nanos(next_due - now)).await;
            }
        }
    }
    shared.sent.fetch_add(sequence % 256, Ordering::Relaxed);
    // Wait for the broker to acknowledge what is in flight before counting it published.
    let deadline = Instant::now() + config.drain;
    while in_flight.get() > 0 && !reader_done.get() && Instant::now() < deadline {
        or(acknowledged.wait_until(|| in_flight.get() == 0 || reader_done.get()), sleep(Duration::from_millis(50))).await;
    }
    if in_flight.get() > 0 {
        fail(&result, &shared, format!("publisher {index}: {} messages never acknowledged", in_flight.get()));
    }
    finish(&shared, sequence);
    outbox.push(&Packet::Disconnect(ringmq::protocol::Disconnect::new(ringmq::protocol::ReasonCode::SUCCESS)), version);
    outbox.close();
    // The broker closes after the DISCONNECT, unless it never reads that far.
    or(
        async {
            let _ = ack_task.await;
        },
        sleep(config.drain),
    )
    .await;
}

async fn storm_connection(index: usize, config: Arc<RunConfig>, shared: Arc<Shared>, result: Rc<RefCell<ExecutorResult>>) {
    let started = Instant::now();
    match Connection::open(config.broker, &config.transport, &client_id("storm", index), !config.persistent, config.version).await {
        Ok(connection) => {
            let micros = started.elapsed().as_micros() as u64;
            {
                let mut result = result.borrow_mut();
                result.connack_us.saturating_record(micros.max(1));
                result.connections_ok += 1;
                result.last_delivery_ns = result.last_delivery_ns.max(shared.now_ns());
            }
            sleep(config.hold).await;
            connection.close().await;
        }
        Err(error) => result.borrow_mut().errors.push(format!("connection {index}: {error}")),
    }
}
