//! The clients that live on this shard: their slots (live or offline), what a client holds
//! beyond its pure `Session`, `Connection` and `Lifecycle` (its link, stream cut and
//! flow-control state), and what happens when a connection goes away or a session ends.

use std::hash::BuildHasherDefault;

use super::*;

pub(super) struct Client {
    pub(super) session: Session,
    /// The live connection; `None` while the session is offline.
    pub(super) link: Option<Rc<Link>>,
    pub(super) conn_id: ConnId,
    pub(super) version: ProtocolVersion,
    /// State of the current (or last) connection: keep alive, aliases, re-authentication.
    pub(super) connection: Connection,
    /// When the session and its will end.
    pub(super) lifecycle: Lifecycle,
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
    /// What the ACL file lets this client do (`None`: no ACL file); boxed, with its memo.
    pub(super) authorization: Option<Box<crate::auth::ClientAuthorization>>,
    /// The user name it connected with (for the ACL's `user` sections and `%u`).
    pub(super) username: Option<Bytes>,
}

/// The client slots of one shard (reused through a free list, so a `ClientKey` stays
/// small and stable while its client lives) and the indexes from client id and from
/// connection to slot.
#[derive(Default)]
pub(super) struct Clients {
    slots: Vec<Option<Client>>,
    free: Vec<ClientKey>,
    by_id: HashMap<Bytes, ClientKey, crate::topics::KeyedHasher>,
    /// Looked up for every packet a client sends: hashed by a multiply, not SipHash
    /// (connection ids are the broker's own counters, not attacker-chosen keys).
    by_conn: HashMap<ConnId, ClientKey, BuildHasherDefault<ConnIdHasher>>,
}

/// Hashes a `ConnId` (one `u64`) with one multiply by an odd constant (Fibonacci hashing).
#[derive(Default)]
pub(super) struct ConnIdHasher(u64);

impl std::hash::Hasher for ConnIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(byte)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = (self.0 ^ value).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
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

    /// The client whose current (or last) connection is `conn`.
    pub(super) fn key_of_conn(&self, conn: ConnId) -> Option<ClientKey> {
        self.by_conn.get(&conn).copied()
    }

    pub(super) fn insert(&mut self, client: Client) -> ClientKey {
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
        self.by_conn.insert(self.get(key).conn_id, key);
        key
    }

    fn remove(&mut self, key: ClientKey) -> Client {
        let client = self.slots[key.0 as usize].take().expect("removing a live client");
        self.by_id.remove(client.session.client_id());
        self.by_conn.remove(&client.conn_id);
        self.free.push(key);
        client
    }

    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = (ClientKey, &mut Client)> {
        self.slots.iter_mut().enumerate().filter_map(|(index, slot)| slot.as_mut().map(|client| (ClientKey(index as u32), client)))
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (ClientKey, &Client)> {
        self.slots.iter().enumerate().filter_map(|(index, slot)| Some((ClientKey(index as u32), slot.as_ref()?)))
    }

    /// Sessions held here, live or offline.
    pub(super) fn len(&self) -> usize {
        self.by_id.len()
    }
}

impl Shard {
    /// A reload (SIGHUP) brought a new password file and ACL: new connections use them at
    /// once, and every client here is authorized by the new ACL from now on.
    pub fn replace_authenticator(&mut self, auth: Arc<Authenticator>) {
        self.auth = auth;
        let keys: Vec<ClientKey> = self.clients.iter().map(|(key, _)| key).collect();
        for key in keys {
            let client = self.clients.get(key);
            let authorization = self.auth.authorization_for(client.session.client_id(), client.username.as_deref()).map(Box::new);
            self.clients.get_mut(key).authorization = authorization;
        }
    }

    pub fn connected_clients(&self) -> usize {
        self.clients.iter().filter(|(_, client)| client.link.is_some()).count()
    }

    /// Sessions this shard holds, connected or offline.
    pub fn sessions(&self) -> usize {
        self.clients.len()
    }

    pub(super) fn client(&mut self, key: ClientKey) -> &mut Client {
        self.clients.get_mut(key)
    }

    /// Installs a client and announces its session's subscriptions to the peers.
    pub(super) fn insert_client(&mut self, client: Client, now: Instant) -> ClientKey {
        let request = self.barriers.new_request();
        let key = self.clients.insert(client);
        self.index_session(key, request, now);
        self.session_arrived(key);
        self.record_changed_of(key, false);
        key
    }

    pub(super) fn remove_client(&mut self, key: ClientKey, now: Instant) -> Client {
        self.settle_flow_of_leaving_client(key, false, now);
        let client = self.clients.remove(key);
        self.unindex_session(key, &client.session, now);
        client
    }

    /// The client a link serves, if that link is still the client's current connection.
    pub(super) fn client_of(&self, link: &Link) -> Option<ClientKey> {
        // Every packet a client sends asks this: the link remembers its slot, and a slot
        // whose client has this connection is the one the index would give (connection
        // ids are never reused on a shard), so the index is only consulted when the slot
        // changed hands (a takeover, the session ended) or on the connection's first packet.
        if let Some(key) = link.client_slot_hint()
            && self.clients.find(key).is_some_and(|client| client.conn_id == link.conn_id)
        {
            return Some(key);
        }
        let key = self.clients.key_of_conn(link.conn_id)?;
        link.remember_client_slot(key);
        Some(key)
    }

    /// The connection of `key` is gone (or was never opened): publish the will, and end
    /// the session if it lives only as long as its connection.
    pub(super) fn client_lost(&mut self, key: ClientKey, reason: &str, now: Instant) {
        if let Some(link) = self.client(key).link.take() {
            tracing::info!(
                client_id = %String::from_utf8_lossy(self.clients.get(key).session.client_id()),
                address = %link.peer_label(),
                reason,
                "client disconnected"
            );
        }
        self.settle_flow_of_leaving_client(key, true, now);
        let accepting = !self.connecting.shutting_down;
        let client = self.client(key);
        let (publisher, conn) = (client.session.client_id().clone(), client.conn_id);
        self.withdraw_will(&publisher, conn);
        let client = self.client(key);
        let lost = client.lifecycle.connection_lost(accepting, now);
        if let Some(will) = lost.will_now {
            self.publish_will(*will, publisher, now);
        }
        if lost.session_ends {
            self.end_session(key, now);
        } else {
            self.session_state_changed(key);
        }
    }

    /// Removes a session whose time is up and tells its home shard.
    pub(super) fn end_session(&mut self, key: ClientKey, now: Instant) {
        let mut client = self.remove_client(key, now);
        self.session_ended(&mut client.session);
        self.hand_shared_to_other_members(&mut client.session, now);
        let conn = client.conn_id;
        let client_id = client.session.client_id().clone();
        if let Some(will) = client.lifecycle.take_pending_will() {
            self.publish_will(*will, client_id.clone(), now);
        }
        let home = home_shard(&client_id, self.shard_count);
        self.send(home, MeshMessage::Released { client_id, conn }, now);
    }
}
