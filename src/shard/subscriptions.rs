//! One subscription, kept in step everywhere it lives: the session (what the client holds
//! and what moves with it between shards), the shard's trie (plain filters, matched per
//! publish), the interest summary (which tells the peers to send matching publishes here)
//! and every shard's replica of the shared groups. Every path that adds or removes a
//! subscription — SUBSCRIBE, UNSUBSCRIBE, a session arriving or leaving — goes through here.

use super::*;

/// Why a subscription the session holds is being put into the shard's indexes.
#[derive(Debug, Clone, Copy)]
pub(super) enum Indexing {
    /// A SUBSCRIBE: its SUBACK waits for the announcements made under this request, and
    /// publishes that crossed the announcement are delivered late.
    Subscribe(RequestId),
    /// A session arriving on this shard (new, or handed over): its catch-up covers the
    /// publishes in flight, and nobody waits for the announcements.
    SessionArrived(RequestId),
}

/// What `add_subscription` did.
pub(super) struct SubscriptionAdded {
    /// It replaced a subscription to the same filter.
    pub(super) existed: bool,
    /// An earlier or new announcement the SUBACK must wait for, beyond the request's own.
    pub(super) wait_for: Option<RequestId>,
}

impl Shard {
    /// The client `key` subscribes to `filter` (or changes the options of its subscription).
    pub(super) fn add_subscription(
        &mut self,
        key: ClientKey,
        filter: Filter,
        subscription: Subscription,
        request: RequestId,
        now: Instant,
    ) -> SubscriptionAdded {
        let existed = self.client(key).session.subscribe(filter.clone(), subscription);
        self.record_changed_of(key, true);
        let wait_for = self.index_subscription(key, &filter, subscription, !existed, Indexing::Subscribe(request), now);
        SubscriptionAdded { existed, wait_for }
    }

    /// The client `key` unsubscribes from the filter it wrote as `text`; false if it held
    /// no such subscription.
    pub(super) fn remove_subscription(&mut self, key: ClientKey, text: &[u8], request: RequestId, now: Instant) -> bool {
        let client = self.client(key);
        let Some(filter) = client.session.unsubscribe(text) else { return false };
        let client_id = client.session.client_id().clone();
        self.record_changed_of(key, true);
        self.unindex_subscription(key, &client_id, &filter, Some(request), now);
        true
    }

    /// Puts every subscription of a session arriving here into the indexes.
    pub(super) fn index_session(&mut self, key: ClientKey, request: RequestId, now: Instant) {
        let subscriptions: Vec<(Filter, Subscription)> =
            self.clients.get(key).session.subscriptions().map(|(filter, subscription)| (filter.clone(), *subscription)).collect();
        for (filter, subscription) in subscriptions {
            self.index_subscription(key, &filter, subscription, true, Indexing::SessionArrived(request), now);
        }
    }

    /// Takes every subscription of a session leaving this shard (already out of the client
    /// slots) out of the indexes.
    pub(super) fn unindex_session(&mut self, key: ClientKey, session: &Session, now: Instant) {
        for (filter, _) in session.subscriptions() {
            self.unindex_subscription(key, session.client_id(), filter, None, now);
        }
    }

    /// `new`: the session did not hold this filter before (the interest summary counts
    /// subscribers per filter, so a replaced subscription is not counted twice).
    fn index_subscription(
        &mut self,
        key: ClientKey,
        filter: &Filter,
        subscription: Subscription,
        new: bool,
        indexing: Indexing,
        now: Instant,
    ) -> Option<RequestId> {
        let (request, late_since, answered) = match indexing {
            Indexing::Subscribe(request) => (request, Some(now), Some(request)),
            Indexing::SessionArrived(request) => (request, None, None),
        };
        match filter {
            Filter::Shared { group, filter } => {
                let client_id = self.clients.get(key).session.client_id().clone();
                self.broadcast_share_join(group.clone(), filter.clone(), client_id, subscription.options.qos, answered, now);
                None
            }
            Filter::Plain(text) => {
                if new {
                    // The trie mirrors the sessions: a filter new to the session is new here.
                    self.subscriptions.insert_new(text, key, subscription);
                } else {
                    self.subscriptions.insert(text, key, subscription);
                }
                new.then(|| self.add_interest(text, request, late_since, now))
            }
        }
    }

    fn unindex_subscription(&mut self, key: ClientKey, client_id: &Bytes, filter: &Filter, request: Option<RequestId>, now: Instant) {
        match filter {
            Filter::Shared { group, filter } => self.broadcast_share_leave(group.clone(), filter.clone(), client_id.clone(), request, now),
            Filter::Plain(text) => {
                self.subscriptions.remove(text, &key);
                self.interest.remove_local(text);
            }
        }
    }
}
