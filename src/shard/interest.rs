//! The interest summary: which shards have a subscriber for which filter, so that a publish
//! travels only to shards that may deliver it instead of to every shard.
//!
//! Each shard announces a filter to its peers when its first local subscription to it
//! appears, and withdraws it (lazily, at the next timer tick) when the last one is gone.
//! Announcements are confirmed by every peer before the SUBACK that caused them is sent,
//! so the summary a publisher's shard consults is never missing a subscription its client
//! has been told about; a late withdrawal only costs a wasted hop.
//!
//! A session moving to another shard is covered by a *receive-all* hold: while it is in
//! transit every shard sends that shard every publish, until the session's own filters
//! are announced from its new home (see `Shard::on_evict`).

use std::collections::HashMap;

use bytes::Bytes;

use crate::topics::SubscriptionTree;

use super::barrier::RequestId;
use super::mesh::ShardId;

/// What a new local subscription to a filter means for the peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalAdd {
    /// First subscriber here: announce the filter to every peer.
    Announce,
    /// Already announced by the request with this number (it may still be unconfirmed).
    AnnouncedBy(RequestId),
}

#[derive(Debug)]
struct LocalFilter {
    subscribers: u32,
    announced_by: RequestId,
}

pub struct Interest {
    peers: SubscriptionTree<ShardId, ()>,
    local: HashMap<Bytes, LocalFilter>,
    /// Filters whose last local subscriber left; withdrawn at the next tick if still unused.
    unused: Vec<Bytes>,
    /// Per shard: sessions in transit to it, each of which makes it receive everything.
    receive_all: Vec<u32>,
    receive_all_shards: usize,
}

impl Interest {
    pub fn new(shard_count: usize) -> Interest {
        Interest {
            peers: SubscriptionTree::default(),
            local: HashMap::new(),
            unused: Vec::new(),
            receive_all: vec![0; shard_count],
            receive_all_shards: 0,
        }
    }

    /// A local subscription to `filter` was added (not replaced).
    pub fn add_local(&mut self, filter: &Bytes) -> LocalAdd {
        match self.local.get_mut(filter) {
            Some(entry) => {
                entry.subscribers += 1;
                LocalAdd::AnnouncedBy(entry.announced_by)
            }
            None => LocalAdd::Announce,
        }
    }

    /// Records that `request` announced `filter` (after `add_local` said `Announce`).
    pub fn announced(&mut self, filter: Bytes, request: RequestId) {
        self.local.insert(filter, LocalFilter { subscribers: 1, announced_by: request });
    }

    /// A local subscription restored at start-up: every peer learned it directly (see
    /// `Shard::restore_sessions`), so it counts as announced by `request`, which nobody
    /// waits for.
    pub fn restore_local(&mut self, filter: &Bytes, request: RequestId) {
        self.local.entry(filter.clone()).or_insert(LocalFilter { subscribers: 0, announced_by: request }).subscribers += 1;
    }

    /// Every filter announced from here (the cluster gateway learns them when it attaches).
    pub fn local_filters(&self) -> impl Iterator<Item = &Bytes> {
        self.local.keys()
    }

    /// A local subscription to `filter` was removed.
    pub fn remove_local(&mut self, filter: &[u8]) {
        if let Some(entry) = self.local.get_mut(filter) {
            entry.subscribers = entry.subscribers.saturating_sub(1);
            if entry.subscribers == 0 {
                self.unused.push(Bytes::copy_from_slice(filter));
            }
        }
    }

    /// Filters to withdraw now: unused since they were last given up.
    pub fn take_unused(&mut self) -> Vec<Bytes> {
        let mut withdrawn = std::mem::take(&mut self.unused);
        withdrawn.retain(|filter| match self.local.get(filter) {
            Some(entry) if entry.subscribers == 0 => {
                self.local.remove(filter);
                true
            }
            _ => false,
        });
        withdrawn
    }

    pub fn peer_join(&mut self, filter: &[u8], shard: ShardId) {
        self.peers.insert(filter, shard, ());
    }

    pub fn peer_leave(&mut self, filter: &[u8], shard: ShardId) {
        self.peers.remove(filter, &shard);
    }

    pub fn hold_receive_all(&mut self, shard: ShardId) {
        if self.receive_all[shard.0] == 0 {
            self.receive_all_shards += 1;
        }
        self.receive_all[shard.0] += 1;
    }

    pub fn release_receive_all(&mut self, shard: ShardId) {
        debug_assert!(self.receive_all[shard.0] > 0, "a release follows its hold");
        if self.receive_all[shard.0] == 1 {
            self.receive_all_shards -= 1;
        }
        self.receive_all[shard.0] = self.receive_all[shard.0].saturating_sub(1);
    }

    /// Marks in `targets` (indexed by shard) every peer that may deliver `topic`. True if any.
    pub fn mark_targets(&self, topic: &[u8], targets: &mut [bool]) -> bool {
        let mut any = false;
        self.peers.for_each_match(topic, |shard, _| {
            targets[shard.0] = true;
            any = true;
        });
        if self.receive_all_shards > 0 {
            for (target, &holds) in targets.iter_mut().zip(&self.receive_all) {
                if holds > 0 {
                    *target = true;
                    any = true;
                }
            }
        }
        any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets(interest: &Interest, topic: &str) -> Vec<usize> {
        let mut marks = vec![false; 4];
        interest.mark_targets(topic.as_bytes(), &mut marks);
        marks.iter().enumerate().filter(|&(_, &m)| m).map(|(i, _)| i).collect()
    }

    #[test]
    fn peers_are_targeted_by_their_filters() {
        let mut interest = Interest::new(4);
        interest.peer_join(b"a/+", ShardId(1));
        interest.peer_join(b"a/b", ShardId(2));
        interest.peer_join(b"#", ShardId(3));
        assert_eq!(targets(&interest, "a/b"), vec![1, 2, 3]);
        assert_eq!(targets(&interest, "a/c"), vec![1, 3]);
        assert_eq!(targets(&interest, "$SYS/x"), Vec::<usize>::new(), "# does not match $ topics");
        interest.peer_leave(b"#", ShardId(3));
        assert_eq!(targets(&interest, "z"), Vec::<usize>::new());
    }

    #[test]
    fn announce_once_and_withdraw_lazily() {
        let mut interest = Interest::new(2);
        let filter = Bytes::from_static(b"t/#");
        let request = crate::shard::barrier::Barriers::<()>::new(2).new_request();
        assert_eq!(interest.add_local(&filter), LocalAdd::Announce);
        interest.announced(filter.clone(), request);
        assert_eq!(interest.add_local(&filter), LocalAdd::AnnouncedBy(request));
        interest.remove_local(&filter);
        interest.remove_local(&filter);
        // Given up and taken again before the tick: nothing to withdraw, nothing to announce.
        assert_eq!(interest.add_local(&filter), LocalAdd::AnnouncedBy(request));
        assert!(interest.take_unused().is_empty());
        interest.remove_local(&filter);
        assert_eq!(interest.take_unused(), vec![filter.clone()]);
        assert_eq!(interest.add_local(&filter), LocalAdd::Announce);
    }

    #[test]
    fn receive_all_holds_nest() {
        let mut interest = Interest::new(4);
        interest.hold_receive_all(ShardId(2));
        interest.hold_receive_all(ShardId(2));
        assert_eq!(targets(&interest, "anything"), vec![2]);
        interest.release_receive_all(ShardId(2));
        assert_eq!(targets(&interest, "anything"), vec![2]);
        interest.release_receive_all(ShardId(2));
        assert_eq!(targets(&interest, "anything"), Vec::<usize>::new());
    }
}
