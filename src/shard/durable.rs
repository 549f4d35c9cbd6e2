//! The shard's side of session persistence (`--data-dir`): which sessions are persistent,
//! the records their arrivals, state changes and ends produce, the batch the runtime's
//! writer takes every `--fsync-interval-ms`, and the sessions read back at start-up.
//!
//! A session is persistent while its expiry outlives its connection (3.1.1 clean session
//! 0, 5.0 Session Expiry Interval > 0). Its `Session` records its own changes (the
//! journal, `session/journal.rs`); this shard adds what only it knows (the header: online,
//! will, expiry deadline) and the slot that names the session in this shard's log. Every
//! arrival (connect, takeover from another shard, restore) opens a new instance under a
//! new epoch from the broker-wide counter, written whole; the newest epoch of a client id
//! wins at recovery, so a session that moved between shards needs no record at its old one.

use std::sync::atomic::{AtomicU64, Ordering};

use super::durability::Durability;
use super::*;
use crate::persist::retained::Clock;
use crate::persist::session::{LoggedSession, LoggedWill, SessionEncoder, SessionHeader, instant_of, unix_ms_of};
use crate::session::SessionEvent;

/// Records not yet written, and how to write the next ones.
pub(super) struct SessionLog {
    encoder: SessionEncoder,
    records: Vec<u8>,
    epochs: Arc<AtomicU64>,
    rewrite_needed: bool,
    scratch: Vec<SessionEvent>,
    /// Wills of sessions that expired while the broker was down, sent at the first tick.
    wills_due: Vec<(Bytes, Box<Will>)>,
    /// Per peer: the position in its publish stream last reported durable to it.
    reported: Vec<u64>,
    /// Every end written in this generation (client id -> epoch), written again by each
    /// compaction: an older instance of the session may sit in another shard's file.
    tombstones: HashMap<Bytes, u64>,
}

/// What the writer commits next, and what its commit will prove.
pub struct Commit {
    /// The `Durability` batch closed for it.
    pub batch: u64,
    pub sessions: SessionBatch,
    /// Every shard's publish stream position applied here when the batch closed.
    pub seen: Vec<u64>,
}

/// What the writer commits next.
pub struct SessionBatch {
    pub records: Vec<u8>,
    /// The log must be written whole (`session_snapshot`) instead: a write failed.
    pub rewrite_needed: bool,
}

fn expiry_interval_s(expiry: SessionExpiry) -> u32 {
    match expiry {
        SessionExpiry::WithConnection => 0,
        SessionExpiry::Never => u32::MAX,
        SessionExpiry::After(after) => after.as_secs().min(u64::from(u32::MAX - 1)) as u32,
    }
}

pub(super) fn header_of(client: &Client, clock: Clock) -> SessionHeader {
    let lifecycle = &client.lifecycle;
    let will = match (lifecycle.live_will(), lifecycle.pending_will()) {
        (Some(will), _) => Some(LoggedWill { will: will.clone(), due_at_ms: 0 }),
        (None, Some((due, will))) => Some(LoggedWill { will: will.clone(), due_at_ms: unix_ms_of(due, clock) }),
        (None, None) => None,
    };
    SessionHeader {
        version: client.version,
        expiry_interval_s: expiry_interval_s(lifecycle.expiry()),
        online: client.link.is_some(),
        ends_at_ms: lifecycle.ends_at().map_or(0, |at| unix_ms_of(at, clock)),
        will,
    }
}

impl Shard {
    /// Turns session persistence on, before the shard serves anyone; `epochs` is shared
    /// by every shard and starts above every epoch in the logs.
    pub fn keep_session_log(&mut self, epochs: Arc<AtomicU64>) {
        self.session_log = Some(SessionLog {
            encoder: SessionEncoder::default(),
            records: Vec::new(),
            epochs,
            rewrite_needed: false,
            scratch: Vec::new(),
            wills_due: Vec::new(),
            reported: vec![0; self.shard_count],
            tombstones: HashMap::new(),
        });
    }

    /// A client settled in slot `key` (connect, takeover, restore): a persistent session
    /// is written whole under a new epoch; a session that stopped being persistent (a
    /// reconnect with expiry 0) ends on disk.
    pub(super) fn session_arrived(&mut self, key: ClientKey) {
        let Some(log) = self.session_log.as_mut() else { return };
        let client = self.clients.get_mut(key);
        let epoch = log.epochs.fetch_add(1, Ordering::Relaxed);
        if client.lifecycle.expiry() == SessionExpiry::WithConnection {
            if client.session.is_journaled() {
                client.session.disable_journal();
                log.encoder.end(epoch, client.session.client_id(), &mut log.records);
                log.tombstones.insert(client.session.client_id().clone(), epoch);
            }
            return;
        }
        client.session.enable_journal();
        client.session.clear_journal();
        if let Some(link) = &client.link {
            link.set_persistent(true);
        }
        let clock = Clock::system();
        let header = header_of(client, clock);
        log.encoder.open(key.0, epoch, client.session.client_id(), &header, clock, &mut log.records);
        log.encoder.events(key.0, &client.session.snapshot(), clock, &mut log.records);
    }

    /// The header of the persistent session in `key` changed (its connection went, its
    /// will was sent): its pending events first, then the new header.
    pub(super) fn session_state_changed(&mut self, key: ClientKey) {
        self.record_changed_of(key, false);
        let Some(log) = self.session_log.as_mut() else { return };
        let client = self.clients.get_mut(key);
        if !client.session.is_journaled() {
            return;
        }
        let clock = Clock::system();
        client.session.take_journal(&mut log.scratch);
        log.encoder.events(key.0, &log.scratch, clock, &mut log.records);
        log.scratch.clear();
        log.encoder.state(key.0, &header_of(client, clock), clock, &mut log.records);
    }

    /// A persistent session is over (expired, ended with its connection, replaced by a
    /// clean start): no instance of its client id from before now is restored.
    pub(super) fn session_ended(&mut self, session: &mut Session) {
        self.record_changed(session.client_id());
        let Some(log) = self.session_log.as_mut() else { return };
        if session.is_journaled() {
            session.disable_journal();
            let epoch = log.epochs.fetch_add(1, Ordering::Relaxed);
            log.encoder.end(epoch, session.client_id(), &mut log.records);
            log.tombstones.insert(session.client_id().clone(), epoch);
        }
    }

    /// What changed since the last batch: every session's recorded events after the
    /// records made at arrivals, state changes and ends.
    pub fn take_session_batch(&mut self) -> SessionBatch {
        let Some(log) = self.session_log.as_mut() else { return SessionBatch { records: Vec::new(), rewrite_needed: false } };
        let clock = Clock::system();
        for (key, client) in self.clients.iter_mut() {
            if client.session.has_journal_events() {
                client.session.take_journal(&mut log.scratch);
                log.encoder.events(key.0, &log.scratch, clock, &mut log.records);
                log.scratch.clear();
            }
        }
        SessionBatch { records: std::mem::take(&mut log.records), rewrite_needed: log.rewrite_needed }
    }

    /// Every persistent session written whole (a compacted log, or the first log after a
    /// failed write); what was pending is covered by it.
    pub fn session_snapshot(&mut self) -> Vec<u8> {
        let Some(log) = self.session_log.as_mut() else { return Vec::new() };
        log.encoder.reset();
        log.records.clear();
        log.rewrite_needed = false;
        let clock = Clock::system();
        let mut records = Vec::new();
        for (client_id, &epoch) in &log.tombstones {
            log.encoder.end(epoch, client_id, &mut records);
        }
        for (key, client) in self.clients.iter_mut() {
            if !client.session.is_journaled() {
                continue;
            }
            client.session.clear_journal();
            let epoch = log.epochs.fetch_add(1, Ordering::Relaxed);
            log.encoder.open(key.0, epoch, client.session.client_id(), &header_of(client, clock), clock, &mut records);
            log.encoder.events(key.0, &client.session.snapshot(), clock, &mut records);
        }
        records
    }

    /// Sends the wills of sessions that expired while the broker was down (from the first
    /// tick, once the mesh serves: they may go to any shard).
    pub(super) fn send_wills_of_expired_sessions(&mut self, now: Instant) {
        let Some(log) = self.session_log.as_mut() else { return };
        if log.wills_due.is_empty() {
            return;
        }
        for (client_id, will) in std::mem::take(&mut log.wills_due) {
            self.publish_will(*will, client_id, now);
        }
    }

    /// With `--data-dir`: the shard tracks its commits (and under `sync` holds output for
    /// them); the writer advances it.
    pub fn enable_durability(&mut self, holds_output: bool) -> Rc<Durability> {
        let durability = Rc::new(Durability::new(self.shard_count, holds_output));
        self.durability = Some(durability.clone());
        durability
    }

    pub fn durability_handle(&self) -> Option<Rc<Durability>> {
        self.durability.clone()
    }

    /// Writer side: closes the open batch and takes what is in it. Nothing may change
    /// between this and taking the retained journal (no await in between).
    pub fn take_commit(&mut self) -> Commit {
        let batch = self.durability.as_ref().map_or(0, |durability| durability.close_batch());
        Commit { batch, sessions: self.take_session_batch(), seen: self.streams.seen.clone() }
    }

    /// Writer side: `commit` is on disk. Output waiting for it goes; each peer whose
    /// publishes we applied since the last report hears how far they are durable here.
    pub fn commit_done(&mut self, commit: &Commit, now: Instant) {
        let Some(durability) = self.durability.clone() else { return };
        durability.committed(commit.batch);
        if !durability.holds_output() {
            return;
        }
        let Some(log) = self.session_log.as_mut() else { return };
        let mut reports = Vec::new();
        for (peer, (&seen, reported)) in commit.seen.iter().zip(log.reported.iter_mut()).enumerate() {
            if peer != self.id.0 && seen > *reported {
                *reported = seen;
                reports.push((ShardId(peer), seen));
            }
        }
        for (peer, position) in reports {
            self.send(peer, MeshMessage::Durable { position }, now);
        }
    }

    /// Writer side: the commit failed. Held output is dropped (those clients are
    /// disconnected and send again), QoS 1/2 publishes are refused, until a commit succeeds.
    pub fn commit_failed(&mut self) {
        self.require_session_rewrite();
        if let Some(durability) = &self.durability {
            durability.failed();
        }
    }

    /// A write failed: the records since the last good one are lost from the file, so the
    /// next commit writes everything whole.
    pub fn require_session_rewrite(&mut self) {
        if let Some(log) = self.session_log.as_mut() {
            log.rewrite_needed = true;
        }
    }

    /// Puts the sessions read back at start-up in place, before the shard serves anyone:
    /// the ones whose client id this shard is home for live here, offline; every shard
    /// learns which peer wants which filters, and the shared-group members, directly, so
    /// no publish taken after start-up can miss a restored subscriber.
    pub fn restore_sessions(&mut self, sessions: &[LoggedSession], ended: &[(Bytes, u64)], now: Instant) {
        let clock = Clock { now, unix_ms: Clock::system().unix_ms };
        if let Some(log) = self.session_log.as_mut() {
            for (client_id, epoch) in ended.iter().filter(|(client_id, _)| home_shard(client_id, self.shard_count) == self.id) {
                log.encoder.end(*epoch, client_id, &mut log.records);
                log.tombstones.insert(client_id.clone(), *epoch);
            }
        }
        for logged in sessions {
            let home = home_shard(&logged.client_id, self.shard_count);
            if logged.expired {
                // Expired while the broker was down (decided once, at recovery, so every
                // shard skips the same sessions): gone, its will (if still waiting) sent.
                if home == self.id {
                    self.counters.sessions_expired += 1;
                    if let (Some(log), Some(logged_will)) = (self.session_log.as_mut(), &logged.header.will) {
                        log.wills_due.push((logged.client_id.clone(), Box::new(logged_will.will.clone())));
                    }
                }
                continue;
            }
            if home != self.id {
                for (filter, subscription) in logged.session.subscriptions() {
                    match filter {
                        Filter::Plain(text) => self.interest.peer_join(text, home),
                        Filter::Shared { group, filter } => {
                            // The cluster gateway learns restored groups when it attaches.
                            self.shared.join(group.clone(), filter.clone(), home, logged.client_id.clone(), subscription.options.qos);
                        }
                    }
                }
                continue;
            }
            let header = &logged.header;
            let deadline = |unix_ms: u64| (unix_ms != 0).then(|| instant_of(unix_ms, clock).unwrap_or(now));
            let (live_will, pending_will) = match &header.will {
                None => (None, None),
                Some(LoggedWill { will, due_at_ms: 0 }) => (Some(Box::new(will.clone())), None),
                Some(LoggedWill { will, due_at_ms }) => (None, deadline(*due_at_ms).map(|due| (due, Box::new(will.clone())))),
            };
            let expiry = SessionExpiry::from_interval(header.expiry_interval_s);
            let lifecycle = Lifecycle::restored(expiry, header.online, live_will, pending_will, deadline(header.ends_at_ms), now);
            self.connecting.accepted += 1;
            let conn_id = ConnId::new(self.id, self.connecting.accepted);
            let client = Client {
                session: logged.session.clone(),
                link: None,
                conn_id,
                version: header.version,
                connection: Connection::new(0, u32::MAX, 0, None, now),
                lifecycle,
                skip_until: None,
                stalled_since: None,
                paused_publishers: HashSet::new(),
                retained_backlog: None,
                authorization: None,
                username: None,
            };
            let key = self.clients.insert(client);
            self.registry.owners.insert(logged.client_id.clone(), conn_id);
            let subscriptions: Vec<(Filter, Subscription)> =
                self.clients.get(key).session.subscriptions().map(|(filter, subscription)| (filter.clone(), *subscription)).collect();
            for (filter, subscription) in subscriptions {
                match filter {
                    Filter::Plain(text) => {
                        self.subscriptions.insert_new(&text, key, subscription);
                        let request = self.barriers.new_request();
                        self.interest.restore_local(&text, request);
                    }
                    Filter::Shared { group, filter } => {
                        self.shared.join(group, filter, self.id, logged.client_id.clone(), subscription.options.qos);
                    }
                }
            }
            self.session_arrived(key);
        }
    }
}
