//! Who owns each client id across the cluster: the JetStream key-value bucket
//! `<cluster-name>_clients`, one key per client id, whose value names the owning node's
//! process (its origin, as in every frame it sends) and its node id.
//!
//! A node takes an id by compare-and-swap on the key's revision (create when there is
//! none), so two nodes racing for one id are ordered by the bucket: each write succeeds
//! only on the revision it read, the loser reads again and takes it after the winner. The
//! taker then asks the previous owner, on that process's own control subject, to close its
//! connection; the answer is not waited for past a second (a dead node cannot answer, and
//! its connections are gone anyway).
//!
//! An eviction carries the revision its sender wrote, and applies only to an ownership
//! written before it: one can overtake the answer to our own claim (the other node wrote
//! right after us; the eviction then follows the grant), and one about an ownership we
//! already lost can arrive late (it is ignored).
//!
//! Without the bucket (JetStream unreachable or without quorum), a claim for a persistent
//! session is refused (CONNACK Server unavailable: a session kept on a node that cannot
//! say it owns it would split), and one for a clean session is granted for this node alone.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::bucket::key_of;
use super::port::FromCluster;
use crate::shard::home_shard;

/// How long each bucket step of a claim may take (a claim takes at most three), and a
/// taker waits for the previous owner.
const STEP_TIMEOUT: Duration = Duration::from_secs(1);
/// Compare-and-swap attempts before a claim gives up (each loses only to another write).
const CAS_ATTEMPTS: usize = 8;

/// The value stored for an owner: its origin in hex, a space, its node id.
pub fn owner_value(origin: u64, node_id: &str) -> Bytes {
    Bytes::from(format!("{origin:016x} {node_id}"))
}

/// The origin an owner value names, if it is one.
pub fn owner_origin(value: &[u8]) -> Option<u64> {
    let hex = value.get(..16)?;
    u64::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
}

/// The subject a node's process answers evictions on.
pub fn evict_subject(cluster_name: &str, origin: u64) -> String {
    format!("{cluster_name}.node.{origin:016x}.evict")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// Ours from this revision of the key on; the process that held it before, if any.
    Granted { revision: u64, previous: Option<u64> },
    /// The bucket did not answer; `persistent` decides what the shard is told.
    Unavailable,
}

/// What the claim tasks and the eviction listener share.
pub struct Owners {
    pub store: Option<async_nats::jetstream::kv::Store>,
    pub client: async_nats::Client,
    pub cluster_name: String,
    pub origin: u64,
    pub node_id: String,
    /// Claims in flight: the latest revision another node's eviction named meanwhile.
    pub claiming: HashMap<Bytes, u64>,
    /// Ids this node owns in the bucket, and the revision it took each at (an entry goes
    /// when the session ends here or another node takes the id).
    pub held: HashMap<Bytes, u64>,
    pub to_shards: Vec<mpsc::Sender<FromCluster>>,
    /// Clean-session claims granted without the bucket.
    pub unverified: u64,
    /// Persistent-session claims refused without the bucket.
    pub refused: u64,
    /// When the last warning about the bucket was logged (at most one per `WARN_PERIOD`).
    pub warned_at: Option<std::time::Instant>,
}

/// Between two warnings that the client-id bucket does not answer.
const WARN_PERIOD: Duration = Duration::from_secs(10);

/// Settles one claim and tells the home shard; then, if the id was another process's,
/// asks that one to close its connection (best effort: a dead node cannot answer).
pub async fn claim(owners: Rc<RefCell<Owners>>, client_id: Bytes, shard: usize, persistent: bool) {
    owners.borrow_mut().claiming.insert(client_id.clone(), 0);
    let outcome = take(&owners, &client_id).await;
    let (target, evicted_meanwhile, evict) = {
        let mut owners = owners.borrow_mut();
        let evicted_at = owners.claiming.remove(&client_id).unwrap_or(0);
        match outcome {
            ClaimOutcome::Granted { revision, .. } if evicted_at > revision => (owners.to_shards[shard].clone(), true, None),
            ClaimOutcome::Granted { revision, previous } => {
                owners.held.insert(client_id.clone(), revision);
                let evict = previous.map(|previous| {
                    let mut body = Vec::with_capacity(8 + client_id.len());
                    body.extend_from_slice(&revision.to_le_bytes());
                    body.extend_from_slice(&client_id);
                    (owners.client.clone(), evict_subject(&owners.cluster_name, previous), Bytes::from(body))
                });
                (owners.to_shards[shard].clone(), false, evict)
            }
            ClaimOutcome::Unavailable => {
                owners.unverified += u64::from(!persistent);
                owners.refused += u64::from(persistent);
                let now = std::time::Instant::now();
                if owners.warned_at.is_none_or(|at| now.duration_since(at) >= WARN_PERIOD) {
                    owners.warned_at = Some(now);
                    tracing::warn!(
                        refused_persistent = owners.refused,
                        clean_unverified = owners.unverified,
                        "cluster: the client-id bucket does not answer: persistent CONNECTs are refused (Server unavailable), \
                         clean ones let in on this node's word alone (totals so far)"
                    );
                }
                (owners.to_shards[shard].clone(), false, None)
            }
        }
    };
    let verified = matches!(outcome, ClaimOutcome::Granted { .. });
    let granted = verified || !persistent;
    let _ = target.send(FromCluster::ClaimAnswer { client_id: client_id.clone(), granted, verified }).await;
    if granted && evicted_meanwhile {
        let _ = target.send(FromCluster::EvictRemote { client_id }).await;
    }
    if let Some((client, subject, body)) = evict {
        let _ = tokio::time::timeout(STEP_TIMEOUT, client.request(subject, body)).await;
    }
}

/// Takes the id in the bucket by compare-and-swap. Each bucket step has its own time
/// limit, and a write that succeeded always counts.
async fn take(owners: &Rc<RefCell<Owners>>, client_id: &Bytes) -> ClaimOutcome {
    let (store, origin, value) = {
        let owners = owners.borrow();
        let Some(store) = owners.store.clone() else { return ClaimOutcome::Unavailable };
        (store, owners.origin, owner_value(owners.origin, &owners.node_id))
    };
    // An id too long for a key is owned per node only (it cannot be written).
    let Some(key) = key_of(client_id) else { return ClaimOutcome::Granted { revision: 0, previous: None } };
    for _ in 0..CAS_ATTEMPTS {
        let entry = match tokio::time::timeout(STEP_TIMEOUT, store.entry(key.clone())).await {
            Ok(Ok(entry)) => entry,
            _ => return ClaimOutcome::Unavailable,
        };
        let live = entry.filter(|entry| entry.operation == async_nats::jetstream::kv::Operation::Put);
        let previous = live.as_ref().and_then(|entry| owner_origin(&entry.value));
        if let (Some(entry), Some(true)) = (&live, previous.map(|previous| previous == origin)) {
            return ClaimOutcome::Granted { revision: entry.revision, previous: None };
        }
        let write = async {
            match &live {
                Some(entry) => store.update(key.clone(), value.clone(), entry.revision).await.ok(),
                None => store.create(key.clone(), value.clone()).await.ok(),
            }
        };
        match tokio::time::timeout(STEP_TIMEOUT, write).await {
            Ok(Some(revision)) => return ClaimOutcome::Granted { revision, previous },
            // Another write came first: read again.
            Ok(None) => continue,
            // Whether it landed is unknown (a bucket without quorum answers reads, not
            // writes): one more read says, and a bucket that slow is not waited for again.
            Err(_) => {
                return match tokio::time::timeout(STEP_TIMEOUT, store.entry(key.clone())).await {
                    Ok(Ok(Some(entry))) if owner_origin(&entry.value) == Some(origin) => {
                        ClaimOutcome::Granted { revision: entry.revision, previous }
                    }
                    _ => ClaimOutcome::Unavailable,
                };
            }
        }
    }
    ClaimOutcome::Unavailable
}

/// The session for `client_id` ended here: the key is deleted if it still holds our
/// write (a later owner's write is left alone).
pub async fn release(owners: Rc<RefCell<Owners>>, client_id: Bytes) {
    let (store, revision) = {
        let mut owners = owners.borrow_mut();
        let Some(revision) = owners.held.remove(&client_id) else { return };
        let Some(store) = owners.store.clone() else { return };
        (store, revision)
    };
    let Some(key) = key_of(&client_id) else { return };
    let _ = tokio::time::timeout(STEP_TIMEOUT, store.delete_expect_revision(key, Some(revision))).await;
}

/// Answers other nodes' evictions (`[revision u64 LE][client id]`): the id's home shard
/// closes our connection for it, if we took the id before that revision.
pub async fn listen_for_evictions(mut requests: async_nats::Subscriber, owners: Rc<RefCell<Owners>>) {
    while let Some(request) = requests.next().await {
        let Some((revision, client_id)) = request
            .payload
            .split_first_chunk::<8>()
            .map(|(revision, id)| (u64::from_le_bytes(*revision), request.payload.slice(8..8 + id.len())))
        else {
            continue;
        };
        let (target, client) = {
            let mut owners = owners.borrow_mut();
            let applies = match owners.held.get(&client_id) {
                Some(&held_at) => held_at < revision,
                None => false,
            };
            if let Some(evicted_at) = owners.claiming.get_mut(&client_id) {
                *evicted_at = (*evicted_at).max(revision);
            }
            if applies {
                owners.held.remove(&client_id);
            }
            let shard = home_shard(&client_id, owners.to_shards.len()).0;
            (applies.then(|| owners.to_shards[shard].clone()), owners.client.clone())
        };
        if let Some(target) = target
            && target.send(FromCluster::EvictRemote { client_id }).await.is_err()
        {
            return;
        }
        if let Some(reply) = request.reply {
            let _ = client.publish(reply, Bytes::new()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_values_name_the_origin() {
        let value = owner_value(0x0123_4567_89ab_cdef, "node-1");
        assert_eq!(&value[..], b"0123456789abcdef node-1");
        assert_eq!(owner_origin(&value), Some(0x0123_4567_89ab_cdef));
        assert_eq!(owner_origin(b"short"), None);
        assert_eq!(owner_origin(b"zzzzzzzzzzzzzzzz x"), None);
        assert_eq!(evict_subject("ringmq", 255), "ringmq.node.00000000000000ff.evict");
    }
}
