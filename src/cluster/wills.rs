//! Node death: the wills of a node that dies are sent by a survivor.
//!
//! Heartbeats: every node puts its origin (hex) in the bucket `<cluster-name>_nodes` every
//! `HEARTBEAT_INTERVAL` and watches the bucket. A node silent for `NODE_DEAD_AFTER` is
//! dead, as judged by a node whose own heartbeats have been landing for that long, with no
//! gap over `OWN_GAP_MAX` (one back from a NATS outage first waits to hear the others
//! again).
//!
//! Wills: while a client's connection is open on a node, its will is in the bucket
//! `<cluster-name>_wills` under `<origin>.<client id>` (written on CONNECT, deleted when
//! the connection ends, whatever became of the will; never per message).
//!
//! When a node is found dead, the survivors race to create `reaper.<origin>` in the nodes
//! bucket. The one that creates it sends each of the dead node's wills after its Will
//! Delay (counted from then), unless by then the client-id bucket names another owner (the
//! client is back on another node), and then purges them. A node that stops cleanly
//! creates its own mark first: as on a lone node, a stopped node's clients' wills are not
//! sent.
//!
//! Pure here: keys, values and the liveness bookkeeping. The IO (`run`) talks to JetStream.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};

use super::bucket::{origin_key, origin_prefix};
use super::frame::{FrameError, Stamp, decode_frame, encode};
use super::gateway::Inbound;
use super::owners::{Owners, owner_origin};
use super::port::FromCluster;
use crate::session::Message;
use crate::shard::ConnId;

/// How often a node says it is alive.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// Silence after which a node is taken for dead: a few missed heartbeats, so that a NATS
/// server failing over (its clients reconnect within a second or two) is not a death.
pub const NODE_DEAD_AFTER: Duration = Duration::from_secs(5);
/// Entries of the nodes bucket vanish after this: heartbeats of nodes long gone, and
/// reaper marks (which outlive the last heartbeat they answer).
const NODES_MAX_AGE: Duration = Duration::from_secs(60);
/// Will changes waiting for the bucket (while JetStream is not ready yet).
pub const CHANGES_MAX: usize = 65_536;
/// Each bucket step's limit.
const STEP_TIMEOUT: Duration = Duration::from_secs(1);
/// Listing a dead node's wills may take longer: there can be many.
const LIST_TIMEOUT: Duration = Duration::from_secs(10);
/// Listings tried before a reaper gives up (and leaves the wills in the bucket).
const LIST_ATTEMPTS: usize = 3;

/// The key a will is kept under: the node's origin, then the client id's key.
pub fn will_key(origin: u64, client_id: &[u8]) -> Option<String> {
    origin_key(origin, client_id)
}

/// A node's heartbeat key (and the value of a reaper mark it makes): its origin in hex.
pub(super) fn heartbeat_key(origin: u64) -> String {
    format!("{origin:016x}")
}

/// The origin a heartbeat key names (exactly 16 hex digits), if it is one.
pub fn heartbeat_origin(key: &str) -> Option<u64> {
    (key.len() == 16).then(|| u64::from_str_radix(key, 16).ok()).flatten().filter(|_| key.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A will as stored: its delay in seconds, then its frame.
pub fn encode_will(delay_s: u32, message: &Message, stamp: Stamp, now: Instant) -> Bytes {
    let frame = encode(message, stamp, now);
    let mut value = BytesMut::with_capacity(4 + frame.len());
    value.put_u32_le(delay_s);
    value.extend_from_slice(&frame);
    value.freeze()
}

pub fn decode_will(value: Bytes, now: Instant) -> Result<(u32, Message), FrameError> {
    let delay = value.first_chunk::<4>().map(|bytes| u32::from_le_bytes(*bytes)).ok_or(FrameError::Short)?;
    let (_, message) = decode_frame(value.slice(4..), now)?;
    Ok((delay, message))
}

/// What the bucket writer does with one client's will.
#[derive(Debug, PartialEq, Eq)]
pub enum WillChange {
    Set { key: String, value: Bytes },
    Clear { key: String },
}

/// The connection whose will each client id has in the bucket. Shards report a
/// connection's end and the next connection's will independently, so they can arrive in
/// either order; an end applies only to the connection that set the will.
#[derive(Default)]
pub struct WillRegistry {
    set_by: HashMap<Bytes, ConnId>,
}

impl WillRegistry {
    pub fn change(&mut self, client_id: Bytes, conn: ConnId, will: Option<(Arc<Message>, u32)>, stamp: Stamp) -> Option<WillChange> {
        let key = will_key(stamp.origin, &client_id)?;
        match will {
            Some((message, delay_s)) => {
                self.set_by.insert(client_id, conn);
                Some(WillChange::Set { key, value: encode_will(delay_s, &message, stamp, Instant::now()) })
            }
            None if self.set_by.get(&client_id) == Some(&conn) => {
                self.set_by.remove(&client_id);
                Some(WillChange::Clear { key })
            }
            None => None,
        }
    }
}

/// The longest this node's own heartbeats may go without landing before it stops judging
/// others (and counts its health from the next one again): a lone slow write to a busy
/// JetStream is not an outage, while three seconds without one may be.
const OWN_GAP_MAX: Duration = Duration::from_secs(3);

/// Which nodes are alive, from their heartbeats and this node's own.
#[derive(Debug, Default)]
pub struct Liveness {
    last_heard: HashMap<u64, Instant>,
    /// Since when this node's own heartbeats have landed with no gap over `OWN_GAP_MAX`.
    healthy_since: Option<Instant>,
    /// When this node's own heartbeat last landed.
    last_landed: Option<Instant>,
}

impl Liveness {
    pub fn heard(&mut self, origin: u64, now: Instant) {
        self.last_heard.insert(origin, now);
    }

    /// The node's heartbeat key is gone (it stopped cleanly, or was reaped).
    pub fn forget(&mut self, origin: u64) {
        self.last_heard.remove(&origin);
    }

    pub fn own_heartbeat(&mut self, landed: bool, now: Instant) {
        if !landed {
            return;
        }
        if self.last_landed.is_none_or(|last| now.duration_since(last) > OWN_GAP_MAX) {
            self.healthy_since = Some(now);
        }
        self.last_landed = Some(now);
    }

    /// The nodes silent for `NODE_DEAD_AFTER`, each told once; none unless this node's
    /// own heartbeats have been landing, with no gap over `OWN_GAP_MAX`, for that long.
    pub fn take_dead(&mut self, now: Instant) -> Vec<u64> {
        let (Some(healthy_since), Some(last_landed)) = (self.healthy_since, self.last_landed) else { return Vec::new() };
        if now.duration_since(healthy_since) < NODE_DEAD_AFTER || now.duration_since(last_landed) > OWN_GAP_MAX {
            return Vec::new();
        }
        let dead: Vec<u64> =
            self.last_heard.iter().filter(|(_, heard)| now.duration_since(**heard) >= NODE_DEAD_AFTER).map(|(origin, _)| *origin).collect();
        for origin in &dead {
            self.last_heard.remove(origin);
        }
        dead
    }
}

/// What the wills task needs from the gateway.
pub(super) struct WillsTask {
    pub client: async_nats::Client,
    pub cluster_name: String,
    pub replicas: usize,
    pub origin: u64,
    pub node_id: String,
    pub owners: Rc<RefCell<Owners>>,
    pub state: Rc<RefCell<Inbound>>,
}

/// Opens both buckets, then beats, watches and reaps (on tasks of their own) while it
/// writes what `changes` brings. Once `stopping` fires (the node stops), marks this node
/// as reaped and purges its wills, whatever changes still wait.
pub(super) async fn run(task: WillsTask, mut changes: mpsc::Receiver<WillChange>, mut stopping: oneshot::Receiver<()>) {
    let (nodes_bucket, wills_bucket) = (format!("{}_nodes", task.cluster_name), format!("{}_wills", task.cluster_name));
    // After the client-id bucket, which every CONNECT waits for: JetStream makes buckets
    // one after another, each for a leader election, on a cluster just started.
    while task.owners.borrow().store.is_none() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (nodes, wills) = futures_util::future::join(
        super::bucket::open(&task.client, &nodes_bucket, task.replicas, "ringmq node heartbeats", Some(NODES_MAX_AGE)),
        super::bucket::open(&task.client, &wills_bucket, task.replicas, "ringmq wills of connected clients", None),
    )
    .await;
    // The first heartbeat lands before the first will: a will in the bucket is always of
    // a node the others have heard of, so one killed a moment after it joined is still
    // found silent (and reaped), not unknown for good.
    let own_key = heartbeat_key(task.origin);
    loop {
        let beat = tokio::time::timeout(STEP_TIMEOUT, nodes.put(&own_key, Bytes::from(task.node_id.clone())));
        tokio::select! {
            _ = &mut stopping => return,
            landed = beat => if landed.is_ok_and(|put| put.is_ok()) { break },
        }
        tokio::time::sleep(HEARTBEAT_INTERVAL).await;
    }
    // The session records' bucket is made now, not alongside: JetStream makes one at a
    // time, and every will and CONNECT waited for these first.
    task.owners.borrow_mut().wills_open = true;
    let task = Rc::new(task);
    let liveness = Rc::new(RefCell::new(Liveness::default()));
    let helpers = [
        tokio::task::spawn_local(watch_heartbeats(nodes.clone(), task.origin, liveness.clone())),
        tokio::task::spawn_local(beat_and_reap(task.clone(), nodes.clone(), wills.clone(), wills_bucket.clone(), liveness)),
    ];
    loop {
        let change = tokio::select! {
            _ = &mut stopping => break,
            change = changes.recv() => change,
        };
        let Some(change) = change else { break };
        let write = async {
            match change {
                WillChange::Set { key, value } => wills.put(key, value).await.is_ok(),
                WillChange::Clear { key } => wills.delete(key).await.is_ok(),
            }
        };
        let written = tokio::select! {
            _ = &mut stopping => break,
            written = tokio::time::timeout(STEP_TIMEOUT, write) => written.unwrap_or(false),
        };
        if !written {
            task.state.borrow_mut().counters.will_write_failures += 1;
        }
    }
    for helper in helpers {
        helper.abort();
        let _ = helper.await;
    }
    // Stopping: nobody is to send this node's wills, and they are removed (the gateway
    // gives this a second).
    let own = task.origin;
    let _ = futures_util::future::join3(
        nodes.create(reaper_key(own), Bytes::from(heartbeat_key(own))),
        super::bucket::purge_origin(&task.client, &wills_bucket, own),
        nodes.delete(heartbeat_key(own)),
    )
    .await;
}

pub(super) fn reaper_key(origin: u64) -> String {
    format!("reaper.{}", heartbeat_key(origin))
}

async fn watch_heartbeats(nodes: async_nats::jetstream::kv::Store, own: u64, liveness: Rc<RefCell<Liveness>>) {
    let mut changes = std::pin::pin!(super::bucket::watch_forever(nodes));
    while let Some(entry) = changes.next().await {
        let Some(origin) = heartbeat_origin(&entry.key).filter(|origin| *origin != own) else { continue };
        match entry.operation {
            async_nats::jetstream::kv::Operation::Put => liveness.borrow_mut().heard(origin, Instant::now()),
            _ => liveness.borrow_mut().forget(origin),
        }
    }
}

async fn beat_and_reap(
    task: Rc<WillsTask>,
    nodes: async_nats::jetstream::kv::Store,
    wills: async_nats::jetstream::kv::Store,
    wills_bucket: String,
    liveness: Rc<RefCell<Liveness>>,
) {
    let own_key = heartbeat_key(task.origin);
    let mut beat = tokio::time::interval(HEARTBEAT_INTERVAL);
    loop {
        beat.tick().await;
        let landed =
            tokio::time::timeout(STEP_TIMEOUT, nodes.put(&own_key, Bytes::from(task.node_id.clone()))).await.is_ok_and(|put| put.is_ok());
        let now = Instant::now();
        let dead = {
            let mut liveness = liveness.borrow_mut();
            liveness.own_heartbeat(landed, now);
            liveness.take_dead(now)
        };
        for origin in dead {
            tokio::task::spawn_local(reap(task.clone(), nodes.clone(), wills.clone(), wills_bucket.clone(), liveness.clone(), origin));
        }
    }
}

/// What a second look at a node judged dead says.
enum Confirmed {
    Dead,
    /// Its heartbeat moved: this node's watch missed its beats (a watch being rebuilt
    /// after a NATS outage delivers nothing for a while).
    Alive,
    /// Its heartbeat is gone: it stopped cleanly (or is long gone; either way not ours).
    Gone,
    Unknown,
}

/// Reads `origin`'s heartbeat twice, two heartbeats apart.
async fn confirm_dead(nodes: &async_nats::jetstream::kv::Store, origin: u64) -> Confirmed {
    let key = heartbeat_key(origin);
    let read = || async {
        match tokio::time::timeout(STEP_TIMEOUT, nodes.entry(key.clone())).await {
            Ok(Ok(entry)) => {
                Some(entry.filter(|entry| entry.operation == async_nats::jetstream::kv::Operation::Put).map(|entry| entry.revision))
            }
            _ => None,
        }
    };
    let Some(first) = read().await else { return Confirmed::Unknown };
    let Some(first) = first else { return Confirmed::Gone };
    tokio::time::sleep(2 * HEARTBEAT_INTERVAL).await;
    match read().await {
        None => Confirmed::Unknown,
        Some(None) => Confirmed::Gone,
        Some(Some(second)) if second == first => Confirmed::Dead,
        Some(Some(_)) => Confirmed::Alive,
    }
}

/// Takes `reaper.<origin>`: `Some(true)` if this node did, `Some(false)` if another one
/// did, `None` if the bucket could not say (ask again later).
async fn race_for(nodes: &async_nats::jetstream::kv::Store, origin: u64, own: u64) -> Option<bool> {
    let ours = Bytes::from(heartbeat_key(own));
    match tokio::time::timeout(STEP_TIMEOUT, nodes.create(reaper_key(origin), ours.clone())).await {
        Ok(Ok(_)) => return Some(true),
        Ok(Err(error)) if error.kind() == async_nats::jetstream::kv::CreateErrorKind::AlreadyExists => return Some(false),
        _ => {}
    }
    // The write may have landed all the same: the mark says whose it is.
    match tokio::time::timeout(STEP_TIMEOUT, nodes.entry(reaper_key(origin))).await {
        Ok(Ok(Some(entry))) if entry.operation == async_nats::jetstream::kv::Operation::Put => Some(entry.value == ours),
        _ => None,
    }
}

/// Every will `origin` left, or `None` if the bucket did not answer in full.
async fn list_wills(wills: &async_nats::jetstream::kv::Store, origin: u64) -> Option<Vec<(u32, String, Message)>> {
    let prefix = origin_prefix(origin);
    let listing = async {
        let mut found = Vec::new();
        let mut keys = wills.keys().await.ok()?;
        while let Some(key) = keys.next().await {
            let key = key.ok()?;
            if !key.starts_with(&prefix) {
                continue;
            }
            // Gone meanwhile (a delete that landed late) is no will.
            if let Some(value) = wills.get(key.clone()).await.ok()?
                && let Ok((delay_s, message)) = decode_will(value, Instant::now())
            {
                found.push((delay_s, key, message));
            }
        }
        Some(found)
    };
    tokio::time::timeout(LIST_TIMEOUT, listing).await.ok().flatten()
}

/// Makes sure `origin` is dead, and if this node wins the race for it, sends its wills
/// and removes them. A node found alive, or a question the bucket could not answer, goes
/// back to `liveness` to be judged again.
async fn reap(
    task: Rc<WillsTask>,
    nodes: async_nats::jetstream::kv::Store,
    wills: async_nats::jetstream::kv::Store,
    wills_bucket: String,
    liveness: Rc<RefCell<Liveness>>,
    origin: u64,
) {
    let judge_again = || liveness.borrow_mut().heard(origin, Instant::now());
    match confirm_dead(&nodes, origin).await {
        Confirmed::Dead => {}
        Confirmed::Gone => return,
        Confirmed::Alive | Confirmed::Unknown => return judge_again(),
    }
    match race_for(&nodes, origin, task.origin).await {
        Some(true) => {}
        Some(false) => return,
        None => return judge_again(),
    }
    // Its sessions went offline now (beside the wills, which may wait for their delays).
    let records = task.owners.borrow().records_store.clone();
    let (client, cluster_name) = (task.client.clone(), task.cluster_name.clone());
    tokio::task::spawn_local(async move {
        if let Some(records) = super::records::opened_or_bound(records, &client, &cluster_name).await {
            let marked = super::records::mark_offline(&records, origin).await;
            tracing::info!(origin = heartbeat_key(origin), marked, "cluster: a dead node's session records are offline from now");
        }
    });
    let found_at = Instant::now();
    let mut listed = None;
    for _ in 0..LIST_ATTEMPTS {
        listed = list_wills(&wills, origin).await;
        if listed.is_some() {
            break;
        }
        tokio::time::sleep(HEARTBEAT_INTERVAL).await;
    }
    let Some(mut listed) = listed else {
        // Left in the bucket rather than purged unsent.
        tracing::error!(origin = heartbeat_key(origin), "cluster: a node went silent, but its wills could not be listed; none sent");
        return;
    };
    tracing::warn!(origin = heartbeat_key(origin), wills = listed.len(), "cluster: a node went silent; this node sends its clients' wills");
    let prefix = origin_prefix(origin);
    listed.sort_by_key(|(delay_s, _, _)| *delay_s);
    for (delay_s, key, mut message) in listed {
        tokio::time::sleep_until((found_at + Duration::from_secs(u64::from(delay_s))).into()).await;
        if !back_elsewhere(&task.owners, &key[prefix.len()..], origin).await {
            // Its expiry counts from now, when it is sent.
            message.expires_at =
                message.properties.message_expiry_interval.map(|seconds| Instant::now() + Duration::from_secs(u64::from(seconds)));
            let target = {
                let mut state = task.state.borrow_mut();
                state.counters.dead_node_wills += 1;
                state.entry_for(&message.topic)
            };
            let _ = target.send(FromCluster::DeadNodesWill(Arc::new(message))).await;
        }
        // Done with it: a later reap (after a long delay, say) does not send it again.
        let _ = tokio::time::timeout(STEP_TIMEOUT, wills.delete(key)).await;
    }
    let _ = tokio::time::timeout(STEP_TIMEOUT, super::bucket::purge_origin(&task.client, &wills_bucket, origin)).await;
}

/// Whether the client-id bucket names an owner other than `dead` for the id whose key is
/// `client_key`: the client connected again elsewhere, and its will is not due.
async fn back_elsewhere(owners: &Rc<RefCell<Owners>>, client_key: &str, dead: u64) -> bool {
    let Some(store) = owners.borrow().store.clone() else { return false };
    match tokio::time::timeout(STEP_TIMEOUT, store.entry(client_key.to_string())).await {
        Ok(Ok(Some(entry))) => {
            entry.operation == async_nats::jetstream::kv::Operation::Put && owner_origin(&entry.value).is_some_and(|owner| owner != dead)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Properties, QoS};
    use crate::shard::ShardId;

    fn will(topic: &'static [u8]) -> Arc<Message> {
        let properties = Properties { message_expiry_interval: Some(30), ..Default::default() };
        Arc::new(Message {
            topic: Bytes::from_static(topic),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: properties.into(),
            publisher: None,
            expires_at: None,
        })
    }

    #[test]
    fn keys_name_the_origin_and_heartbeats_are_told_apart() {
        let key = will_key(0xab, b"client/1").expect("short id");
        assert!(key.starts_with("00000000000000ab."), "{key}");
        assert_eq!(heartbeat_origin("00000000000000ab"), Some(0xab));
        assert_eq!(heartbeat_origin("reaper.00000000000000ab"), None);
        assert_eq!(heartbeat_origin(&key), None);
        assert_eq!(heartbeat_origin("+0000000000000ab"), None, "no sign");
        assert!(will_key(1, &[b'x'; 4_000]).is_none());
    }

    #[test]
    fn a_stored_will_keeps_its_delay_and_message() {
        let stamp = Stamp { origin: 7, sequence: 0 };
        let value = encode_will(90, &will(b"status/a"), stamp, Instant::now());
        let (delay, message) = decode_will(value.clone(), Instant::now()).expect("decodes");
        assert_eq!(delay, 90);
        assert_eq!(&message.topic[..], b"status/a");
        assert_eq!(&message.payload[..], b"gone");
        assert_eq!((message.qos, message.retain), (QoS::AtLeastOnce, true));
        assert_eq!(message.properties.message_expiry_interval, Some(30));
        assert!(decode_will(value.slice(..3), Instant::now()).is_err());
    }

    #[test]
    fn an_end_clears_only_the_will_its_connection_set() {
        let stamp = Stamp { origin: 1, sequence: 0 };
        let (old, new) = (ConnId::new(ShardId(0), 1), ConnId::new(ShardId(1), 2));
        let id = Bytes::from_static(b"c");
        let mut registry = WillRegistry::default();
        assert!(matches!(registry.change(id.clone(), old, Some((will(b"t"), 0)), stamp), Some(WillChange::Set { .. })));
        // The takeover's new will arrives before the old connection's end.
        assert!(matches!(registry.change(id.clone(), new, Some((will(b"t"), 0)), stamp), Some(WillChange::Set { .. })));
        assert_eq!(registry.change(id.clone(), old, None, stamp), None, "the old end leaves the new will");
        assert!(matches!(registry.change(id.clone(), new, None, stamp), Some(WillChange::Clear { .. })));
        assert_eq!(registry.change(id, new, None, stamp), None, "nothing left to clear");
        assert_eq!(registry.change(Bytes::from_static(b"never"), old, None, stamp), None, "ends without a will cost nothing");
    }

    #[test]
    fn a_silent_node_is_dead_once_and_only_to_a_node_that_is_heard_itself() {
        let start = Instant::now();
        let second = Duration::from_secs(1);
        let mut liveness = Liveness::default();
        liveness.heard(5, start);
        liveness.heard(6, start);
        let later = start + NODE_DEAD_AFTER + second;
        assert!(liveness.take_dead(later).is_empty(), "no judging before our own heartbeat landed");
        liveness.own_heartbeat(true, later);
        assert!(liveness.take_dead(later).is_empty(), "nor right after an outage of our own");
        // Our beats land each second, but one: a slow write is not an outage.
        let mut now = later;
        for beat in 1..=5 {
            now = later + second * beat;
            liveness.own_heartbeat(beat != 3, now);
        }
        let judged_at = now;
        liveness.heard(6, judged_at - second);
        assert_eq!(liveness.take_dead(judged_at), vec![5]);
        assert!(liveness.take_dead(judged_at).is_empty(), "told once");
        liveness.heard(7, judged_at);
        for beat in 1..=4 {
            liveness.own_heartbeat(false, judged_at + second * beat);
        }
        assert!(liveness.take_dead(judged_at + NODE_DEAD_AFTER * 3).is_empty(), "our heartbeats missed: no judging");
        // Back after a gap: healthy again only after NODE_DEAD_AFTER of landed beats.
        let back = judged_at + NODE_DEAD_AFTER * 3;
        liveness.own_heartbeat(true, back);
        assert!(liveness.take_dead(back + second).is_empty(), "health counts from the end of the gap");
        liveness.forget(6);
        liveness.forget(7);
        for beat in 1..=6 {
            liveness.own_heartbeat(true, back + second * beat);
        }
        assert!(liveness.take_dead(back + second * 6).is_empty(), "a node gone from the bucket is not reaped");
    }
}
