//! What lives and dies with one network connection of a client: keep alive, the topic
//! aliases in both directions, the client's Maximum Packet Size and a re-authentication in
//! progress. A new connection to a kept session starts all of it afresh (MQTT 5.0 3.3.2.3.4:
//! topic aliases are per connection). Pure: `now` is passed in.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::detach;
use crate::auth::AuthExchange;

/// Why an inbound Topic Alias cannot be used (both close the connection, 5.0 3.3.2.3.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AliasError {
    /// Zero, or above the Topic Alias Maximum the broker offered.
    OutOfRange,
    /// An empty topic with an alias this connection never set.
    Unknown,
}

/// Broker-to-client topic aliases (5.0): the first topics sent get an alias each, up to the
/// client's Topic Alias Maximum; later messages on those topics carry only the alias.
#[derive(Debug, Default)]
pub struct OutboundAliases {
    maximum: u16,
    assigned: HashMap<Bytes, u16>,
}

impl OutboundAliases {
    pub fn new(maximum: u16) -> OutboundAliases {
        OutboundAliases { maximum, assigned: HashMap::new() }
    }

    /// Whether this connection may be sent aliases at all.
    pub fn enabled(&self) -> bool {
        self.maximum > 0
    }

    /// The topic to put on the wire (empty once aliased) and the alias to send with it.
    pub fn resolve<'t>(&mut self, topic: &'t Bytes) -> (&'t [u8], Option<u16>) {
        if self.maximum == 0 {
            return (topic, None);
        }
        if let Some(&alias) = self.assigned.get(topic) {
            return (&[], Some(alias));
        }
        if self.assigned.len() < usize::from(self.maximum) {
            let alias = self.assigned.len() as u16 + 1;
            self.assigned.insert(detach(topic), alias);
            return (topic, Some(alias));
        }
        (topic, None)
    }
}

/// One connection's state (see the module comment).
pub struct Connection {
    /// `None`: the client asked for no keep alive (0).
    keep_alive: Option<Duration>,
    last_activity: Instant,
    /// Client-to-broker aliases this connection has set.
    inbound_aliases: HashMap<u16, Bytes>,
    outbound_aliases: OutboundAliases,
    /// The client's Maximum Packet Size (5.0); larger messages are not sent to it.
    outbound_packet_bytes_max: u32,
    /// The enhanced-authentication method the connection authenticated with, if any.
    auth_method: Option<Bytes>,
    /// A re-authentication (AUTH 0x19) waiting for the client's next step.
    reauthentication: Option<Box<dyn AuthExchange>>,
}

impl Connection {
    pub fn new(
        keep_alive_s: u16,
        outbound_packet_bytes_max: u32,
        outbound_alias_max: u16,
        auth_method: Option<Bytes>,
        now: Instant,
    ) -> Connection {
        Connection {
            keep_alive: (keep_alive_s > 0).then(|| Duration::from_secs(u64::from(keep_alive_s))),
            last_activity: now,
            inbound_aliases: HashMap::new(),
            outbound_aliases: OutboundAliases::new(outbound_alias_max),
            outbound_packet_bytes_max,
            auth_method,
            reauthentication: None,
        }
    }

    /// A packet arrived from the client.
    pub fn touch(&mut self, now: Instant) {
        self.last_activity = now;
    }

    /// Nothing arrived for one and a half keep-alive intervals (MQTT 3.1.2.10).
    pub fn keep_alive_expired(&self, now: Instant) -> bool {
        self.keep_alive.is_some_and(|keep_alive| now.duration_since(self.last_activity) >= keep_alive * 3 / 2)
    }

    /// The topic of an inbound PUBLISH that carried Topic Alias `alias`: a non-empty topic
    /// (re)binds the alias, an empty one is looked up. `alias_max` is what CONNACK offered.
    pub fn resolve_inbound_alias(&mut self, alias: u16, topic: Bytes, alias_max: u16) -> Result<Bytes, AliasError> {
        if alias == 0 || alias > alias_max {
            return Err(AliasError::OutOfRange);
        }
        if topic.is_empty() {
            return self.inbound_aliases.get(&alias).cloned().ok_or(AliasError::Unknown);
        }
        // Aliases live as long as the connection: keep the topic, not the read block.
        let topic = detach(&topic);
        self.inbound_aliases.insert(alias, topic.clone());
        Ok(topic)
    }

    pub fn outbound_aliases(&mut self) -> &mut OutboundAliases {
        &mut self.outbound_aliases
    }

    /// The largest packet the client accepts (its 5.0 Maximum Packet Size; `u32::MAX`
    /// when it set none): larger messages are not sent to it.
    pub fn outbound_packet_bytes_max(&self) -> u32 {
        self.outbound_packet_bytes_max
    }

    /// Whether this client may receive a Topic Alias in what the broker sends.
    pub fn takes_outbound_aliases(&self) -> bool {
        self.outbound_aliases.enabled()
    }

    pub fn auth_method(&self) -> Option<&Bytes> {
        self.auth_method.as_ref()
    }

    pub fn take_reauthentication(&mut self) -> Option<Box<dyn AuthExchange>> {
        self.reauthentication.take()
    }

    pub fn continue_reauthentication(&mut self, exchange: Box<dyn AuthExchange>) {
        self.reauthentication = Some(exchange);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_alive_expires_at_one_and_a_half_times_the_interval_after_the_last_packet() {
        let t0 = Instant::now();
        let mut connection = Connection::new(10, u32::MAX, 0, None, t0);
        assert!(!connection.keep_alive_expired(t0 + Duration::from_millis(14_999)));
        assert!(connection.keep_alive_expired(t0 + Duration::from_secs(15)));
        connection.touch(t0 + Duration::from_secs(10));
        assert!(!connection.keep_alive_expired(t0 + Duration::from_secs(24)));
        assert!(connection.keep_alive_expired(t0 + Duration::from_secs(25)));
    }

    #[test]
    fn a_zero_keep_alive_never_expires() {
        let t0 = Instant::now();
        let connection = Connection::new(0, u32::MAX, 0, None, t0);
        assert!(!connection.keep_alive_expired(t0 + Duration::from_secs(1_000_000)));
    }

    #[test]
    fn inbound_aliases_bind_then_resolve_within_the_offered_maximum() {
        let mut connection = Connection::new(0, u32::MAX, 0, None, Instant::now());
        let topic = Bytes::from_static(b"a/b");
        assert_eq!(connection.resolve_inbound_alias(0, topic.clone(), 5), Err(AliasError::OutOfRange));
        assert_eq!(connection.resolve_inbound_alias(6, topic.clone(), 5), Err(AliasError::OutOfRange));
        assert_eq!(connection.resolve_inbound_alias(2, Bytes::new(), 5), Err(AliasError::Unknown));
        assert_eq!(connection.resolve_inbound_alias(2, topic.clone(), 5), Ok(topic.clone()));
        assert_eq!(connection.resolve_inbound_alias(2, Bytes::new(), 5), Ok(topic));
        let other = Bytes::from_static(b"c");
        assert_eq!(connection.resolve_inbound_alias(2, other.clone(), 5), Ok(other.clone()), "a topic rebinds the alias");
        assert_eq!(connection.resolve_inbound_alias(2, Bytes::new(), 5), Ok(other));
    }

    #[test]
    fn outbound_aliases_are_assigned_up_to_the_clients_maximum_then_reused() {
        let mut aliases = OutboundAliases::new(1);
        let (a, b) = (Bytes::from_static(b"a"), Bytes::from_static(b"b"));
        assert_eq!(aliases.resolve(&a), (&b"a"[..], Some(1)));
        assert_eq!(aliases.resolve(&a), (&b""[..], Some(1)), "the second time only the alias");
        assert_eq!(aliases.resolve(&b), (&b"b"[..], None), "no alias left for a second topic");
        let mut none = OutboundAliases::new(0);
        assert_eq!(none.resolve(&a), (&b"a"[..], None));
    }
}
