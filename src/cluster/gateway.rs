//! The gateway thread: the node's one connection to NATS, on a current-thread tokio
//! runtime of its own (async-nats needs tokio; the shards never touch it).
//!
//! Out: each message the shards publish goes to the subject of its topic (`subject.rs`),
//! retained ones to the retained bucket every node watches (`retained.rs`), stamped with
//! this process's origin and a sequence number (`frame.rs`). The connection is `no_echo`,
//! so a node never hears its own messages back.
//!
//! In: the node subscribes once per distinct filter its shards hold (reference-counted
//! over the shards; a `#` filter takes two subjects), so NATS's interest graph is the
//! route table and a node receives only what its clients want. A message two filters
//! match arrives twice and is kept once (`dedup.rs`), then given to one shard, chosen by
//! its topic so that each topic stays in order, which routes it to the node's subscribers.
//!
//! Shared subscriptions: each node with members of a group `$share/G/F` queue-subscribes
//! to F's subjects in a NATS queue group named after G, on a second connection that hears
//! its own node's messages too. NATS gives each message to one node of the group, and
//! that node to one of its members, so each message reaches one member cluster-wide (the
//! shards do not choose members themselves in a cluster).
//!
//! Cross-node delivery is what core NATS gives: at most once between nodes. A node that
//! cannot reach NATS keeps serving its own clients and reconnects in the background.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, LocalSet};

use super::dedup::{Dedup, Verdict};
use super::frame::{Stamp, decode_frame, encode};
use super::port::{FromCluster, ToGateway};
use super::subject::{filter_subjects, topic_subject};
use crate::session::Message;
use crate::topics::validate_topic_name;

/// How often the gateway looks at the stop flag and forgets silent origins.
const TICK: Duration = Duration::from_millis(100);
/// NATS refuses a protocol line (`PUB <subject> <size>`) past its `max_control_line`,
/// 4 KiB by default; subjects longer than this are not sent or subscribed.
pub const SUBJECT_BYTES_MAX: usize = 4_000;
/// At a stop, how long the gateway waits for NATS at each step (hand-over, flush).
const STOP_GRACE: Duration = Duration::from_secs(1);
/// Messages a subscription may hold in async-nats before NATS calls this node slow.
const SUBSCRIPTION_CAPACITY: usize = 65_536;

#[derive(Debug, Clone)]
pub struct GatewaySettings {
    /// `--cluster` URLs: the NATS servers to connect to (any one will do).
    pub servers: Vec<String>,
    /// `--node-id`: this node's name in the cluster and on its NATS connection.
    pub node_id: String,
    /// `--cluster-name`: the first subject token, so clusters can share NATS servers.
    pub cluster_name: String,
    /// `--cluster-replicas`: copies JetStream keeps of the cluster's buckets.
    pub replicas: usize,
    /// `--cluster-durable` and its bounds (`message_stream.rs`), or `None`.
    pub durable: Option<super::message_stream::DurableSettings>,
    /// `--cluster-sweep-interval-s`: how often one node sweeps the records that nodes no
    /// longer running left (`sweep.rs`).
    pub sweep_interval: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("--cluster {url}: {reason}")]
    Address { url: String, reason: String },
    #[error("--cluster-name {0:?}: use letters, digits, `-` and `_` only (it is a NATS subject token)")]
    ClusterName(String),
    #[error("cannot start the cluster gateway: {0}")]
    Start(String),
}

/// What the gateway did, logged when it stops and when something was refused.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct GatewayCounters {
    published: u64,
    publish_failures: u64,
    pub(super) received: u64,
    duplicates: u64,
    /// Copies older than the dedup window: dropped rather than risk a second delivery.
    too_old: u64,
    /// Frames from NATS that are not ringmq messages of this format.
    pub(super) frames_refused: u64,
    /// Topics or filters whose subject (or retained key) is past what NATS takes.
    pub(super) subjects_too_long: u64,
    subscribe_failures: u64,
    /// Retained changes not put in the bucket: JetStream refused them, or too many waited.
    pub(super) retained_write_failures: u64,
    /// Will changes not made in the wills bucket (`wills.rs`).
    pub(super) will_write_failures: u64,
    /// Wills of dead nodes this node sent.
    pub(super) dead_node_wills: u64,
    /// Session record writes that failed (each tried again, `records.rs`).
    pub(super) record_write_failures: u64,
    /// Session records past what one NATS message takes (deleted instead).
    pub(super) records_too_large: u64,
    /// Records of processes no longer running that this node swept (`sweep.rs`).
    pub(super) records_swept: u64,
    /// QoS 1/2 messages the durable stream acknowledged (`message_stream.rs`).
    pub(super) durable_stored: u64,
    /// QoS 1/2 messages not stored in it: not sent (cut off from NATS, too many waiting for
    /// acknowledgements) or refused.
    pub(super) durable_store_failures: u64,
}

/// Checks the settings; `start` refuses what this refuses.
pub fn check(settings: &GatewaySettings) -> Result<(), GatewayError> {
    let name = &settings.cluster_name;
    if name.is_empty() || !name.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_') {
        return Err(GatewayError::ClusterName(name.clone()));
    }
    for url in &settings.servers {
        url.parse::<async_nats::ServerAddr>().map_err(|error| GatewayError::Address { url: url.clone(), reason: error.to_string() })?;
    }
    Ok(())
}

/// Starts the gateway thread. It stops when `stop` is set or every shard has let go of
/// its queue, after flushing what it holds.
pub fn start(
    settings: GatewaySettings,
    inbox: mpsc::Receiver<Vec<ToGateway>>,
    to_shards: Vec<mpsc::Sender<FromCluster>>,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>, GatewayError> {
    check(&settings)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("ringmq-cluster")
        .build()
        .map_err(|error| GatewayError::Start(error.to_string()))?;
    std::thread::Builder::new()
        .name("ringmq-cluster".into())
        .spawn(move || LocalSet::new().block_on(&runtime, run(settings, inbox, to_shards, stop)))
        .map_err(|error| GatewayError::Start(error.to_string()))
}

struct Gateway {
    settings: GatewaySettings,
    client: async_nats::Client,
    /// With echo, for queue subscriptions: a group's member on the publishing node counts.
    shared_client: async_nats::Client,
    /// The node's shared-subscription groups and the tasks reading their queue subscriptions.
    groups: HashMap<(Bytes, Bytes), Vec<JoinHandle<()>>>,
    /// Retained changes for the bucket task (`retained.rs`).
    retained: mpsc::Sender<(Stamp, Arc<Message>)>,
    /// Client-id ownership (`owners.rs`).
    owners: Rc<RefCell<super::owners::Owners>>,
    /// Will changes for the wills task (`wills.rs`), and which connection set each will.
    wills: mpsc::Sender<super::wills::WillChange>,
    will_registry: super::wills::WillRegistry,
    /// Session record changes for the records task, and its wake-up.
    records: Rc<RefCell<super::records::Records>>,
    records_wake: Rc<tokio::sync::Notify>,
    /// `--cluster-durable`: where QoS 1/2 messages are stored.
    durable: Option<super::message_stream::Durable>,
    stamp: Stamp,
    /// Distinct filters the shards hold: how many shards, and the tasks reading their subjects.
    filters: HashMap<Bytes, FilterRoute>,
    state: Rc<RefCell<Inbound>>,
}

struct FilterRoute {
    shards: u32,
    readers: Vec<JoinHandle<()>>,
}

/// What the subscription readers share.
pub(super) struct Inbound {
    dedup: Dedup,
    pub(super) to_shards: Vec<mpsc::Sender<FromCluster>>,
    pub(super) counters: GatewayCounters,
}

async fn run(
    settings: GatewaySettings,
    mut inbox: mpsc::Receiver<Vec<ToGateway>>,
    to_shards: Vec<mpsc::Sender<FromCluster>>,
    stop: Arc<AtomicBool>,
) {
    let node_id = settings.node_id.clone();
    let connect = |name: String, echo: bool| {
        let node_id = node_id.clone();
        let options = async_nats::ConnectOptions::new()
            .name(name)
            .retry_on_initial_connect()
            .max_reconnects(None)
            .subscription_capacity(SUBSCRIPTION_CAPACITY)
            .event_callback(move |event| {
                let node_id = node_id.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => tracing::info!(node_id, "cluster: connected to NATS"),
                        async_nats::Event::Disconnected => tracing::warn!(node_id, "cluster: lost NATS, reconnecting"),
                        // Each failed reconnection attempt is one: the Disconnected above said it.
                        async_nats::Event::ClientError(error) => tracing::debug!(node_id, %error, "cluster: NATS client error"),
                        other => tracing::warn!(node_id, event = %other, "cluster: NATS event"),
                    }
                }
            });
        let options = if echo { options } else { options.no_echo() };
        options.connect(settings.servers.as_slice())
    };
    let connected =
        futures_util::future::try_join(connect(format!("ringmq {node_id}"), false), connect(format!("ringmq {node_id} shared"), true))
            .await;
    let (client, shared_client) = match connected {
        Ok(clients) => clients,
        Err(error) => {
            tracing::error!(%error, "cluster: cannot use the NATS servers; this node serves its own clients only");
            drain_until_stopped(&mut inbox, &to_shards, &stop).await;
            return;
        }
    };
    let state = Rc::new(RefCell::new(Inbound { dedup: Dedup::default(), to_shards, counters: GatewayCounters::default() }));
    let stamp = Stamp { origin: rand::random(), sequence: 0 };
    // Every node keeps every retained message, whatever its clients subscribe to.
    let (retained, changes) = mpsc::channel(super::retained::PENDING_MAX);
    let bucket = super::retained::RetainedBucket {
        client: client.clone(),
        bucket: format!("{}_retained", settings.cluster_name),
        replicas: settings.replicas,
        origin: stamp.origin,
    };
    let retained_task = tokio::task::spawn_local(super::retained::run(bucket, changes, state.clone()));
    let owners = Rc::new(RefCell::new(super::owners::Owners {
        store: None,
        records_store: None,
        wills_open: false,
        durable_stream: None,
        durable: settings.durable.is_some(),
        replays: Rc::new(tokio::sync::Semaphore::new(super::message_stream::REPLAYS_AT_ONCE_MAX)),
        client: client.clone(),
        cluster_name: settings.cluster_name.clone(),
        origin: stamp.origin,
        node_id: settings.node_id.clone(),
        claiming: HashMap::new(),
        held: HashMap::new(),
        to_shards: state.borrow().to_shards.clone(),
        unverified: 0,
        refused: 0,
        warned_at: None,
    }));
    let mut owner_tasks = vec![tokio::task::spawn_local({
        let (owners, client, bucket, replicas) =
            (owners.clone(), client.clone(), format!("{}_clients", settings.cluster_name), settings.replicas);
        async move {
            let store = super::bucket::open(&client, &bucket, replicas, "ringmq client-id owners", None).await;
            owners.borrow_mut().store = Some(store);
        }
    })];
    match client.subscribe(super::owners::evict_subject(&settings.cluster_name, stamp.origin)).await {
        Ok(requests) => owner_tasks.push(tokio::task::spawn_local(super::owners::listen_for_evictions(requests, owners.clone()))),
        Err(error) => tracing::error!(%error, "cluster: cannot listen for evictions; another node taking a client id will not close ours"),
    }
    let (wills, will_changes) = mpsc::channel(super::wills::CHANGES_MAX);
    let (wills_stop, wills_stopping) = tokio::sync::oneshot::channel();
    let wills_task = tokio::task::spawn_local(super::wills::run(
        super::wills::WillsTask {
            client: client.clone(),
            cluster_name: settings.cluster_name.clone(),
            replicas: settings.replicas,
            origin: stamp.origin,
            node_id: settings.node_id.clone(),
            owners: owners.clone(),
            state: state.clone(),
        },
        will_changes,
        wills_stopping,
    ));
    let (records, records_wake) = (Rc::new(RefCell::new(super::records::Records::default())), Rc::new(tokio::sync::Notify::new()));
    let records_bucket = super::records::bucket_name(&settings.cluster_name);
    let records_task = tokio::task::spawn_local(super::records::run(super::records::RecordsTask {
        client: client.clone(),
        bucket: records_bucket.clone(),
        replicas: settings.replicas,
        owners: owners.clone(),
        records: records.clone(),
        wake: records_wake.clone(),
        state: state.clone(),
    }));
    owner_tasks.push(tokio::task::spawn_local(super::sweep::run(super::sweep::SweepTask {
        client: client.clone(),
        cluster_name: settings.cluster_name.clone(),
        origin: stamp.origin,
        interval: settings.sweep_interval,
        owners: owners.clone(),
        state: state.clone(),
    })));
    let durable = settings.durable.map(|durable_settings| {
        let (durable, acks) = super::message_stream::Durable::new(&client, &settings.cluster_name);
        owner_tasks.push(tokio::task::spawn_local(super::message_stream::run_acks(acks, state.clone())));
        let (owners, client, cluster_name, replicas) = (owners.clone(), client.clone(), settings.cluster_name.clone(), settings.replicas);
        owner_tasks.push(tokio::task::spawn_local(async move {
            // After the buckets a CONNECT or a will waits for (JetStream makes one at a time).
            while owners.borrow().records_store.is_none() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let stream = super::message_stream::open(&client, &cluster_name, replicas, durable_settings).await;
            owners.borrow_mut().durable_stream = Some(stream);
        }));
        durable
    });
    let mut gateway = Gateway {
        settings,
        client,
        shared_client,
        groups: HashMap::new(),
        retained,
        owners,
        wills,
        will_registry: Default::default(),
        records,
        records_wake,
        durable,
        stamp,
        filters: HashMap::new(),
        state,
    };

    let mut tick = tokio::time::interval(TICK);
    let mut last_logged = GatewayCounters::default();
    loop {
        tokio::select! {
            batch = inbox.recv() => match batch {
                // A publish waits while NATS is unreachable and the client's buffer is
                // full: a stop request still ends it.
                Some(batch) => tokio::select! {
                    _ = gateway.handle(batch) => {}
                    _ = stopped(&stop) => break,
                },
                None => break,
            },
            _ = tick.tick() => {
                if stop.load(Ordering::Relaxed) {
                    // Take what the shards still hand over, then stop.
                    let drain = async {
                        while let Ok(batch) = inbox.try_recv() {
                            gateway.handle(batch).await;
                        }
                    };
                    let _ = tokio::time::timeout(STOP_GRACE, drain).await;
                    break;
                }
                let mut state = gateway.state.borrow_mut();
                state.dedup.forget_idle(Instant::now());
                let counters = state.counters;
                if counters.refused() > last_logged.refused() {
                    tracing::warn!(?counters, "cluster: messages refused or lost between nodes");
                }
                last_logged = counters;
            }
        }
    }
    // What the retained task holds is written, and the wills task marks this node as
    // stopped (nobody is to send its wills) and removes them, together, if JetStream
    // answers soon; without NATS neither can.
    drop(std::mem::replace(&mut gateway.retained, mpsc::channel(1).0));
    let _ = wills_stop.send(());
    records_task.abort();
    let _ = records_task.await;
    let grace = if gateway.client.connection_state() == async_nats::connection::State::Connected { STOP_GRACE } else { Duration::ZERO };
    let (mut retained_task, mut wills_task) = (retained_task, wills_task);
    // This node's sessions end with it: nobody is to resume them from their records.
    let purge_records = super::bucket::purge_origin(&gateway.client, &records_bucket, stamp.origin);
    let _ = tokio::time::timeout(grace, futures_util::future::join3(&mut retained_task, &mut wills_task, purge_records)).await;
    for task in [retained_task, wills_task] {
        // One that finished may have been awaited to its end above: not again.
        if !task.is_finished() {
            task.abort();
            let _ = task.await;
        }
    }
    // A flush waits for the server: without one, not for long.
    let _ = tokio::time::timeout(STOP_GRACE, gateway.client.flush()).await;
    let _ = tokio::time::timeout(STOP_GRACE, gateway.shared_client.flush()).await;
    let counters = gateway.state.borrow().counters;
    tracing::info!(?counters, "cluster gateway stopped");
    for task in owner_tasks {
        task.abort();
        let _ = task.await;
    }
    // Readers end here, inside the runtime: dropping a subscription spawns its UNSUB.
    let readers = gateway.filters.into_values().flat_map(|route| route.readers).chain(gateway.groups.into_values().flatten());
    for reader in readers {
        reader.abort();
        let _ = reader.await;
    }
}

/// Resolves once the broker is asked to stop.
async fn stopped(stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(TICK).await;
    }
}

/// Without NATS: keep the shards' queue empty until the broker stops, answering claims
/// as a node without the owner bucket does (clean sessions in, persistent ones refused).
async fn drain_until_stopped(inbox: &mut mpsc::Receiver<Vec<ToGateway>>, to_shards: &[mpsc::Sender<FromCluster>], stop: &AtomicBool) {
    let mut tick = tokio::time::interval(TICK);
    while !stop.load(Ordering::Relaxed) {
        tokio::select! {
            batch = inbox.recv() => match batch {
                None => return,
                Some(batch) => for item in batch {
                    if let ToGateway::Claim { client_id, shard, persistent, .. } = item {
                        let answer = FromCluster::ClaimAnswer { client_id, granted: !persistent, verified: false, handed: None };
                        let _ = to_shards[shard].send(answer).await;
                    }
                },
            },
            _ = tick.tick() => {}
        }
    }
}

impl GatewayCounters {
    fn refused(&self) -> u64 {
        self.publish_failures
            + self.too_old
            + self.frames_refused
            + self.subjects_too_long
            + self.subscribe_failures
            + self.retained_write_failures
            + self.will_write_failures
            + self.record_write_failures
            + self.records_too_large
            + self.durable_store_failures
    }
}

impl Gateway {
    async fn handle(&mut self, mut batch: Vec<ToGateway>) {
        // Claims first: a CONNECT waits on each, and a publish may wait for NATS.
        batch.retain(|item| match item {
            ToGateway::Claim { client_id, shard, persistent, resume } => {
                let owners = self.owners.clone();
                tokio::task::spawn_local(super::owners::claim(owners, client_id.clone(), *shard, *persistent, *resume));
                false
            }
            ToGateway::Release { client_id } => {
                tokio::task::spawn_local(super::owners::release(self.owners.clone(), client_id.clone()));
                false
            }
            ToGateway::SessionRecord { client_id, version, record } => {
                if let Some(key) = super::records::record_key(self.stamp.origin, client_id) {
                    self.records.borrow_mut().change(key, *version, record.clone(), Instant::now());
                    self.records_wake.notify_one();
                }
                false
            }
            ToGateway::Will { client_id, conn, will } => {
                if let Some(change) = self.will_registry.change(client_id.clone(), *conn, will.clone(), self.stamp)
                    && self.wills.try_send(change).is_err()
                {
                    self.state.borrow_mut().counters.will_write_failures += 1;
                }
                false
            }
            _ => true,
        });
        for item in batch {
            match item {
                ToGateway::Publish(message) => self.publish(message).await,
                ToGateway::Interest { filter, subscribed: true } => self.join(filter).await,
                ToGateway::Interest { filter, subscribed: false } => self.leave(&filter),
                ToGateway::Claim { .. } | ToGateway::Release { .. } | ToGateway::Will { .. } | ToGateway::SessionRecord { .. } => {}
                ToGateway::SharedInterest { group, filter, subscribed: true } => self.join_group(group, filter).await,
                ToGateway::SharedInterest { group, filter, subscribed: false } => {
                    // Dropping a reader's subscriber unsubscribes it.
                    for reader in self.groups.remove(&(group, filter)).into_iter().flatten() {
                        reader.abort();
                    }
                }
            }
        }
    }

    /// To the other nodes, then (`--cluster-durable`, QoS 1/2) to the stream: the live
    /// copy does not wait behind the stored one.
    async fn publish(&mut self, message: Arc<Message>) {
        self.publish_to_nodes(&message).await;
        if let Some(durable) = &self.durable
            && message.qos != crate::protocol::QoS::AtMostOnce
        {
            // Stored once, from the node it was published on.
            let stored =
                self.client.connection_state() == async_nats::connection::State::Connected && durable.store(&message, self.stamp).await;
            if !stored {
                self.state.borrow_mut().counters.durable_store_failures += 1;
            }
        }
    }

    async fn publish_to_nodes(&mut self, message: &Arc<Message>) {
        if message.retain {
            self.stamp.sequence += 1;
            if self.retained.try_send((self.stamp, message.clone())).is_err() {
                self.state.borrow_mut().counters.retained_write_failures += 1;
            }
            return;
        }
        let subject = topic_subject(&self.settings.cluster_name, &message.topic);
        let mut state = self.state.borrow_mut();
        // Cut off from NATS: dropped rather than waited for (cross-node delivery is at most
        // once), so the gateway keeps answering claims meanwhile.
        if self.client.connection_state() != async_nats::connection::State::Connected {
            state.counters.publish_failures += 1;
            return;
        }
        if subject.len() > SUBJECT_BYTES_MAX {
            state.counters.subjects_too_long += 1;
            return;
        }
        self.stamp.sequence += 1;
        let frame = encode(message, self.stamp, Instant::now());
        drop(state);
        let sent = self.client.publish(subject, frame).await;
        let mut state = self.state.borrow_mut();
        match sent {
            Ok(()) => state.counters.published += 1,
            Err(error) => {
                state.counters.publish_failures += 1;
                tracing::debug!(%error, "cluster: publish failed");
            }
        }
    }

    async fn join(&mut self, filter: Bytes) {
        if let Some(route) = self.filters.get_mut(&filter) {
            route.shards += 1;
            return;
        }
        let mut readers = Vec::new();
        for subject in filter_subjects(&self.settings.cluster_name, &filter) {
            if subject.len() > SUBJECT_BYTES_MAX {
                self.state.borrow_mut().counters.subjects_too_long += 1;
                tracing::warn!(filter = %String::from_utf8_lossy(&filter), "cluster: filter too long for a NATS subject; other nodes' messages will not reach it");
                continue;
            }
            readers.extend(self.subscribe(subject).await);
        }
        self.filters.insert(filter, FilterRoute { shards: 1, readers });
    }

    fn leave(&mut self, filter: &Bytes) {
        let Some(route) = self.filters.get_mut(filter) else { return };
        route.shards -= 1;
        if route.shards == 0 {
            // Dropping a reader's subscriber unsubscribes it.
            if let Some(route) = self.filters.remove(filter) {
                route.readers.iter().for_each(JoinHandle::abort);
            }
        }
    }

    /// Queue-subscribes to `filter`'s subjects in the group's NATS queue group.
    async fn join_group(&mut self, group: Bytes, filter: Bytes) {
        if self.groups.contains_key(&(group.clone(), filter.clone())) {
            return;
        }
        let queue = queue_name(&group);
        let mut readers = Vec::new();
        for subject in filter_subjects(&self.settings.cluster_name, &filter) {
            if subject.len() + queue.len() > SUBJECT_BYTES_MAX {
                self.state.borrow_mut().counters.subjects_too_long += 1;
                tracing::warn!(group = %String::from_utf8_lossy(&group), filter = %String::from_utf8_lossy(&filter), "cluster: shared subscription too long for NATS; other nodes' messages will not reach it");
                continue;
            }
            match self.shared_client.queue_subscribe(subject.clone(), queue.clone()).await {
                Ok(subscriber) => {
                    readers.push(tokio::task::spawn_local(read_shared(subscriber, group.clone(), filter.clone(), self.state.clone())))
                }
                Err(error) => {
                    self.state.borrow_mut().counters.subscribe_failures += 1;
                    tracing::warn!(%error, subject, "cluster: queue subscribe failed");
                }
            }
        }
        self.groups.insert((group, filter), readers);
    }

    /// Subscribes to `subject` and spawns the task that hands what arrives to the shards.
    async fn subscribe(&mut self, subject: String) -> Option<JoinHandle<()>> {
        match self.client.subscribe(subject.clone()).await {
            Ok(subscriber) => Some(tokio::task::spawn_local(read(subscriber, self.state.clone()))),
            Err(error) => {
                self.state.borrow_mut().counters.subscribe_failures += 1;
                tracing::warn!(%error, subject, "cluster: subscribe failed");
                None
            }
        }
    }
}

/// One subscription's reader: first copies go to the shard that owns their topic.
async fn read(mut subscriber: async_nats::Subscriber, state: Rc<RefCell<Inbound>>) {
    while let Some(delivered) = subscriber.next().await {
        let now = Instant::now();
        let (target, message) = {
            let mut state = state.borrow_mut();
            state.counters.received += 1;
            let (stamp, message) = match decode_frame(delivered.payload, now) {
                Ok(decoded) if validate_topic_name(&decoded.1.topic).is_ok() => decoded,
                _ => {
                    state.counters.frames_refused += 1;
                    continue;
                }
            };
            match state.dedup.check(stamp, now) {
                Verdict::First => {}
                Verdict::Duplicate => {
                    state.counters.duplicates += 1;
                    continue;
                }
                Verdict::TooOld => {
                    state.counters.too_old += 1;
                    continue;
                }
            }
            (state.entry_for(&message.topic), message)
        };
        if target.send(FromCluster::Publish(Arc::new(message))).await.is_err() {
            return;
        }
    }
}

/// One group's queue subscription: each message NATS chose this node for goes to a
/// member here. No dedup: the same message also arrives for plain subscribers.
async fn read_shared(mut subscriber: async_nats::Subscriber, group: Bytes, filter: Bytes, state: Rc<RefCell<Inbound>>) {
    while let Some(delivered) = subscriber.next().await {
        let target = {
            let mut state = state.borrow_mut();
            state.counters.received += 1;
            match decode_frame(delivered.payload, Instant::now()) {
                Ok((_, message)) if validate_topic_name(&message.topic).is_ok() => Some((state.entry_for(&message.topic), message)),
                _ => {
                    state.counters.frames_refused += 1;
                    None
                }
            }
        };
        let Some((target, message)) = target else { continue };
        let shared = FromCluster::Shared { group: group.clone(), filter: filter.clone(), message: Arc::new(message) };
        if target.send(shared).await.is_err() {
            return;
        }
    }
}

/// A NATS queue group name for an MQTT share name (which may hold any character but
/// `/`, `+` and `#`): `g` and its bytes in hex.
fn queue_name(group: &[u8]) -> String {
    let mut name = String::with_capacity(1 + 2 * group.len());
    name.push('g');
    for byte in group {
        name.push_str(&format!("{byte:02x}"));
    }
    name
}

impl Inbound {
    /// The queue of the shard `topic`'s messages enter by.
    pub(super) fn entry_for(&self, topic: &[u8]) -> mpsc::Sender<FromCluster> {
        self.to_shards[entry_shard(topic, self.to_shards.len())].clone()
    }
}

/// The shard a topic's messages from other nodes enter by: the same one every time.
pub fn entry_shard(topic: &[u8], shard_count: usize) -> usize {
    (BuildHasherDefault::<DefaultHasher>::default().hash_one(topic) % shard_count.max(1) as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(name: &str, servers: &[&str]) -> GatewaySettings {
        GatewaySettings {
            servers: servers.iter().map(|s| s.to_string()).collect(),
            node_id: "n1".into(),
            cluster_name: name.into(),
            replicas: 3,
            durable: None,
            sweep_interval: Duration::from_secs(600),
        }
    }

    #[test]
    fn settings_are_checked_before_anything_starts() {
        assert!(check(&settings("ringmq", &["nats://127.0.0.1:4222", "127.0.0.2:4223"])).is_ok());
        assert!(matches!(check(&settings("a.b", &[])), Err(GatewayError::ClusterName(_))));
        assert!(matches!(check(&settings("", &[])), Err(GatewayError::ClusterName(_))));
        assert!(matches!(check(&settings("ringmq", &["nats://host:notaport"])), Err(GatewayError::Address { .. })));
    }

    #[test]
    fn a_topic_always_enters_by_the_same_shard() {
        for topic in [&b"a/b"[..], b"", b"sensors/42/temperature"] {
            let first = entry_shard(topic, 7);
            assert!(first < 7);
            assert_eq!(entry_shard(topic, 7), first);
        }
        assert_eq!(entry_shard(b"x", 1), 0);
    }
}
