//! Requests a shard sends to its peers, which each peer answers once applied, and what
//! waits for those answers: a SUBACK that must not go out before every peer routes by the
//! new subscription, a session that must not leave before every peer sends its new shard
//! everything. A peer's answer travels behind everything it sent before, so once it is in,
//! every publish that peer routed by the old state has arrived here too.

use std::collections::{BTreeMap, HashMap};

use super::mesh::ShardId;

/// Names one request a shard sent its peers, so their `Applied` answers find it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(u64);

#[derive(Debug)]
struct Open {
    remaining: usize,
    /// Each answering peer's publish sequence number when it applied the request.
    positions: Vec<u64>,
    /// Waiting entries (by number) that this request holds up.
    holds: Vec<u64>,
}

#[derive(Debug)]
struct Waiting<T> {
    /// Open requests this still waits for.
    outstanding: usize,
    then: T,
}

/// Every operation is O(1) per answer and per waiting entry it releases: a request knows
/// what it holds up, and each waiting entry counts what it still needs. (Re-checking every
/// waiting entry on every answer made one client's 100,000 subscriptions quadratic.)
#[derive(Debug)]
pub struct Barriers<T> {
    shard_count: usize,
    next: u64,
    open: HashMap<RequestId, Open>,
    /// Keyed by the order they started waiting, so released entries go out in that order.
    waiting: BTreeMap<u64, Waiting<T>>,
    next_waiting: u64,
    /// Entries no longer waiting for anything, not yet taken by `ready`.
    released: Vec<u64>,
}

impl<T> Barriers<T> {
    pub fn new(shard_count: usize) -> Self {
        Barriers { shard_count, next: 0, open: HashMap::new(), waiting: BTreeMap::new(), next_waiting: 0, released: Vec::new() }
    }

    /// A fresh request number; nothing is open under it until `expect`.
    pub fn new_request(&mut self) -> RequestId {
        self.next += 1;
        RequestId(self.next)
    }

    /// `answers` more answers are due for `request` (one per message sent with it).
    pub fn expect(&mut self, request: RequestId, answers: usize) {
        if answers == 0 {
            return;
        }
        let shard_count = self.shard_count;
        self.open.entry(request).or_insert_with(|| Open { remaining: 0, positions: vec![0; shard_count], holds: Vec::new() }).remaining +=
            answers;
    }

    #[cfg(test)]
    fn is_open(&self, request: RequestId) -> bool {
        self.open.contains_key(&request)
    }

    /// One answer. When it was the last, the request closes, what waited only for it is
    /// released (see `ready`), and each peer's position (0 for peers not asked) comes back.
    pub fn answered(&mut self, request: RequestId, from: ShardId, position: u64) -> Option<Vec<u64>> {
        let open = self.open.get_mut(&request)?;
        open.positions[from.0] = open.positions[from.0].max(position);
        open.remaining -= 1;
        if open.remaining > 0 {
            return None;
        }
        let open = self.open.remove(&request)?;
        for entry in open.holds {
            if let Some(waiting) = self.waiting.get_mut(&entry) {
                waiting.outstanding -= 1;
                if waiting.outstanding == 0 {
                    self.released.push(entry);
                }
            }
        }
        Some(open.positions)
    }

    /// Runs `then` once none of `needs` is open: returned at once if none is now.
    pub fn wait(&mut self, mut needs: Vec<RequestId>, then: T) -> Option<T> {
        needs.sort_unstable();
        needs.dedup();
        let entry = self.next_waiting;
        let mut outstanding = 0;
        for request in needs {
            if let Some(open) = self.open.get_mut(&request) {
                open.holds.push(entry);
                outstanding += 1;
            }
        }
        if outstanding == 0 {
            return Some(then);
        }
        self.next_waiting += 1;
        self.waiting.insert(entry, Waiting { outstanding, then });
        None
    }

    /// What no longer waits for anything, in the order it started waiting.
    pub fn ready(&mut self) -> Vec<T> {
        if self.released.is_empty() {
            return Vec::new();
        }
        self.released.sort_unstable();
        let released = std::mem::take(&mut self.released);
        released.into_iter().filter_map(|entry| self.waiting.remove(&entry).map(|waiting| waiting.then)).collect()
    }

    #[cfg(test)]
    fn waiting_len(&self) -> usize {
        self.waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_for_every_answer_of_every_request() {
        let mut barriers: Barriers<&str> = Barriers::new(3);
        let first = barriers.new_request();
        barriers.expect(first, 2);
        let second = barriers.new_request();
        barriers.expect(second, 2);
        assert_eq!(barriers.wait(vec![first, second], "suback"), None);
        assert_eq!(barriers.answered(first, ShardId(1), 5), None);
        assert_eq!(barriers.answered(first, ShardId(2), 9), Some(vec![0, 5, 9]));
        assert!(barriers.ready().is_empty(), "second is still open");
        barriers.answered(second, ShardId(1), 6);
        barriers.answered(second, ShardId(2), 10);
        assert_eq!(barriers.ready(), vec!["suback"]);
        assert!(!barriers.is_open(first) && !barriers.is_open(second));
    }

    #[test]
    fn nothing_to_wait_for_runs_at_once() {
        let mut barriers: Barriers<u8> = Barriers::new(1);
        let request = barriers.new_request();
        barriers.expect(request, 0);
        assert!(!barriers.is_open(request));
        assert_eq!(barriers.wait(vec![request], 1), Some(1));
        assert_eq!(barriers.answered(request, ShardId(0), 1), None, "unknown requests are ignored");
    }

    #[test]
    fn released_entries_come_out_in_the_order_they_started_waiting() {
        let mut barriers: Barriers<u32> = Barriers::new(2);
        let requests: Vec<RequestId> = (0..3).map(|_| barriers.new_request()).collect();
        for &request in &requests {
            barriers.expect(request, 1);
        }
        assert_eq!(barriers.wait(vec![requests[2]], 0), None);
        assert_eq!(barriers.wait(vec![requests[1], requests[1]], 1), None, "a repeated need counts once");
        assert_eq!(barriers.wait(vec![requests[0], requests[2]], 2), None);
        barriers.answered(requests[1], ShardId(1), 0);
        barriers.answered(requests[2], ShardId(1), 0);
        assert_eq!(barriers.ready(), vec![0, 1]);
        barriers.answered(requests[0], ShardId(1), 0);
        assert_eq!(barriers.ready(), vec![2]);
        assert_eq!(barriers.waiting_len(), 0);
    }

    #[test]
    fn a_hundred_thousand_waiting_entries_release_in_linear_time() {
        let mut barriers: Barriers<u64> = Barriers::new(2);
        let mut requests = Vec::new();
        for index in 0..100_000u64 {
            let request = barriers.new_request();
            barriers.expect(request, 1);
            assert_eq!(barriers.wait(vec![request], index), None);
            requests.push(request);
        }
        // Each answer touches only what its request holds up: this loop is linear (it was
        // quadratic, every answer re-filtering every waiting entry).
        let mut released = 0;
        for request in requests {
            barriers.answered(request, ShardId(1), 0);
            released += barriers.ready().len();
        }
        assert_eq!(released, 100_000);
    }
}
