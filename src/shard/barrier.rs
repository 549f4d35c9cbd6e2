//! Requests a shard sends to its peers, which each peer answers once applied, and what
//! waits for those answers: a SUBACK that must not go out before every peer routes by the
//! new subscription, a session that must not leave before every peer sends its new shard
//! everything. A peer's answer travels behind everything it sent before, so once it is in,
//! every publish that peer routed by the old state has arrived here too.

use std::collections::HashMap;

use super::mesh::ShardId;

#[derive(Debug)]
struct Open {
    remaining: usize,
    /// Each answering peer's publish sequence number when it applied the request.
    positions: Vec<u64>,
}

#[derive(Debug)]
struct Waiting<T> {
    needs: Vec<u64>,
    then: T,
}

#[derive(Debug)]
pub struct Barriers<T> {
    shard_count: usize,
    next: u64,
    open: HashMap<u64, Open>,
    waiting: Vec<Waiting<T>>,
}

impl<T> Barriers<T> {
    pub fn new(shard_count: usize) -> Self {
        Barriers { shard_count, next: 0, open: HashMap::new(), waiting: Vec::new() }
    }

    /// A fresh request number; nothing is open under it until `expect`.
    pub fn new_request(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    /// `answers` more answers are due for `request` (one per message sent with it).
    pub fn expect(&mut self, request: u64, answers: usize) {
        if answers == 0 {
            return;
        }
        let shard_count = self.shard_count;
        self.open.entry(request).or_insert_with(|| Open { remaining: 0, positions: vec![0; shard_count] }).remaining += answers;
    }

    #[cfg(test)]
    fn is_open(&self, request: u64) -> bool {
        self.open.contains_key(&request)
    }

    /// One answer. When it was the last, the request closes and each peer's position
    /// (0 for peers that were not asked) comes back.
    pub fn answered(&mut self, request: u64, from: ShardId, position: u64) -> Option<Vec<u64>> {
        let open = self.open.get_mut(&request)?;
        open.positions[from.0] = open.positions[from.0].max(position);
        open.remaining -= 1;
        if open.remaining > 0 {
            return None;
        }
        self.open.remove(&request).map(|open| open.positions)
    }

    /// Runs `then` once none of `needs` is open: returned at once if none is now.
    pub fn wait(&mut self, mut needs: Vec<u64>, then: T) -> Option<T> {
        needs.retain(|request| self.open.contains_key(request));
        if needs.is_empty() {
            return Some(then);
        }
        self.waiting.push(Waiting { needs, then });
        None
    }

    /// What no longer waits for anything, in the order it started waiting.
    pub fn ready(&mut self) -> Vec<T> {
        let open = &self.open;
        let mut ready = Vec::new();
        let mut index = 0;
        while index < self.waiting.len() {
            self.waiting[index].needs.retain(|request| open.contains_key(request));
            if self.waiting[index].needs.is_empty() {
                ready.push(self.waiting.remove(index).then);
            } else {
                index += 1;
            }
        }
        ready
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
}
