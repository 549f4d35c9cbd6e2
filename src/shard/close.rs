//! How connections end: why the broker closes one (`CloseReason`, each with the reason
//! code a 5.0 client hears first), writing a packet within the client's limits, and the IO
//! layer's last word on a link.

use super::*;

/// Why the broker closes a connection. Each maps to the reason code of the DISCONNECT a
/// 5.0 client is sent first; a 3.1.1 client is just disconnected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CloseReason {
    #[error("malformed packet: {0}")]
    Decode(#[from] DecodeError),
    #[error("second CONNECT on one connection")]
    SecondConnect,
    #[error("{0} may only be sent by a server")]
    ServerOnlyPacket(&'static str),
    #[error("invalid topic name: {0}")]
    TopicName(TopicError),
    #[error("topic alias used but none was granted")]
    TopicAlias,
    #[error("AUTH without an authentication method in CONNECT, or out of turn")]
    UnexpectedAuth,
    #[error("a packet other than AUTH while authenticating")]
    NotAuthWhileAuthenticating,
    #[error("more QoS 2 messages awaiting PUBREL than the Receive Maximum")]
    ReceiveMaximumExceeded,
    #[error("DISCONNECT sets a session expiry on a session that had none")]
    SessionExpiryOnDisconnect,
    #[error("no-local set on a shared subscription")]
    NoLocalOnSharedSubscription,
    #[error("PUBLISH above the server's Maximum QoS")]
    QosNotSupported,
    #[error("retained PUBLISH while retain is not available")]
    RetainNotSupported,
    #[error("topic alias used without ever being set on this connection")]
    UnknownTopicAlias,
    #[error("payload format indicator says UTF-8 but the payload is not")]
    PayloadFormatInvalid,
    #[error("subscription identifier while they are switched off")]
    SubscriptionIdentifiersNotSupported,
    #[error("{0} for a message that waits for another kind of acknowledgement")]
    WrongAcknowledgement(&'static str),
    #[error("a client's PUBLISH carries a subscription identifier")]
    SubscriptionIdentifierFromClient,
    #[error("invalid topic filter: {0}")]
    TopicFilter(TopicError),
    /// The data directory cannot be written: a QoS 1/2 PUBLISH cannot be stored, and
    /// 3.1.1 has no way to refuse it but closing.
    #[error("the data directory cannot be written; durable publishes are refused")]
    StorageFailed,
    /// TLS or WebSocket failed under the MQTT stream (`transport`).
    #[error("{0}")]
    Transport(String),
}

impl CloseReason {
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            CloseReason::Decode(error) => error.reason_code(),
            CloseReason::TopicName(_) => ReasonCode::TOPIC_NAME_INVALID,
            CloseReason::TopicAlias => ReasonCode::TOPIC_ALIAS_INVALID,
            CloseReason::ReceiveMaximumExceeded => ReasonCode::RECEIVE_MAXIMUM_EXCEEDED,
            CloseReason::PayloadFormatInvalid => ReasonCode::PAYLOAD_FORMAT_INVALID,
            CloseReason::QosNotSupported => ReasonCode::QOS_NOT_SUPPORTED,
            CloseReason::RetainNotSupported => ReasonCode::RETAIN_NOT_SUPPORTED,
            CloseReason::SubscriptionIdentifiersNotSupported => ReasonCode::SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED,
            CloseReason::TopicFilter(_) => ReasonCode::TOPIC_FILTER_INVALID,
            CloseReason::StorageFailed => ReasonCode::QUOTA_EXCEEDED,
            CloseReason::SecondConnect
            | CloseReason::WrongAcknowledgement(_)
            | CloseReason::SubscriptionIdentifierFromClient
            | CloseReason::ServerOnlyPacket(_)
            | CloseReason::UnexpectedAuth
            | CloseReason::NotAuthWhileAuthenticating
            | CloseReason::UnknownTopicAlias
            | CloseReason::NoLocalOnSharedSubscription
            | CloseReason::SessionExpiryOnDisconnect
            | CloseReason::Transport(_) => ReasonCode::PROTOCOL_ERROR,
        }
    }
}

/// Closes a connection the broker ends; a 5.0 client hears why first.
pub(super) fn close_with_reason(link: &Link, version: ProtocolVersion, reason: ReasonCode) {
    if version.is_v5() {
        write_packet(link, version, &Packet::Disconnect(Disconnect::new(reason)));
    }
    link.close();
}

/// Writes a packet, unless it exceeds the client's Maximum Packet Size (see `Link::write_packet`).
pub(super) fn write_packet(link: &Link, version: ProtocolVersion, packet: &Packet) {
    link.write_packet(version, packet);
}

impl Shard {
    /// The IO layer's last word on a link: the socket closed, the peer misbehaved
    /// (`error`), or the link was closed by the shard. Idempotent.
    pub fn connection_ended(&mut self, link: &Link, error: Option<&CloseReason>, now: Instant) {
        self.link_left_half_open(link);
        self.release_connection_slot(link);
        self.connecting.authenticating.remove(&link.conn_id);
        if let Some(error) = error {
            self.counters.protocol_errors += 1;
            tracing::debug!(shard = self.id.0, %error, "closing connection");
            if let Some(key) = self.client_of(link) {
                let version = self.client(key).version;
                close_with_reason(link, version, error.reason_code());
            }
        }
        link.close();
        if let Some(key) = self.client_of(link)
            && self.client(key).link.is_some()
        {
            let reason = error.map_or_else(|| "connection closed".to_string(), ToString::to_string);
            self.client_lost(key, &reason, now);
        }
    }
}
