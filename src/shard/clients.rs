//! The clients that live on this shard: their slots (live or offline), what a session
//! holds beyond the pure `Session` (will, expiry, aliases, flow-control state), and what
//! happens when a connection goes away or a session ends.

use super::*;

/// How long a session outlives its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SessionExpiry {
    /// Clean session (3.1.1) or Session Expiry Interval 0 (5.0).
    WithConnection,
    After(Duration),
    /// Clean session 0 (3.1.1) or 0xFFFFFFFF (5.0).
    Never,
}

impl SessionExpiry {
    pub(super) fn from_connect(connect: &Connect) -> SessionExpiry {
        if !connect.version.is_v5() {
            return if connect.clean_start { SessionExpiry::WithConnection } else { SessionExpiry::Never };
        }
        Self::from_interval(connect.properties.session_expiry_interval.unwrap_or(0))
    }

    pub(super) fn from_interval(seconds: u32) -> SessionExpiry {
        match seconds {
            0 => SessionExpiry::WithConnection,
            u32::MAX => SessionExpiry::Never,
            seconds => SessionExpiry::After(Duration::from_secs(u64::from(seconds))),
        }
    }
}

pub(super) struct Client {
    pub(super) session: Session,
    /// The live connection; `None` while the session is offline.
    pub(super) link: Option<Rc<Link>>,
    pub(super) conn_id: ConnId,
    pub(super) version: ProtocolVersion,
    pub(super) keep_alive: Option<Duration>,
    pub(super) last_activity: Instant,
    /// Boxed: a will carries a whole property set, and most clients have none.
    pub(super) will: Option<Box<Will>>,
    pub(super) session_expiry: SessionExpiry,
    /// While offline with `SessionExpiry::After`: when the session ends.
    pub(super) expires_at: Option<Instant>,
    /// The client's Maximum Packet Size (5.0); larger messages are not sent to it.
    pub(super) max_packet_size_out: u32,
    /// Topic aliases this connection has set (client to broker), per the connection only.
    pub(super) topic_aliases: HashMap<u16, Bytes>,
    /// While offline: a will waiting for its Will Delay Interval.
    pub(super) pending_will: Option<Box<(Instant, Will)>>,
    pub(super) aliases_out: OutboundAliases,
    /// The enhanced-authentication method the connection authenticated with, if any, and
    /// a re-authentication (AUTH 0x19) in progress.
    pub(super) auth_method: Option<Bytes>,
    pub(super) reauthentication: Option<Box<dyn AuthExchange>>,
    /// For a session handed over from another shard: publishes at or before this cut were
    /// the old owner's to deliver, so this shard skips them for this client.
    pub(super) skip_until: Option<StreamCut>,
    /// Since when the (online) session's queue has been at its bound (see `flow.rs`).
    pub(super) stalled_since: Option<Instant>,
    /// Publishers (their shard and client id) paused until this session's queue drains.
    pub(super) paused_publishers: HashSet<(ShardId, Bytes)>,
    /// Retained messages for new subscriptions not yet handed to the session; boxed, as
    /// most clients have none (8 bytes in every client slot instead of 32).
    #[allow(clippy::box_collection)]
    pub(super) retained_backlog: Option<Box<std::collections::VecDeque<RetainedCopy>>>,
}

/// The client slots of one shard (reused through a free list, so a `ClientKey` stays
/// small and stable while its client lives) and the index from client id to slot.
#[derive(Default)]
pub(super) struct Clients {
    slots: Vec<Option<Client>>,
    free: Vec<ClientKey>,
    by_id: HashMap<Bytes, ClientKey>,
}

impl Clients {
    /// The live client in slot `key`. Keys come from the trie and the index, which hold
    /// only live clients: a dead key is a broken invariant.
    pub(super) fn get(&self, key: ClientKey) -> &Client {
        self.slots[key.0 as usize].as_ref().expect("client keys in use point at live slots")
    }

    pub(super) fn get_mut(&mut self, key: ClientKey) -> &mut Client {
        self.slots[key.0 as usize].as_mut().expect("client keys in use point at live slots")
    }

    /// The client in slot `key`, if any (for keys that may be stale, e.g. from a link).
    pub(super) fn find(&self, key: ClientKey) -> Option<&Client> {
        self.slots.get(key.0 as usize)?.as_ref()
    }

    pub(super) fn key_of(&self, client_id: &[u8]) -> Option<ClientKey> {
        self.by_id.get(client_id).copied()
    }

    fn insert(&mut self, client: Client) -> ClientKey {
        let client_id = client.session.client_id().clone();
        let key = match self.free.pop() {
            Some(key) => {
                self.slots[key.0 as usize] = Some(client);
                key
            }
            None => {
                self.slots.push(Some(client));
                ClientKey((self.slots.len() - 1) as u32)
            }
        };
        let previous = self.by_id.insert(client_id, key);
        assert!(previous.is_none(), "the registry grants a client id to one connection at a time");
        key
    }

    fn remove(&mut self, key: ClientKey) -> Client {
        let client = self.slots[key.0 as usize].take().expect("removing a live client");
        self.by_id.remove(client.session.client_id());
        self.free.push(key);
        client
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (ClientKey, &Client)> {
        self.slots.iter().enumerate().filter_map(|(index, slot)| Some((ClientKey(index as u32), slot.as_ref()?)))
    }

    /// Sessions held here, live or offline.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.by_id.len()
    }
}

impl Shard {
    pub fn connected_clients(&self) -> usize {
        self.clients.iter().filter(|(_, client)| client.link.is_some()).count()
    }

    pub(super) fn client(&mut self, key: ClientKey) -> &mut Client {
        self.clients.get_mut(key)
    }

    /// Installs a client and announces its session's subscriptions to the peers.
    pub(super) fn insert_client(&mut self, client: Client, now: Instant) -> ClientKey {
        let client_id = client.session.client_id().clone();
        let request = self.barriers.new_request();
        let subscriptions: Vec<(Bytes, Subscription)> =
            client.session.subscriptions.iter().map(|(filter, subscription)| (filter.clone(), *subscription)).collect();
        let key = self.clients.insert(client);
        for (filter, subscription) in subscriptions {
            match shared::parse_owned(&filter) {
                Some(Ok((group, inner))) => {
                    self.broadcast_share_join(group, inner, client_id.clone(), subscription.options.qos, None, now);
                }
                _ => {
                    self.subscriptions.insert(&filter, key, subscription);
                    self.add_interest(&filter, request, None, now);
                }
            }
        }
        key
    }

    pub(super) fn remove_client(&mut self, key: ClientKey, now: Instant) -> Client {
        self.settle_flow_of_leaving_client(key, false, now);
        let client = self.clients.remove(key);
        for filter in client.session.subscriptions.keys() {
            match shared::parse_owned(filter) {
                Some(Ok((group, inner))) => {
                    self.broadcast_share_leave(group, inner, client.session.client_id().clone(), None, now);
                }
                _ => {
                    self.subscriptions.remove(filter, &key);
                    self.interest.remove_local(filter);
                }
            }
        }
        client
    }

    /// The client a link serves, if that link is still the client's current connection.
    pub(super) fn client_of(&self, link: &Link) -> Option<ClientKey> {
        let key = link.client()?;
        let client = self.clients.find(key)?;
        (client.conn_id == link.conn_id).then_some(key)
    }

    /// The connection of `key` is gone (or was never opened): publish the will, and end
    /// the session if it lives only as long as its connection.
    pub(super) fn client_lost(&mut self, key: ClientKey, now: Instant) {
        self.client(key).link = None;
        self.settle_flow_of_leaving_client(key, true, now);
        let client = self.client(key);
        let will = client.will.take();
        let publisher = client.session.client_id().clone();
        let expiry = client.session_expiry;
        if let SessionExpiry::After(after) = expiry {
            client.expires_at = Some(now + after);
        }
        if let Some(will) = will
            && self.accepting
        {
            // Sent after its delay or when the session ends, whichever comes first.
            let delay = will_delay(&will);
            let due = match expiry {
                SessionExpiry::WithConnection => now,
                SessionExpiry::After(after) => now + delay.min(after),
                SessionExpiry::Never => now + delay,
            };
            if due <= now {
                self.publish_will(*will, publisher, now);
            } else {
                self.client(key).pending_will = Some(Box::new((due, *will)));
            }
        }
        if expiry == SessionExpiry::WithConnection {
            self.end_session(key, now);
        }
    }

    /// Removes a session whose time is up and tells its home shard.
    pub(super) fn end_session(&mut self, key: ClientKey, now: Instant) {
        let mut client = self.remove_client(key, now);
        self.hand_shared_to_other_members(&mut client.session, now);
        let conn = client.conn_id;
        let client_id = client.session.client_id().clone();
        if let Some(pending) = client.pending_will.take() {
            let (_, will) = *pending;
            self.publish_will(will, client_id.clone(), now);
        }
        let home = home_shard(&client_id, self.shard_count);
        self.send(home, MeshMessage::Released { client_id, conn }, now);
    }
}
