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
//! A claim with Clean Start 0 asks for the session too (`fetch_session`): the request
//! names an inbox, the previous owner closes its connection, sends the session there in
//! chunks (`handover`) and answers whether it had one; only then is the CONNECT answered,
//! with session present as the old node's word says. A previous owner that is gone (it
//! died) hands over what its session record says (`records`: subscriptions, no messages;
//! with `--cluster-durable` the messages follow from the stream, `message_stream`), or
//! nothing: the session starts fresh. One that is slow past the timeout hands nothing.
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
use super::handover::{self, Assembly, HandoverError};
use super::port::FromCluster;
use crate::shard::home_shard;

/// How long each bucket step of a claim may take (a claim takes at most three), and a
/// taker waits for the previous owner.
const STEP_TIMEOUT: Duration = Duration::from_secs(1);
/// Compare-and-swap attempts before a claim gives up (each loses only to another write).
const CAS_ATTEMPTS: usize = 8;
/// How long the previous owner's gateway waits for its shard to give up the session
/// (past it the shard ends the session instead, and the taker hears "none").
const HANDOVER_SHARD_WAIT: Duration = Duration::from_secs(1);
/// How long a taker waits for the previous owner's answer, which follows the session's
/// chunks: the shard's wait, and the chunks' way across NATS (`HANDOVER_BYTES_MAX` at
/// loopback speed is well under a second). Longer than the sender's, so that a session
/// sent is a session taken.
const HANDOVER_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// Then for the chunks still on their way (they left before the answer).
const HANDOVER_CHUNKS_TIMEOUT: Duration = Duration::from_secs(3);
/// While no answer has come, how often the taker asks whether the previous owner still
/// listens. A node killed a moment ago is still listening as far as the taker's server
/// knows until the news crosses the NATS routes, so the first request can vanish into
/// a dead connection; a probe sent later hears "no responders" and the taker reads the
/// dead node's record at once rather than starting fresh after the timeout.
const LIVENESS_PROBE_PERIOD: Duration = Duration::from_millis(250);

/// An eviction as sent to the previous owner: `[revision u64 LE][inbox length u16 LE]
/// [inbox][client id]`; an empty inbox asks for no session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvictRequest {
    /// The revision the taker wrote: the eviction applies to an ownership older than it.
    pub revision: u64,
    /// Where to send the session, if the taker resumes it.
    pub inbox: Option<String>,
    pub client_id: Bytes,
}

impl EvictRequest {
    pub fn encode(&self) -> Bytes {
        let inbox = self.inbox.as_deref().unwrap_or("");
        let inbox = &inbox.as_bytes()[..inbox.len().min(usize::from(u16::MAX))];
        let mut body = Vec::with_capacity(10 + inbox.len() + self.client_id.len());
        body.extend_from_slice(&self.revision.to_le_bytes());
        body.extend_from_slice(&(inbox.len() as u16).to_le_bytes());
        body.extend_from_slice(inbox);
        body.extend_from_slice(&self.client_id);
        Bytes::from(body)
    }

    pub fn parse(body: &Bytes) -> Option<EvictRequest> {
        let revision = u64::from_le_bytes(body.get(..8)?.try_into().ok()?);
        let inbox_len = usize::from(u16::from_le_bytes(body.get(8..10)?.try_into().ok()?));
        let inbox = std::str::from_utf8(body.get(10..10 + inbox_len)?).ok()?;
        let client_id = body.slice(10 + inbox_len..);
        Some(EvictRequest { revision, inbox: (!inbox.is_empty()).then(|| inbox.to_string()), client_id })
    }
}

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
    /// The session records (`records`), once open: read for a session whose owner died.
    pub records_store: Option<async_nats::jetstream::kv::Store>,
    /// The wills task has opened its buckets (the records bucket is made after them).
    pub wills_open: bool,
    /// `--cluster-durable`, and its stream once open: read for a dead node's session.
    pub durable: bool,
    pub durable_stream: Option<async_nats::jetstream::stream::Stream>,
    /// Replays reading the stream at once (`message_stream::replay_to`): a dead node's
    /// clients coming back together do not each scan it at the same time.
    pub replays: Rc<tokio::sync::Semaphore>,
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

/// Settles one claim and tells the home shard. If the id was another process's: with
/// `resume`, first takes the session from it (which also closes its connection); without,
/// first asks it to close its connection and end the session (best effort: a dead node
/// cannot answer), then answers.
pub async fn claim(owners: Rc<RefCell<Owners>>, client_id: Bytes, shard: usize, persistent: bool, resume: bool) {
    owners.borrow_mut().claiming.insert(client_id.clone(), 0);
    let outcome = take(&owners, &client_id).await;
    // Still `claiming` while the session comes: an eviction meanwhile is not lost.
    let (handed, from_record) = match outcome {
        ClaimOutcome::Granted { revision, previous: Some(previous) } if resume => {
            let (client, subject, records, cluster_name) = {
                let owners = owners.borrow();
                let subject = evict_subject(&owners.cluster_name, previous);
                (owners.client.clone(), subject, owners.records_store.clone(), owners.cluster_name.clone())
            };
            match fetch_session(&client, subject, revision, &client_id).await {
                Fetched::Session(bytes) => (Some(bytes), false),
                Fetched::NoSession => (None, false),
                // Dead, most likely: the session as its record left it (subscriptions,
                // not messages), if it kept one; with `--cluster-durable` its messages
                // follow once it is in place (`message_stream::replay_to`).
                Fetched::NoAnswer => match super::records::opened_or_bound(records, &client, &cluster_name).await {
                    Some(records) => (super::records::read(&records, previous, &client_id).await, true),
                    None => (None, false),
                },
            }
        }
        _ => (None, false),
    };
    let (target, evicted_meanwhile, evict) = {
        let mut owners = owners.borrow_mut();
        let evicted_at = owners.claiming.remove(&client_id).unwrap_or(0);
        match outcome {
            ClaimOutcome::Granted { revision, .. } if evicted_at > revision => (owners.to_shards[shard].clone(), true, None),
            ClaimOutcome::Granted { revision, previous } => {
                owners.held.insert(client_id.clone(), revision);
                let evict = previous.filter(|_| !resume).map(|previous| {
                    let request = EvictRequest { revision, inbox: None, client_id: client_id.clone() };
                    (owners.client.clone(), evict_subject(&owners.cluster_name, previous), request.encode())
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
    let handed = handed.filter(|_| granted && !evicted_meanwhile);
    let replay_from = handed.clone().filter(|_| from_record && owners.borrow().durable);
    // The previous owner hears first: it answers once the id's home shard there has let
    // go of it (`evict_then_answer`), so by the CONNACK a client straight back there finds
    // no session (that node answers an id it holds without asking). A dead node answers
    // "no responders" at once; a live one that is slow costs this CONNECT at most
    // STEP_TIMEOUT.
    if let Some((client, subject, body)) = evict {
        let _ = tokio::time::timeout(STEP_TIMEOUT, client.request(subject, body)).await;
    }
    let _ = target.send(FromCluster::ClaimAnswer { client_id: client_id.clone(), granted, verified, handed }).await;
    if granted && evicted_meanwhile {
        let _ = target.send(FromCluster::EvictRemote { client_id: client_id.clone(), handover: None, applied: None }).await;
    }
    if let Some(record) = replay_from {
        super::message_stream::replay_to(&owners, target, client_id, record).await;
    }
}

/// What the previous owner said to a handover request.
enum Fetched {
    Session(Bytes),
    /// It had none, or what it sent does not add up (the taker starts a fresh one).
    NoSession,
    /// Nobody listens on its control subject: it is dead (or cut off from NATS).
    NoAnswer,
}

/// Asks the previous owner (on `subject`) to close its connection for `client_id` and
/// send its session.
async fn fetch_session(client: &async_nats::Client, subject: String, revision: u64, client_id: &Bytes) -> Fetched {
    let inbox = client.new_inbox();
    let Ok(mut chunks) = client.subscribe(inbox.clone()).await else { return Fetched::NoAnswer };
    let request = EvictRequest { revision, inbox: Some(inbox), client_id: client_id.clone() };
    let request = client.request(subject.clone(), request.encode());
    tokio::pin!(request);
    let deadline = tokio::time::sleep(HANDOVER_ANSWER_TIMEOUT);
    tokio::pin!(deadline);
    let mut probes = tokio::time::interval_at(tokio::time::Instant::now() + LIVENESS_PROBE_PERIOD, LIVENESS_PROBE_PERIOD);
    // A probe can take its whole period: the next waits a period after it, not at once.
    probes.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A dead node: no responders. One that is slow past the timeout still acts on the
    // request (it ends the session), so the taker starts fresh.
    let answer = loop {
        tokio::select! {
            answer = &mut request => match answer {
                Ok(answer) => break answer,
                Err(error) if error.kind() == async_nats::RequestErrorKind::NoResponders => return Fetched::NoAnswer,
                Err(_) => return slow_owner(client_id),
            },
            _ = &mut deadline => return slow_owner(client_id),
            _ = probes.tick() => {
                if is_gone(client, &subject).await {
                    return Fetched::NoAnswer;
                }
            }
        }
    };
    if answer.payload.first() != Some(&1) {
        return Fetched::NoSession;
    }
    let mut assembly = Assembly::default();
    let assembled = tokio::time::timeout(HANDOVER_CHUNKS_TIMEOUT, async {
        while let Some(chunk) = chunks.next().await {
            match assembly.add(&chunk.payload) {
                Ok(Some(whole)) => return Ok(whole),
                Ok(None) => {}
                Err(error) => return Err(error),
            }
        }
        Err(HandoverError::Damaged)
    })
    .await;
    match assembled {
        Ok(Ok(whole)) => Fetched::Session(whole),
        Ok(Err(error)) => {
            tracing::warn!(client_id = %String::from_utf8_lossy(client_id), %error, "cluster: a session handed over is refused; it starts fresh");
            Fetched::NoSession
        }
        Err(_) => {
            tracing::warn!(client_id = %String::from_utf8_lossy(client_id), "cluster: a session handed over did not arrive in time; it starts fresh");
            Fetched::NoSession
        }
    }
}

fn slow_owner(client_id: &Bytes) -> Fetched {
    tracing::warn!(client_id = %String::from_utf8_lossy(client_id), "cluster: the node that held a session did not answer in time; it starts fresh");
    Fetched::NoSession
}

/// Whether nobody listens on a node's control subject any more (a ping, an empty body,
/// is answered at once by a live node; a busy one's silence is not taken for death).
async fn is_gone(client: &async_nats::Client, subject: &str) -> bool {
    let ping = client.request(subject.to_string(), Bytes::new());
    matches!(
        tokio::time::timeout(LIVENESS_PROBE_PERIOD, ping).await,
        Ok(Err(error)) if error.kind() == async_nats::RequestErrorKind::NoResponders
    )
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

/// Answers other nodes' evictions (`EvictRequest`): the id's home shard closes our
/// connection for it, if we took the id before that revision, and with an inbox, hands
/// the session over (`hand_over`, its own task: a big session must not hold up others).
pub async fn listen_for_evictions(mut requests: async_nats::Subscriber, owners: Rc<RefCell<Owners>>) {
    while let Some(request) = requests.next().await {
        if request.payload.is_empty() {
            // A taker's liveness probe (`is_gone`).
            if let Some(reply) = request.reply {
                let client = owners.borrow().client.clone();
                let _ = client.publish(reply, Bytes::new()).await;
            }
            continue;
        }
        let Some(EvictRequest { revision, inbox, client_id }) = EvictRequest::parse(&request.payload) else { continue };
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
        match (target, inbox) {
            (Some(target), Some(inbox)) => {
                tokio::task::spawn_local(hand_over(target, client, client_id, inbox, request.reply));
            }
            (Some(target), None) => {
                tokio::task::spawn_local(evict_then_answer(target, client, client_id, request.reply));
            }
            (None, _) => {
                if let Some(reply) = request.reply {
                    // "No session here" to a taker that asked for one.
                    let _ = client.publish(reply, Bytes::from_static(&[0])).await;
                }
            }
        }
    }
}

/// Our connection for `client_id` goes, and its session ends (a Clean Start elsewhere);
/// the answer (`[0]`: no session sent) waits until the home shard has let go of the id,
/// so the taker's CONNACK comes after it: a client straight back here then finds no
/// session (the shard would resume an id it still held without asking the cluster).
async fn evict_then_answer(
    target: mpsc::Sender<FromCluster>,
    client: async_nats::Client,
    client_id: Bytes,
    reply: Option<async_nats::Subject>,
) {
    let (applied, let_go) = tokio::sync::oneshot::channel();
    if target.send(FromCluster::EvictRemote { client_id, handover: None, applied: Some(applied) }).await.is_err() {
        return;
    }
    // Dropped by the shard once applied (or with the shard): either way, done waiting.
    let _ = tokio::time::timeout(HANDOVER_SHARD_WAIT, let_go).await;
    if let Some(reply) = reply {
        let _ = client.publish(reply, Bytes::from_static(&[0])).await;
    }
}

/// Our connection for `client_id` goes, and its session to `inbox` in chunks that fit the
/// server's message size; the answer (`[1]`: sent, `[0]`: none) follows the last chunk.
async fn hand_over(
    target: mpsc::Sender<FromCluster>,
    client: async_nats::Client,
    client_id: Bytes,
    inbox: String,
    reply: Option<async_nats::Subject>,
) {
    let (sender, session) = tokio::sync::oneshot::channel();
    if target.send(FromCluster::EvictRemote { client_id, handover: Some(sender), applied: None }).await.is_err() {
        return;
    }
    let session = tokio::time::timeout(HANDOVER_SHARD_WAIT, session).await.ok().and_then(Result::ok).filter(|bytes| !bytes.is_empty());
    if let Some(bytes) = &session {
        let chunk_bytes_max = client.server_info().max_payload.max(4096);
        for chunk in handover::chunk(bytes, chunk_bytes_max) {
            if client.publish(inbox.clone(), chunk).await.is_err() {
                return;
            }
        }
    }
    if let Some(reply) = reply {
        let _ = client.publish(reply, Bytes::from_static(if session.is_some() { &[1] } else { &[0] })).await;
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

    #[test]
    fn eviction_requests_round_trip_and_bad_ones_are_refused() {
        for inbox in [None, Some("_INBOX.abc.def".to_string())] {
            for client_id in [&b""[..], b"c", b"a client id with spaces"] {
                let request = EvictRequest { revision: 42, inbox: inbox.clone(), client_id: Bytes::copy_from_slice(client_id) };
                assert_eq!(EvictRequest::parse(&request.encode()), Some(request));
            }
        }
        assert_eq!(EvictRequest::parse(&Bytes::from_static(b"short")), None);
        let mut inbox_past_the_end = 1u64.to_le_bytes().to_vec();
        inbox_past_the_end.extend_from_slice(&100u16.to_le_bytes());
        inbox_past_the_end.extend_from_slice(b"_INBOX");
        assert_eq!(EvictRequest::parse(&Bytes::from(inbox_past_the_end)), None);
    }
}
