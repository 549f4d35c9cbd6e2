//! From CONNECT to CONNACK: admission (credentials, will rules, server features),
//! enhanced authentication and re-authentication, the claim of the client id at its home
//! shard, and installing the session once that is settled.

use super::*;

/// Accepted sockets, and CONNECTs between their arrival and their CONNACK: waiting for the
/// home shard's answer about the client id, or in an enhanced-authentication exchange.
#[derive(Default)]
pub(super) struct Connecting {
    pub(super) pending: HashMap<ConnId, PendingConnect>,
    pub(super) authenticating: HashMap<ConnId, Authenticating>,
    /// Sockets accepted so far (numbers each connection's `ConnId`).
    pub(super) accepted: u64,
    /// Accepted sockets that have not finished CONNECT yet.
    pub(super) half_open: usize,
    /// Once set, new CONNECTs get "server unavailable" and wills are not sent.
    pub(super) shutting_down: bool,
    /// `--max-connections`, shared by every shard; `None`: no limit.
    pub(super) budget: Option<Arc<ConnectionBudget>>,
}

/// The MQTT connections of the whole broker, for `--max-connections`: one counter shared
/// by the shards, touched once when a CONNECT is admitted and once when its connection
/// ends, never per message.
#[derive(Debug)]
pub struct ConnectionBudget {
    open: std::sync::atomic::AtomicUsize,
    max: usize,
}

impl ConnectionBudget {
    pub fn new(max: usize) -> Arc<ConnectionBudget> {
        Arc::new(ConnectionBudget { open: std::sync::atomic::AtomicUsize::new(0), max })
    }

    /// Connections admitted and not yet ended.
    pub fn open(&self) -> usize {
        self.open.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn try_take(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        if self.open.fetch_add(1, Relaxed) >= self.max {
            self.open.fetch_sub(1, Relaxed);
            return false;
        }
        true
    }

    fn give_back(&self) {
        self.open.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// How far a CONNECT got: the IO layer waits for the CONNACK, feeds AUTH packets to
/// `continue_authentication`, or gives up on the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectProgress {
    Claimed,
    Authenticating,
    Refused,
}

/// An enhanced-authentication exchange between CONNECT and CONNACK.
pub(super) struct Authenticating {
    pub(super) connect: Box<Connect>,
    pub(super) method: Bytes,
    pub(super) exchange: Box<dyn AuthExchange>,
}

/// What an enhanced authentication that succeeded puts in the CONNACK.
pub(super) struct Authenticated {
    pub(super) method: Bytes,
    pub(super) data: Option<Bytes>,
}

pub(super) struct PendingConnect {
    pub(super) link: Rc<Link>,
    pub(super) connect: Box<Connect>,
    pub(super) client_id: Bytes,
    pub(super) client_id_assigned: bool,
    pub(super) authenticated: Option<Authenticated>,
    /// The client's ACL rules (`None`: no ACL file), built when it was admitted.
    pub(super) authorization: Option<Box<crate::auth::ClientAuthorization>>,
    /// Home asked to evict this connection before its own claim was answered.
    pub(super) deferred_eviction: Option<(ConnId, bool)>,
    /// The same, for a connection on another node (`--cluster`), and where to send the
    /// session if that connection resumes it.
    pub(super) evicted_for_node: Option<Option<crate::cluster::port::SessionReply>>,
}

impl Shard {
    /// A new link for an accepted socket.
    pub fn new_link(&mut self) -> Rc<Link> {
        self.connecting.accepted += 1;
        self.counters.connections_accepted += 1;
        self.connecting.half_open += 1;
        let link = Rc::new(Link::new(ConnId::new(self.id, self.connecting.accepted)));
        if let Some(durability) = self.durability.as_ref().filter(|durability| durability.holds_output()) {
            link.attach_durability(durability.clone());
        }
        link
    }

    /// Whether a newly accepted socket must be closed at once: this shard already holds
    /// `--half-open-connections-max` sockets that have not finished CONNECT (slowloris).
    pub fn refuses_half_open(&mut self) -> bool {
        let full = self.connecting.half_open >= self.limits.half_open_connections_max;
        if full {
            self.counters.half_open_connections_refused += 1;
        }
        full
    }

    /// Shares `--max-connections` with the other shards (the runtime gives every shard
    /// the same budget).
    pub fn set_connection_budget(&mut self, budget: Arc<ConnectionBudget>) {
        self.connecting.budget = Some(budget);
    }

    /// Counts `link` against `--max-connections`; false when the broker is full.
    fn take_connection_slot(&mut self, link: &Link) -> bool {
        let Some(budget) = &self.connecting.budget else { return true };
        if !budget.try_take() {
            return false;
        }
        link.set_holds_connection_slot();
        true
    }

    /// `link` ended: its place under `--max-connections` is free.
    pub(super) fn release_connection_slot(&mut self, link: &Link) {
        if link.take_connection_slot()
            && let Some(budget) = &self.connecting.budget
        {
            budget.give_back();
        }
    }

    /// `link` opened, or ended before it did: it no longer counts as half-open.
    pub(super) fn link_left_half_open(&mut self, link: &Link) {
        if link.leave_half_open() {
            self.connecting.half_open -= 1;
        }
    }

    /// `authenticated`: an enhanced-authentication method has vouched for the client, which
    /// takes the place of the user name and password check. `credentials`: that check,
    /// when the IO layer has already made it off this thread (password hashing is slow).
    pub(super) fn admit(
        &self,
        connect: &Connect,
        authenticated: bool,
        credentials: Option<Result<(), ConnectRefusal>>,
    ) -> Result<(), ConnectRefusal> {
        if self.connecting.shutting_down {
            return Err(ConnectRefusal::ServerUnavailable);
        }
        if !authenticated {
            match credentials {
                Some(checked) => checked?,
                None => self.auth.check(connect.username.as_deref(), connect.password.as_deref())?,
            }
        }
        if connect.client_id.is_empty() && !connect.clean_start && !connect.version.is_v5() {
            return Err(ConnectRefusal::ClientIdentifierNotValid);
        }
        if let Some(will) = &connect.will {
            if will.qos > self.limits.features.qos_max {
                return Err(ConnectRefusal::QosNotSupported);
            }
            if will.retain && !self.limits.features.retain {
                return Err(ConnectRefusal::RetainNotSupported);
            }
            // MQTT-4.7.3-1 (not empty), 3.1.2.3 (a valid topic name), and what a PUBLISH
            // to it would be refused for.
            if validate_topic_name(&will.topic).is_err()
                || self.limits.topic_bound_exceeded(&will.topic).is_some()
                || is_broker_topic(&will.topic)
            {
                return Err(ConnectRefusal::WillTopicInvalid);
            }
            if will.properties.payload_format_indicator == Some(1) && std::str::from_utf8(&will.payload).is_err() {
                return Err(ConnectRefusal::WillPayloadFormatInvalid);
            }
        }
        Ok(())
    }

    /// CONNACK with the refusal's code, then close.
    pub(super) fn refuse(&mut self, link: &Link, version: ProtocolVersion, refusal: ConnectRefusal) -> ConnectProgress {
        self.counters.connections_refused += 1;
        tracing::info!(address = %link.peer_label(), reason = refusal.describe(), shard = self.id.0, "connect refused");
        let code = if version.is_v5() { Some(refusal.reason_code_v5().0) } else { refusal.return_code_v311() };
        let Some(code) = code else {
            link.close();
            return ConnectProgress::Refused;
        };
        let mut properties = Properties::default();
        if version.is_v5() {
            properties.reason_string = Some(Bytes::from_static(refusal.describe().as_bytes()));
        }
        let connack = ConnAck { session_present: false, code, properties: properties.into() };
        write_packet(link, version, &Packet::ConnAck(connack));
        link.close();
        ConnectProgress::Refused
    }

    /// A CONNECT arrived on `link`. With an Authentication Method (5.0) the exchange
    /// starts; refused: CONNACK with the code, then close. Otherwise the client id is
    /// claimed at its home shard and `link` opens when that is settled.
    pub fn begin_connect(&mut self, link: &Rc<Link>, connect: Box<Connect>, now: Instant) -> ConnectProgress {
        self.begin_connect_checked(link, connect, None, now)
    }

    /// The authenticator, for checking a CONNECT's password off the shard thread.
    pub fn authenticator(&self) -> &Arc<Authenticator> {
        &self.auth
    }

    /// `begin_connect` with the user name and password already checked (`credentials`:
    /// `Authenticator::check`'s verdict, computed off this thread).
    pub fn begin_connect_checked(
        &mut self,
        link: &Rc<Link>,
        mut connect: Box<Connect>,
        credentials: Option<Result<(), ConnectRefusal>>,
        now: Instant,
    ) -> ConnectProgress {
        if connect.version.is_v5()
            && let Some(maximum) = connect.properties.maximum_packet_size
        {
            link.set_max_packet_size_out(maximum);
        }
        if let Some(method) = connect.properties.authentication_method.take() {
            let Some(exchange) = self.auth.start_exchange(&method) else {
                return self.refuse(link, connect.version, ConnectRefusal::BadAuthenticationMethod);
            };
            let data = connect.properties.authentication_data.take().unwrap_or_default();
            let authenticating = Authenticating { connect, method: detach(&method), exchange };
            return self.authentication_step(link, authenticating, &data, now);
        }
        self.claim(link, connect, None, credentials, now)
    }

    /// The client's AUTH during an exchange that began with its CONNECT.
    pub fn continue_authentication(&mut self, link: &Rc<Link>, packet: Packet, now: Instant) -> Result<ConnectProgress, CloseReason> {
        let Some(authenticating) = self.connecting.authenticating.remove(&link.conn_id) else { return Ok(ConnectProgress::Refused) };
        match packet {
            Packet::Auth(auth)
                if auth.reason == ReasonCode::CONTINUE_AUTHENTICATION
                    && auth.properties.authentication_method.as_ref() == Some(&authenticating.method) =>
            {
                let data = auth.properties.into_inner().authentication_data.unwrap_or_default();
                Ok(self.authentication_step(link, authenticating, &data, now))
            }
            Packet::Disconnect(_) => {
                link.close();
                Ok(ConnectProgress::Refused)
            }
            _ => Err(CloseReason::NotAuthWhileAuthenticating),
        }
    }

    pub(super) fn authentication_step(
        &mut self,
        link: &Rc<Link>,
        mut authenticating: Authenticating,
        data: &[u8],
        now: Instant,
    ) -> ConnectProgress {
        let version = authenticating.connect.version;
        match authenticating.exchange.step(data) {
            AuthStep::Continue(reply) => {
                let properties = Properties {
                    authentication_method: Some(authenticating.method.clone()),
                    authentication_data: Some(reply),
                    ..Properties::default()
                };
                write_packet(
                    link,
                    version,
                    &Packet::Auth(Auth { reason: ReasonCode::CONTINUE_AUTHENTICATION, properties: properties.into() }),
                );
                self.connecting.authenticating.insert(link.conn_id, authenticating);
                ConnectProgress::Authenticating
            }
            AuthStep::Success(data) => {
                let mut connect = authenticating.connect;
                if let Some(identity) = authenticating.exchange.identity() {
                    // Authorized as the user the exchange proved, whatever the CONNECT's User
                    // Name said; a different User Name is refused rather than trusted.
                    if connect.username.as_deref().is_some_and(|name| name != identity.as_bytes()) {
                        return self.refuse(link, version, ConnectRefusal::NotAuthorized);
                    }
                    connect.username = Some(Bytes::copy_from_slice(identity.as_bytes()));
                }
                let authenticated = Authenticated { method: authenticating.method, data };
                self.claim(link, connect, Some(authenticated), None, now)
            }
            AuthStep::Fail(refusal) => self.refuse(link, version, refusal),
        }
    }

    pub(super) fn claim(
        &mut self,
        link: &Rc<Link>,
        connect: Box<Connect>,
        authenticated: Option<Authenticated>,
        credentials: Option<Result<(), ConnectRefusal>>,
        now: Instant,
    ) -> ConnectProgress {
        let version = connect.version;
        if let Err(refusal) = self.admit(&connect, authenticated.is_some(), credentials) {
            return self.refuse(link, version, refusal);
        }
        // Near the memory bound, new sessions are refused; a client resuming its session
        // is let in, since it is what drains the queue kept for it.
        if self.memory.level() >= MemoryLevel::Shedding && connect.clean_start {
            self.counters.connections_refused_memory += 1;
            return self.refuse(link, version, ConnectRefusal::ServerBusy);
        }
        let client_id_assigned = connect.client_id.is_empty();
        let client_id = if client_id_assigned {
            // Unguessable and unique (MQTT-3.1.3-6): not derived from anything a client
            // could predict or another connection could share.
            Bytes::from(format!("ringmq-{:032x}", rand::random::<u128>()))
        } else {
            detach(&connect.client_id)
        };
        // The client's ACL rules, built once here: for its will now, its session later.
        let mut authorization = self.auth.authorization_for(&client_id, connect.username.as_deref()).map(Box::new);
        if let (Some(will), Some(authorization)) = (&connect.will, authorization.as_mut())
            && !authorization.may_publish(&will.topic)
        {
            // A will the client could not publish itself (as Mosquitto 2 refuses it).
            self.counters.publishes_denied_acl += 1;
            return self.refuse(link, version, ConnectRefusal::NotAuthorized);
        }
        if !self.take_connection_slot(link) {
            self.counters.connections_refused_at_limit += 1;
            return self.refuse(link, version, ConnectRefusal::ConnectionLimit);
        }
        let clean_start = connect.clean_start;
        let keeps_session = SessionExpiry::from_connect(&connect) != SessionExpiry::WithConnection;
        let conn = link.conn_id;
        self.connecting.pending.insert(
            conn,
            PendingConnect {
                link: link.clone(),
                connect,
                client_id: client_id.clone(),
                client_id_assigned,
                authenticated,
                authorization,
                deferred_eviction: None,
                evicted_for_node: None,
            },
        );
        let home = home_shard(&client_id, self.shard_count);
        self.send(home, MeshMessage::Claim { client_id, conn, clean_start, keeps_session, assigned: client_id_assigned }, now);
        ConnectProgress::Claimed
    }

    /// The claim for `conn` is settled: install the session (handed over or new), answer
    /// CONNACK, re-send what was in flight, and catch up on publishes the old owner had not
    /// yet seen when it let go.
    pub(super) fn complete_connect(
        &mut self,
        conn: ConnId,
        handed: Option<Box<Session>>,
        cut: Option<StreamCut>,
        receive_all_held: bool,
        now: Instant,
    ) {
        let Some(pending) = self.connecting.pending.remove(&conn) else {
            debug_assert!(false, "every claim is answered exactly once");
            return;
        };
        let PendingConnect {
            link,
            connect,
            client_id,
            client_id_assigned,
            authenticated,
            authorization,
            deferred_eviction,
            evicted_for_node,
        } = pending;
        let version = connect.version;
        let session_present = handed.is_some();
        let mut session = match handed {
            Some(session) => *session,
            None => Session::new(client_id.clone(), self.limits.session),
        };
        let client_receive_maximum = connect.properties.receive_maximum.unwrap_or(u16::MAX);
        session.set_inflight_max(self.limits.session.inflight_max.min(client_receive_maximum));
        let mut keep_alive_s = connect.keep_alive_s;
        let mut server_keep_alive = None;
        if version.is_v5()
            && let Some(max) = self.limits.keep_alive_s_max
            && (keep_alive_s == 0 || keep_alive_s > max)
        {
            keep_alive_s = max;
            server_keep_alive = Some(max);
        }
        let mut link_alive = link.state() == LinkState::Connecting;
        let outbound_packet_bytes_max = if version.is_v5() { connect.properties.maximum_packet_size.unwrap_or(u32::MAX) } else { u32::MAX };
        let outbound_alias_max = if version.is_v5() { connect.properties.topic_alias_maximum.unwrap_or(0) } else { 0 };
        let auth_method = authenticated.as_ref().map(|authenticated| authenticated.method.clone());
        let expiry = SessionExpiry::from_connect(&connect);
        let will = connect.will.map(|will| {
            Box::new(Will {
                topic: detach(&will.topic),
                payload: detach(&will.payload),
                qos: will.qos,
                retain: will.retain,
                properties: will.properties.detached(crate::protocol::PropertyContext::Will),
            })
        });
        self.export_will(&client_id, conn, will.as_deref(), expiry, now);
        let key = self.insert_client(
            Client {
                session,
                link: link_alive.then(|| link.clone()),
                conn_id: conn,
                version,
                connection: Connection::new(keep_alive_s, outbound_packet_bytes_max, outbound_alias_max, auth_method, now),
                lifecycle: Lifecycle::new(expiry, will),
                skip_until: None,
                stalled_since: None,
                paused_publishers: HashSet::new(),
                retained_backlog: None,
                authorization,
                username: connect.username.as_deref().map(Bytes::copy_from_slice),
            },
            now,
        );
        if receive_all_held {
            // The session's filters are announced (queued above); every peer applies that
            // before this release, so none of them routes past the session meanwhile.
            self.broadcast(|| MeshMessage::ReceiveAllDone, now);
        }
        if link_alive {
            let mut properties = Properties::default();
            if version.is_v5() {
                // What this server offers, where it differs from the protocol's defaults.
                if client_id_assigned {
                    properties.assigned_client_identifier = Some(client_id.clone());
                }
                properties.receive_maximum = (self.limits.receive_maximum != u16::MAX).then_some(self.limits.receive_maximum);
                properties.maximum_packet_size = Some(self.limits.packet_bytes_max);
                properties.server_keep_alive = server_keep_alive;
                properties.topic_alias_maximum = (self.limits.topic_alias_maximum > 0).then_some(self.limits.topic_alias_maximum);
                properties.maximum_qos = (self.limits.features.qos_max < QoS::ExactlyOnce).then_some(self.limits.features.qos_max as u8);
                properties.retain_available = (!self.limits.features.retain).then_some(0);
                properties.wildcard_subscription_available = (!self.limits.features.wildcard_subscriptions).then_some(0);
                properties.subscription_identifier_available = (!self.limits.features.subscription_identifiers).then_some(0);
                properties.shared_subscription_available = (!self.limits.features.shared_subscriptions).then_some(0);
                if let Some(authenticated) = authenticated {
                    properties.authentication_method = Some(authenticated.method);
                    properties.authentication_data = authenticated.data;
                }
            }
            let connack = ConnAck { session_present, code: 0, properties: properties.into() };
            link_alive = link.write_packet(version, &Packet::ConnAck(connack));
        }
        if !link_alive {
            // Not even the CONNACK fits the client's Maximum Packet Size: nothing can be sent.
            link.close();
        } else {
            link.open();
            self.link_left_half_open(&link);
            tracing::info!(
                client_id = %String::from_utf8_lossy(&client_id),
                user = connect.username.as_deref().map(String::from_utf8_lossy).as_deref().unwrap_or(""),
                address = %link.peer_label(),
                protocol = if version.is_v5() { "5.0" } else { "3.1.1" },
                keep_alive_s,
                clean_start = connect.clean_start,
                session_present,
                shard = self.id.0,
                "client connected"
            );
            let mut outgoing = std::mem::take(&mut self.scratch.outgoing);
            let client = self.client(key);
            client.session.resume(now, &mut outgoing);
            for packet in outgoing.drain(..) {
                write_outgoing(&link, version, &packet, now, client.connection.outbound_aliases());
            }
            self.scratch.outgoing = outgoing;
        }
        if let Some(cut) = cut {
            self.catch_up(key, cut, now);
        }
        if !link_alive {
            self.client_lost(key, "closed before its CONNACK", now);
        }
        if let Some(handover) = evicted_for_node {
            self.on_evict_for_node(client_id.clone(), conn, handover, now);
        }
        if let Some((next, clean_start)) = deferred_eviction {
            self.on_evict(client_id, conn, next, clean_start, now);
        }
    }

    /// Re-authentication (5.0 4.12.1): AUTH 0x19 under the method the connection used,
    /// then AUTH 0x18 steps; success is AUTH 0x00, failure a DISCONNECT 0x87.
    pub(super) fn reauthenticate(&mut self, key: ClientKey, link: &Link, auth: Auth) -> Result<(), CloseReason> {
        let client = self.client(key);
        let version = client.version;
        let Some(method) = client.connection.auth_method().cloned() else { return Err(CloseReason::UnexpectedAuth) };
        if auth.properties.authentication_method.as_ref() != Some(&method) {
            return Err(CloseReason::UnexpectedAuth);
        }
        let mut exchange = match auth.reason {
            ReasonCode::REAUTHENTICATE => self.auth.start_exchange(&method).ok_or(CloseReason::UnexpectedAuth)?,
            ReasonCode::CONTINUE_AUTHENTICATION => {
                self.client(key).connection.take_reauthentication().ok_or(CloseReason::UnexpectedAuth)?
            }
            _ => return Err(CloseReason::UnexpectedAuth),
        };
        let data = auth.properties.into_inner().authentication_data.unwrap_or_default();
        let (reason, reply) = match exchange.step(&data) {
            AuthStep::Continue(reply) => {
                self.client(key).connection.continue_reauthentication(exchange);
                (ReasonCode::CONTINUE_AUTHENTICATION, Some(reply))
            }
            AuthStep::Success(reply) => (ReasonCode::SUCCESS, reply),
            AuthStep::Fail(_) => {
                close_with_reason(link, version, ReasonCode::NOT_AUTHORIZED);
                return Ok(());
            }
        };
        let properties = Properties { authentication_method: Some(method), authentication_data: reply, ..Properties::default() };
        write_packet(link, version, &Packet::Auth(Auth { reason, properties: properties.into() }));
        Ok(())
    }
}
