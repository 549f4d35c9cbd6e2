//! What the admin API asks a shard and what it answers (pure): list and show the clients
//! this shard holds, disconnect one, list and clear retained messages (shard 0 answers
//! for the retained store, which every shard holds whole). The runtime hands queries over
//! at the shard's tick (`runtime/admin.rs`), never on the publish path.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use serde::Serialize;

use super::close::close_with_reason;
use crate::protocol::{QoS, ReasonCode};
use crate::session::Message;

#[derive(Debug, Clone)]
pub enum AdminQuery {
    /// Every client here whose id starts with `prefix`, user and address match (if given).
    Clients { prefix: String, user: Option<String>, address: Option<String> },
    /// One client, with its subscriptions.
    Client { client_id: Bytes },
    /// Close the client's connection (5.0 clients hear `reason`).
    Disconnect { client_id: Bytes, reason: ReasonCode },
    /// Retained messages whose topic `filter` matches (topic and size).
    Retained { filter: Bytes },
    /// Clear the retained message of `topic`, as an empty retained PUBLISH would.
    ClearRetained { topic: Bytes },
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ClientInfo {
    pub client_id: String,
    pub user: Option<String>,
    /// `None` while the session is offline.
    pub address: Option<String>,
    pub protocol: &'static str,
    pub connected: bool,
    pub shard: usize,
    pub subscription_count: usize,
    pub queued_messages: usize,
    pub inflight_messages: usize,
    /// Filled for one client (`AdminQuery::Client`), empty in lists.
    pub subscriptions: Vec<SubscriptionInfo>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SubscriptionInfo {
    pub filter: String,
    pub qos: u8,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RetainedInfo {
    pub topic: String,
    pub payload_bytes: usize,
    pub qos: u8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminAnswer {
    Clients(Vec<ClientInfo>),
    /// Whether this shard held it (and did it).
    Done(bool),
    Retained(Vec<RetainedInfo>),
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

impl super::Shard {
    pub fn admin(&mut self, query: &AdminQuery, now: Instant) -> AdminAnswer {
        match query {
            AdminQuery::Clients { prefix, user, address } => AdminAnswer::Clients(
                self.clients
                    .iter()
                    .map(|(_, client)| self.client_info(client, false))
                    .filter(|info| info.client_id.starts_with(prefix.as_str()))
                    .filter(|info| user.as_ref().is_none_or(|user| info.user.as_ref() == Some(user)))
                    .filter(|info| {
                        address.as_ref().is_none_or(|address| info.address.as_ref().is_some_and(|at| at.starts_with(address.as_str())))
                    })
                    .collect(),
            ),
            AdminQuery::Client { client_id } => AdminAnswer::Clients(
                self.clients.key_of(client_id).map(|key| self.client_info(self.clients.get(key), true)).into_iter().collect(),
            ),
            AdminQuery::Disconnect { client_id, reason } => {
                let Some(key) = self.clients.key_of(client_id) else { return AdminAnswer::Done(false) };
                let client = self.clients.get(key);
                let Some(link) = client.link.clone() else { return AdminAnswer::Done(false) };
                tracing::info!(client_id = %text(client_id), address = %link.peer_label(), reason = reason.0, "client disconnected by an administrator");
                close_with_reason(&link, client.version, *reason);
                AdminAnswer::Done(true)
            }
            AdminQuery::Retained { filter } => {
                let mut found = Vec::new();
                self.retained.for_each_match(filter, |message| {
                    found.push(RetainedInfo { topic: text(&message.topic), payload_bytes: message.payload.len(), qos: message.qos as u8 });
                });
                found.sort_by(|a, b| a.topic.cmp(&b.topic));
                AdminAnswer::Retained(found)
            }
            AdminQuery::ClearRetained { topic } => {
                let mut stored = false;
                self.retained.for_each_match(topic, |_| stored = true);
                if stored {
                    let clear = Message {
                        topic: topic.clone(),
                        payload: Bytes::new(),
                        qos: QoS::AtMostOnce,
                        retain: true,
                        properties: Default::default(),
                        publisher: None,
                        expires_at: None,
                    };
                    self.route(Arc::new(clear), now);
                }
                AdminAnswer::Done(stored)
            }
        }
    }

    fn client_info(&self, client: &super::clients::Client, with_subscriptions: bool) -> ClientInfo {
        let subscriptions = if with_subscriptions {
            client
                .session
                .subscriptions()
                .map(|(filter, subscription)| SubscriptionInfo { filter: text(&filter.text()), qos: subscription.options.qos as u8 })
                .collect()
        } else {
            Vec::new()
        };
        ClientInfo {
            client_id: text(client.session.client_id()),
            user: client.username.as_deref().map(text),
            address: client.link.as_ref().map(|link| link.peer_label().to_string()),
            protocol: if client.version.is_v5() { "5.0" } else { "3.1.1" },
            connected: client.link.is_some(),
            shard: self.id.0,
            subscription_count: client.session.subscription_count(),
            queued_messages: client.session.queued_len(),
            inflight_messages: client.session.inflight_len(),
            subscriptions,
        }
    }
}
