//! The shard's side of the cluster (`--cluster`): what it hands the gateway thread (its
//! clients' publishes and wills, its first and last subscription to each filter) and how
//! a message from another node enters it. Without `--cluster` every hook is one `None`
//! check.
//!
//! A message from another node is routed like one published here, except that it never
//! goes back to the cluster: the gateway gives each such message to one shard (chosen by
//! its topic, which keeps each topic's order), and that shard's `route` takes it to every
//! shard whose clients want it, retained replicas included.

use std::task::{Context, Poll};

use super::*;
use crate::cluster::port::{ClusterPort, FromCluster, ToGateway};

impl Shard {
    /// Turns the cluster on for this shard: from now on publishes and interest go to the
    /// gateway, starting with every filter already subscribed here (restored sessions).
    pub fn attach_cluster(&mut self) {
        let mut port = ClusterPort::default();
        for filter in self.interest.local_filters() {
            port.interest(filter.clone(), true);
        }
        if self.id.0 == 0 {
            for (group, filter) in self.shared.groups() {
                port.shared_interest(group.clone(), filter.clone(), true);
            }
        }
        self.cluster = Some(port);
    }

    pub fn is_clustered(&self) -> bool {
        self.cluster.is_some()
    }

    /// What waits for the gateway (the runtime's forwarding task).
    pub fn poll_cluster_outbox(&mut self, cx: &mut Context<'_>) -> Poll<Vec<ToGateway>> {
        match &mut self.cluster {
            Some(port) => port.poll_take(cx),
            None => Poll::Pending,
        }
    }

    /// What the gateway received from another node.
    pub fn from_cluster(&mut self, received: FromCluster, now: Instant) {
        self.counters.cluster_publishes_received += 1;
        match received {
            FromCluster::Publish(message) => {
                self.route(message, now);
            }
            FromCluster::Shared { group, filter, message } => self.deliver_cluster_shared(&group, &filter, message, now),
        }
    }

    /// NATS chose this node for a group's message: one member here takes it, on whichever
    /// shard it lives. A group emptied meanwhile misses it (`shared_misses`).
    fn deliver_cluster_shared(&mut self, group: &Bytes, filter: &Bytes, message: Arc<Message>, now: Instant) {
        match self.shared.pick(group, filter) {
            Some(target) if target.shard == self.id => self.deliver_shared(&target, &message, None, true, now),
            Some(target) => self.send(target.shard, MeshMessage::SharedRedeliver { target, message, forwarded: false }, now),
            None => self.counters.shared_misses += 1,
        }
    }

    /// A message published on this node (by a client or as a will): to the other nodes.
    pub(super) fn export_publish(&mut self, message: &Arc<Message>) {
        if let Some(port) = &mut self.cluster {
            if port.publish(message.clone()) {
                self.counters.cluster_publishes_sent += 1;
            } else {
                self.counters.cluster_publishes_dropped += 1;
            }
        }
    }

    /// The node's group `group` on `filter` was made or emptied (told once, by shard 0:
    /// every shard holds every group).
    pub(super) fn export_shared(&mut self, group: Bytes, filter: Bytes, subscribed: bool) {
        if self.id.0 == 0
            && let Some(port) = &mut self.cluster
        {
            port.shared_interest(group, filter, subscribed);
        }
    }

    /// This shard's first subscription to `filter` appeared, or its last one is gone.
    pub(super) fn export_interest(&mut self, filter: &Bytes, subscribed: bool) {
        if let Some(port) = &mut self.cluster {
            port.interest(filter.clone(), subscribed);
        }
    }
}
