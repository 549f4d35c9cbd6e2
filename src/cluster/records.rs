//! Session records: the JetStream KV bucket `<cluster-name>_sessions`, where each node
//! keeps, for every persistent session it holds, the session's header (online or not, when
//! it ends) and its subscriptions, under `<origin hex>.<client id key>` (`handover::
//! encode_record`). Written when a session arrives, subscribes, unsubscribes or goes
//! offline, deleted when it ends or leaves; never per message.
//!
//! What it is for: a node that dies takes its sessions with it, and a client of one that
//! comes back on another node finds its record there (the claim names the dead owner, and
//! its key), so it gets session present and its subscriptions (not the messages that were
//! queued for it: they died with the node). A node stopped on purpose purges its records,
//! as its sessions end with it.
//!
//! Each node writes only its own keys, so nodes never race on a record; a node's shards
//! can (a session moving between them), so every change carries a version from one
//! process-wide counter taken where the change happened, and an older change that arrives
//! after a newer one is dropped. Changes to one key are coalesced (the latest is written)
//! and a failed write is tried again, unless a newer change replaced it.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::Notify;

use super::gateway::Inbound;
use super::owners::Owners;

/// Versions of record changes, process-wide: a change taken after another (in any shard,
/// causally) has a higher one.
static VERSIONS: AtomicU64 = AtomicU64::new(1);

pub fn next_version() -> u64 {
    VERSIONS.fetch_add(1, Ordering::SeqCst)
}

/// How long the version of a deleted record is kept, to drop an older change still on its
/// way (from another shard of this node: microseconds to milliseconds behind).
const DELETED_VERSIONS_KEPT: Duration = Duration::from_secs(60);

/// What waits to be written, and what has been.
#[derive(Debug, Default)]
pub struct Records {
    /// Key -> the newest change not written yet (`None`: delete).
    pending: HashMap<String, (u64, Option<Bytes>)>,
    /// Keys with a pending change, oldest first.
    order: VecDeque<String>,
    /// Key -> the newest version taken (and when it was a delete, since when).
    newest: HashMap<String, (u64, Option<Instant>)>,
    /// Keys this process has a record under (deleting any other is a no-op to skip).
    written: HashSet<String>,
    /// The key being written now (`next_write` gave it, `written` not called yet).
    in_flight: Option<String>,
}

impl Records {
    /// A change to `key`'s record; dropped if a newer one was already taken.
    pub fn change(&mut self, key: String, version: u64, record: Option<Bytes>, now: Instant) {
        if self.newest.get(&key).is_some_and(|&(newest, _)| newest > version) {
            return;
        }
        let may_exist = self.written.contains(&key) || self.pending.contains_key(&key) || self.in_flight.as_ref() == Some(&key);
        // A delete's version stays for a while, so that an older put still on its way is
        // dropped too.
        self.newest.insert(key.clone(), (version, record.is_none().then_some(now)));
        if record.is_none() && !may_exist {
            // Nothing under it to delete (a clean session ending, say).
            return;
        }
        if self.pending.insert(key.clone(), (version, record)).is_none() {
            self.order.push_back(key);
        }
    }

    /// The next write: the key, its change's version, and the record (`None`: delete).
    pub fn next_write(&mut self) -> Option<(String, u64, Option<Bytes>)> {
        let key = self.order.pop_front()?;
        let (version, record) = self.pending.remove(&key)?;
        self.in_flight = Some(key.clone());
        Some((key, version, record))
    }

    /// How the write `next_write` gave went. A failed one waits again, unless a newer change
    /// replaced it meanwhile.
    pub fn written(&mut self, key: String, version: u64, record: Option<Bytes>, landed: bool) {
        self.in_flight = None;
        if landed {
            match record {
                Some(_) => self.written.insert(key),
                None => self.written.remove(&key),
            };
        } else if !self.pending.contains_key(&key) {
            self.pending.insert(key.clone(), (version, record));
            self.order.push_back(key);
        }
    }

    /// Forgets versions of records deleted long enough ago.
    pub fn prune(&mut self, now: Instant) {
        self.newest.retain(|_, (_, deleted_at)| deleted_at.is_none_or(|at| now.duration_since(at) < DELETED_VERSIONS_KEPT));
    }

    pub fn is_idle(&self) -> bool {
        self.order.is_empty()
    }
}

/// Each bucket step's limit, and the pause after a failed write.
const STEP_TIMEOUT: Duration = Duration::from_secs(1);
/// Room for the subject and headers next to a record in one NATS message.
const MESSAGE_OVERHEAD_BYTES: usize = 4096;

/// What the writer task needs.
pub(super) struct RecordsTask {
    pub client: async_nats::Client,
    pub bucket: String,
    pub replicas: usize,
    pub owners: Rc<RefCell<Owners>>,
    pub records: Rc<RefCell<Records>>,
    pub wake: Rc<Notify>,
    pub state: Rc<RefCell<Inbound>>,
}

/// Opens the bucket (once the client-id, heartbeat and wills buckets are open: JetStream
/// makes buckets one at a time on a cluster just started, and those come first), lends it
/// to the claims, then writes what `records` holds, one change at a time, for as long as
/// the gateway runs.
pub(super) async fn run(task: RecordsTask) {
    while !task.owners.borrow().wills_open {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let store = super::bucket::open(&task.client, &task.bucket, task.replicas, "ringmq persistent session records", None).await;
    task.owners.borrow_mut().records_store = Some(store.clone());
    let mut pruned_at = Instant::now();
    loop {
        let next = task.records.borrow_mut().next_write();
        let Some((key, version, mut record)) = next else {
            task.wake.notified().await;
            continue;
        };
        if record.as_ref().is_some_and(|value| value.len() + MESSAGE_OVERHEAD_BYTES > task.client.server_info().max_payload) {
            // Too many subscriptions for one message: no record rather than an old one.
            task.state.borrow_mut().counters.records_too_large += 1;
            record = None;
        }
        let write = async {
            match &record {
                Some(value) => store.put(key.clone(), value.clone()).await.is_ok(),
                None => store.delete(key.clone()).await.is_ok(),
            }
        };
        let landed = tokio::time::timeout(STEP_TIMEOUT, write).await.unwrap_or(false);
        task.records.borrow_mut().written(key, version, record, landed);
        if !landed {
            task.state.borrow_mut().counters.record_write_failures += 1;
            tokio::time::sleep(STEP_TIMEOUT).await;
        }
        let now = Instant::now();
        if now.duration_since(pruned_at) >= DELETED_VERSIONS_KEPT {
            pruned_at = now;
            task.records.borrow_mut().prune(now);
        }
    }
}

/// The records bucket of the cluster `cluster_name`.
pub(super) fn bucket_name(cluster_name: &str) -> String {
    format!("{cluster_name}_sessions")
}

/// The writer task's handle on the records bucket (`opened`) or, before it has opened
/// it, one bound to the bucket if it exists (never made here): a claim or a reaping can
/// come before this node's writer is ready, while the dead node's records are there.
pub(super) async fn opened_or_bound(
    opened: Option<async_nats::jetstream::kv::Store>,
    client: &async_nats::Client,
    cluster_name: &str,
) -> Option<async_nats::jetstream::kv::Store> {
    if opened.is_some() {
        return opened;
    }
    let jetstream = async_nats::jetstream::new(client.clone());
    tokio::time::timeout(STEP_TIMEOUT, jetstream.get_key_value(bucket_name(cluster_name))).await.ok()?.ok()
}

/// Reads the record the process `origin` (the previous owner, which did not answer) kept
/// for `client_id`, if the bucket has one.
pub(super) async fn read(store: &async_nats::jetstream::kv::Store, origin: u64, client_id: &[u8]) -> Option<Bytes> {
    let key = record_key(origin, client_id)?;
    match tokio::time::timeout(STEP_TIMEOUT, store.entry(key)).await {
        Ok(Ok(Some(entry))) if entry.operation == async_nats::jetstream::kv::Operation::Put => Some(entry.value),
        _ => None,
    }
}

/// A survivor reaping the dead process `origin`: its records of sessions that were online
/// go offline now (their expiry counts from the death), expired ones go. Best effort: a
/// record the bucket does not give up in time stays as it was.
pub(super) async fn mark_offline(store: &async_nats::jetstream::kv::Store, origin: u64) -> usize {
    use futures_util::StreamExt;
    let prefix = super::bucket::origin_prefix(origin);
    let mut changed = 0;
    let Ok(Ok(mut keys)) = tokio::time::timeout(STEP_TIMEOUT, store.keys()).await else { return 0 };
    while let Ok(Some(Ok(key))) = tokio::time::timeout(STEP_TIMEOUT, keys.next()).await {
        if !key.starts_with(&prefix) {
            continue;
        }
        let Ok(Ok(Some(entry))) = tokio::time::timeout(STEP_TIMEOUT, store.entry(key.clone())).await else { continue };
        if entry.operation != async_nats::jetstream::kv::Operation::Put {
            continue;
        }
        let clock = crate::persist::retained::Clock::system();
        let write = match super::handover::offline_since_death(&entry.value, clock) {
            super::handover::RecordFate::Keep => continue,
            // Against the revision read: a record a client resumed from meanwhile is
            // deleted by nobody, and the claim read it already.
            super::handover::RecordFate::Rewrite(bytes) => store.update(key, Bytes::from(bytes), entry.revision).await.is_ok(),
            super::handover::RecordFate::Delete => store.delete_expect_revision(key, Some(entry.revision)).await.is_ok(),
        };
        changed += usize::from(write);
    }
    changed
}

/// The key of `client_id`'s record kept by the process `origin`.
pub fn record_key(origin: u64, client_id: &[u8]) -> Option<String> {
    super::bucket::origin_key(origin, client_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(text: &'static str) -> Option<Bytes> {
        Some(Bytes::from_static(text.as_bytes()))
    }

    #[test]
    fn the_newest_change_wins_whatever_order_changes_arrive_in() {
        let now = Instant::now();
        let mut records = Records::default();
        records.change("k".into(), 2, record("subscribed"), now);
        records.change("k".into(), 3, record("two filters"), now);
        // An older change from another shard, late: dropped.
        records.change("k".into(), 1, None, now);
        assert_eq!(records.next_write(), Some(("k".into(), 3, record("two filters"))), "coalesced to the latest");
        assert_eq!(records.next_write(), None);
        records.written("k".into(), 3, record("two filters"), true);
        // Deleted (version 5), then a put from before the delete arrives: dropped.
        records.change("k".into(), 5, None, now);
        records.change("k".into(), 4, record("stale"), now);
        assert_eq!(records.next_write(), Some(("k".into(), 5, None)));
        records.written("k".into(), 5, None, true);
        records.change("k".into(), 4, record("stale"), now);
        assert!(records.is_idle(), "the deleted record's version is remembered");
        records.prune(now + DELETED_VERSIONS_KEPT);
        assert!(records.newest.is_empty(), "and forgotten after a while");
    }

    #[test]
    fn deletes_of_records_never_written_are_skipped_and_failed_writes_retried() {
        let now = Instant::now();
        let mut records = Records::default();
        records.change("clean".into(), 1, None, now);
        assert!(records.is_idle(), "nothing to delete");
        records.change("clean".into(), 0, record("older, late"), now);
        assert!(records.is_idle(), "an older put arriving after it is dropped");
        records.prune(now + DELETED_VERSIONS_KEPT);
        assert!(records.newest.is_empty(), "forgotten after a while");
        // A delete while the first put is being written is kept.
        records.change("b".into(), 10, record("b1"), now);
        let (key, version, value) = records.next_write().expect("a write");
        records.change("b".into(), 11, None, now);
        records.written(key, version, value, true);
        assert_eq!(records.next_write(), Some(("b".into(), 11, None)));
        records.written("b".into(), 11, None, true);
        records.change("a".into(), 2, record("a1"), now);
        let (key, version, value) = records.next_write().expect("a write");
        records.written(key, version, value, false);
        assert_eq!(records.next_write(), Some(("a".into(), 2, record("a1"))), "tried again");
        // Failed, but a newer change came meanwhile: that one is written, not the old one.
        records.change("a".into(), 3, record("a2"), now);
        records.written("a".into(), 2, record("a1"), false);
        assert_eq!(records.next_write(), Some(("a".into(), 3, record("a2"))));
        assert_eq!(records.next_write(), None);
    }
}
