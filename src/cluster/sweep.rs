//! Sweeping the session records that nodes no longer running left behind
//! (`--cluster-sweep-interval-s`).
//!
//! A node writes only its own records and removes them when it stops cleanly; a node that
//! dies leaves them for its clients to come back to (`records.rs`), and the survivor that
//! reaps it marks them offline. Without a sweep they would stay for good: a record whose
//! session has expired, or one whose client came back on another node (which read it when
//! it took the session, and keeps a record of its own), is never used again.
//!
//! Once per interval one node (the one that moves `sweeper` in the records bucket to this
//! round's number) lists the records bucket and, for each record of a process that is not
//! running (reaped, stopped, or with no heartbeat for over a minute: a running node beats
//! every second), removes it from the bucket's stream, delete markers and all, when
//! - its session has expired (counted from the reaping, as the reaper rewrote it), or
//! - the client-id bucket has named another process as the owner, unchanged, since the
//!   previous round: the claim that moved the session has long read the record.
//!
//! A record of a process that died and was never reaped (every node down meanwhile) is
//! marked offline from now, as a reaper would have. A process taken for dead never writes
//! its keys again (a restarted node is a new process), so removing them races with
//! nobody.

use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;

use super::handover::{RecordFate, offline_since_death};
use crate::persist::retained::Clock;

/// Each bucket step's limit.
const STEP_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest a round may take listing the bucket.
const LIST_TIMEOUT: Duration = Duration::from_secs(30);
/// The records bucket's key that elects each round's sweeper: its value is the last round
/// swept (Unix seconds over the interval). In the records bucket, which keeps entries for
/// good (the nodes bucket forgets them after a minute, which would let a second node win
/// the same round); it is no record key (no origin before a dot), so the sweep skips it.
const SWEEPER_KEY: &str = "sweeper";

/// What the sweep does with one record of a process that is not running.
#[derive(Debug, PartialEq, Eq)]
pub enum SweepAction {
    /// Still of use: its client may come back to it.
    Leave,
    /// Its client is owned elsewhere, by the owner entry of this revision: removed next
    /// round if that entry has not changed by then.
    Superseded { owner_revision: u64 },
    /// Rewritten as offline from now (its process died unreaped).
    Rewrite(Vec<u8>),
    /// Removed, with its history.
    Remove,
}

/// The sweep's decision for the record `bytes` of the process `origin`. `owner`: the
/// client-id bucket's entry for its client (the origin it names, its revision), if any;
/// `superseded_before`: the owner revision this record was found superseded with in the
/// previous round.
pub fn sweep_action(bytes: &[u8], origin: u64, owner: Option<(u64, u64)>, superseded_before: Option<u64>, clock: Clock) -> SweepAction {
    match offline_since_death(bytes, clock) {
        RecordFate::Delete => SweepAction::Remove,
        RecordFate::Rewrite(bytes) => SweepAction::Rewrite(bytes),
        RecordFate::Keep => match owner {
            Some((owner_origin, revision)) if owner_origin != origin => {
                if superseded_before == Some(revision) {
                    SweepAction::Remove
                } else {
                    SweepAction::Superseded { owner_revision: revision }
                }
            }
            _ => SweepAction::Leave,
        },
    }
}

/// What the sweep task needs.
pub(super) struct SweepTask {
    pub client: async_nats::Client,
    pub cluster_name: String,
    pub origin: u64,
    pub interval: Duration,
    pub owners: Rc<std::cell::RefCell<super::owners::Owners>>,
    pub state: Rc<std::cell::RefCell<super::gateway::Inbound>>,
}

/// Sweeps once per interval, when this node wins the round, for as long as the gateway runs.
pub(super) async fn run(task: SweepTask) {
    let jetstream = async_nats::jetstream::new(task.client.clone());
    let records_bucket = super::records::bucket_name(&task.cluster_name);
    let mut superseded: HashMap<String, u64> = HashMap::new();
    let mut tick = tokio::time::interval(task.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let (Some(owners), true) = (task.owners.borrow().store.clone(), task.owners.borrow().wills_open) else { continue };
        let records = task.owners.borrow().records_store.clone();
        let Some(records) = super::records::opened_or_bound(records, &task.client, &task.cluster_name).await else { continue };
        let Ok(Ok(nodes)) = tokio::time::timeout(STEP_TIMEOUT, jetstream.get_key_value(format!("{}_nodes", task.cluster_name))).await
        else {
            continue;
        };
        let round = Clock::system().unix_ms / 1000 / task.interval.as_secs().max(1);
        if !won_round(&records, round).await {
            // Another node sweeps this round; what this one saw last is stale by the next.
            superseded.clear();
            continue;
        }
        let sweep = Sweep { client: &task.client, records_bucket: &records_bucket, records: &records, nodes: &nodes, owners: &owners };
        if let Ok(Some((found, removed))) = tokio::time::timeout(LIST_TIMEOUT, sweep.round(task.origin, &superseded)).await {
            superseded = found;
            task.state.borrow_mut().counters.records_swept += removed;
            if removed > 0 {
                tracing::info!(removed, "cluster: swept session records that no running node will use again");
            }
        }
    }
}

/// Moves `sweeper` to `round` if it is behind: true if this node did.
async fn won_round(bucket: &async_nats::jetstream::kv::Store, round: u64) -> bool {
    let value = Bytes::from(round.to_string());
    let swept = match tokio::time::timeout(STEP_TIMEOUT, bucket.entry(SWEEPER_KEY)).await {
        Ok(Ok(entry)) => entry.filter(|entry| entry.operation == async_nats::jetstream::kv::Operation::Put),
        _ => return false,
    };
    let write = async {
        match swept {
            Some(entry) => {
                let last = std::str::from_utf8(&entry.value).ok().and_then(|text| text.parse::<u64>().ok()).unwrap_or(0);
                last < round && bucket.update(SWEEPER_KEY, value, entry.revision).await.is_ok()
            }
            None => bucket.create(SWEEPER_KEY, value).await.is_ok(),
        }
    };
    tokio::time::timeout(STEP_TIMEOUT, write).await.unwrap_or(false)
}

struct Sweep<'a> {
    client: &'a async_nats::Client,
    records_bucket: &'a str,
    records: &'a async_nats::jetstream::kv::Store,
    nodes: &'a async_nats::jetstream::kv::Store,
    owners: &'a async_nats::jetstream::kv::Store,
}

impl Sweep<'_> {
    /// One pass over the bucket: the records found superseded (for the next round) and how
    /// many were removed, or `None` if the bucket could not be listed.
    async fn round(&self, own: u64, superseded_before: &HashMap<String, u64>) -> Option<(HashMap<String, u64>, u64)> {
        let keys: Vec<String> = self.records.keys().await.ok()?.filter_map(|key| async move { key.ok() }).collect().await;
        let mut running: HashMap<u64, bool> = HashMap::new();
        let mut superseded = HashMap::new();
        let mut removed = 0;
        for key in keys {
            let Some((origin, client_key)) = split_key(&key) else { continue };
            if origin == own {
                continue;
            }
            let alive = match running.get(&origin) {
                Some(alive) => *alive,
                None => {
                    let alive = self.is_running(origin).await?;
                    running.insert(origin, alive);
                    alive
                }
            };
            if alive {
                continue;
            }
            let Ok(Ok(Some(entry))) = tokio::time::timeout(STEP_TIMEOUT, self.records.entry(key.clone())).await else { continue };
            if entry.operation != async_nats::jetstream::kv::Operation::Put {
                continue;
            }
            let owner = self.owner_of(client_key).await;
            match sweep_action(&entry.value, origin, owner, superseded_before.get(&key).copied(), Clock::system()) {
                SweepAction::Leave => {}
                SweepAction::Superseded { owner_revision } => {
                    superseded.insert(key, owner_revision);
                }
                SweepAction::Rewrite(bytes) => {
                    let _ = tokio::time::timeout(STEP_TIMEOUT, self.records.update(key, Bytes::from(bytes), entry.revision)).await;
                }
                SweepAction::Remove => {
                    if super::bucket::purge_key(self.client, self.records_bucket, &key).await {
                        removed += 1;
                    }
                }
            }
        }
        Some((superseded, removed))
    }

    /// Whether `origin` is a running node: it has a heartbeat and no reaper has marked it
    /// dead (`None`: the bucket did not say).
    async fn is_running(&self, origin: u64) -> Option<bool> {
        let present = |key: String| async move {
            match tokio::time::timeout(STEP_TIMEOUT, self.nodes.entry(key)).await {
                Ok(Ok(entry)) => Some(entry.is_some_and(|entry| entry.operation == async_nats::jetstream::kv::Operation::Put)),
                _ => None,
            }
        };
        if present(super::wills::reaper_key(origin)).await? {
            return Some(false);
        }
        present(super::wills::heartbeat_key(origin)).await
    }

    /// The origin the client-id bucket names for the client whose key is `client_key`,
    /// with the entry's revision.
    async fn owner_of(&self, client_key: &str) -> Option<(u64, u64)> {
        let entry = tokio::time::timeout(STEP_TIMEOUT, self.owners.entry(client_key)).await.ok()?.ok()??;
        if entry.operation != async_nats::jetstream::kv::Operation::Put {
            return None;
        }
        Some((super::owners::owner_origin(&entry.value)?, entry.revision))
    }
}

/// `<origin hex>.<client key>` -> (origin, client key).
fn split_key(key: &str) -> Option<(u64, &str)> {
    let (origin, client_key) = key.split_once('.')?;
    Some((u64::from_str_radix(origin, 16).ok()?, client_key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::handover::encode_record;
    use crate::persist::session::SessionHeader;
    use crate::protocol::{ProtocolVersion, QoS, SubscriptionOptions};
    use crate::session::{Session, SessionLimits, Subscription};

    fn record(online: bool, ends_at_ms: u64, clock: Clock) -> Vec<u8> {
        let limits = SessionLimits { inflight_max: 8, queued_messages_max: 8, queue_full_policy: crate::session::QueueFullPolicy::DropNew };
        let mut session = Session::new(Bytes::from_static(b"swept"), limits);
        let filter = crate::topics::Filter::parse(b"a/+").expect("a filter");
        session.subscribe(filter, Subscription { options: SubscriptionOptions::with_qos(QoS::AtLeastOnce), identifier: None });
        let expiry_interval_s = if ends_at_ms == 0 { u32::MAX } else { 60 };
        let header = SessionHeader { version: ProtocolVersion::V5, expiry_interval_s, online, ends_at_ms, will: None };
        encode_record(&session, &header, clock)
    }

    #[test]
    fn expired_records_go_and_superseded_ones_go_a_round_later_if_their_owner_stayed() {
        let clock = Clock::system();
        let dead = 7;
        let live_record = record(false, clock.unix_ms + 60_000, clock);
        let expired = record(false, clock.unix_ms.saturating_sub(1), clock);
        assert_eq!(sweep_action(&expired, dead, None, None, clock), SweepAction::Remove);
        assert_eq!(sweep_action(&live_record, dead, None, None, clock), SweepAction::Leave, "its client may come back");
        assert_eq!(sweep_action(&live_record, dead, Some((dead, 3)), None, clock), SweepAction::Leave, "owned by its own process");
        assert_eq!(sweep_action(&live_record, dead, Some((9, 3)), None, clock), SweepAction::Superseded { owner_revision: 3 });
        assert_eq!(sweep_action(&live_record, dead, Some((9, 3)), Some(3), clock), SweepAction::Remove, "the same owner a round later");
        assert_eq!(
            sweep_action(&live_record, dead, Some((9, 4)), Some(3), clock),
            SweepAction::Superseded { owner_revision: 4 },
            "the owner changed meanwhile: a claim may be reading it"
        );
        let never_ends = record(false, 0, clock);
        assert_eq!(sweep_action(&never_ends, dead, None, None, clock), SweepAction::Leave, "a session that never expires stays");
        assert!(matches!(sweep_action(&record(true, 0, clock), dead, None, None, clock), SweepAction::Rewrite(_)), "unreaped: offline now");
        assert_eq!(sweep_action(b"not a record", dead, None, None, clock), SweepAction::Remove);
    }

    #[test]
    fn keys_split_into_origin_and_client() {
        assert_eq!(split_key("00000000000000ff.Y2xpZW50"), Some((255, "Y2xpZW50")));
        assert_eq!(split_key("sweeper"), None);
        assert_eq!(split_key("zz.abc"), None);
    }
}
