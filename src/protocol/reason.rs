//! Reason codes (MQTT 5.0 section 2.4) and the MQTT 3.1.1 CONNACK return codes.
//!
//! Packets carry the raw byte so that a code we do not name still round-trips; the names
//! live here so handlers never spell a magic number.

/// One MQTT 5.0 reason code byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReasonCode(pub u8);

impl ReasonCode {
    pub const SUCCESS: ReasonCode = ReasonCode(0x00);
    pub const GRANTED_QOS_1: ReasonCode = ReasonCode(0x01);
    pub const GRANTED_QOS_2: ReasonCode = ReasonCode(0x02);
    pub const DISCONNECT_WITH_WILL: ReasonCode = ReasonCode(0x04);
    pub const NO_MATCHING_SUBSCRIBERS: ReasonCode = ReasonCode(0x10);
    pub const NO_SUBSCRIPTION_EXISTED: ReasonCode = ReasonCode(0x11);
    pub const CONTINUE_AUTHENTICATION: ReasonCode = ReasonCode(0x18);
    pub const REAUTHENTICATE: ReasonCode = ReasonCode(0x19);
    pub const UNSPECIFIED_ERROR: ReasonCode = ReasonCode(0x80);
    pub const MALFORMED_PACKET: ReasonCode = ReasonCode(0x81);
    pub const PROTOCOL_ERROR: ReasonCode = ReasonCode(0x82);
    pub const IMPLEMENTATION_SPECIFIC_ERROR: ReasonCode = ReasonCode(0x83);
    pub const UNSUPPORTED_PROTOCOL_VERSION: ReasonCode = ReasonCode(0x84);
    pub const CLIENT_IDENTIFIER_NOT_VALID: ReasonCode = ReasonCode(0x85);
    pub const BAD_USER_NAME_OR_PASSWORD: ReasonCode = ReasonCode(0x86);
    pub const NOT_AUTHORIZED: ReasonCode = ReasonCode(0x87);
    pub const SERVER_UNAVAILABLE: ReasonCode = ReasonCode(0x88);
    pub const SERVER_BUSY: ReasonCode = ReasonCode(0x89);
    pub const BANNED: ReasonCode = ReasonCode(0x8A);
    pub const SERVER_SHUTTING_DOWN: ReasonCode = ReasonCode(0x8B);
    pub const BAD_AUTHENTICATION_METHOD: ReasonCode = ReasonCode(0x8C);
    pub const KEEP_ALIVE_TIMEOUT: ReasonCode = ReasonCode(0x8D);
    pub const SESSION_TAKEN_OVER: ReasonCode = ReasonCode(0x8E);
    pub const TOPIC_FILTER_INVALID: ReasonCode = ReasonCode(0x8F);
    pub const TOPIC_NAME_INVALID: ReasonCode = ReasonCode(0x90);
    pub const PACKET_IDENTIFIER_IN_USE: ReasonCode = ReasonCode(0x91);
    pub const PACKET_IDENTIFIER_NOT_FOUND: ReasonCode = ReasonCode(0x92);
    pub const RECEIVE_MAXIMUM_EXCEEDED: ReasonCode = ReasonCode(0x93);
    pub const TOPIC_ALIAS_INVALID: ReasonCode = ReasonCode(0x94);
    pub const PACKET_TOO_LARGE: ReasonCode = ReasonCode(0x95);
    pub const MESSAGE_RATE_TOO_HIGH: ReasonCode = ReasonCode(0x96);
    pub const QUOTA_EXCEEDED: ReasonCode = ReasonCode(0x97);
    pub const ADMINISTRATIVE_ACTION: ReasonCode = ReasonCode(0x98);
    pub const PAYLOAD_FORMAT_INVALID: ReasonCode = ReasonCode(0x99);
    pub const RETAIN_NOT_SUPPORTED: ReasonCode = ReasonCode(0x9A);
    pub const QOS_NOT_SUPPORTED: ReasonCode = ReasonCode(0x9B);
    pub const USE_ANOTHER_SERVER: ReasonCode = ReasonCode(0x9C);
    pub const SERVER_MOVED: ReasonCode = ReasonCode(0x9D);
    pub const SHARED_SUBSCRIPTIONS_NOT_SUPPORTED: ReasonCode = ReasonCode(0x9E);
    pub const CONNECTION_RATE_EXCEEDED: ReasonCode = ReasonCode(0x9F);
    pub const MAXIMUM_CONNECT_TIME: ReasonCode = ReasonCode(0xA0);
    pub const SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED: ReasonCode = ReasonCode(0xA1);
    pub const WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED: ReasonCode = ReasonCode(0xA2);

    pub fn is_error(self) -> bool {
        self.0 >= 0x80
    }
}

/// Why a CONNECT is refused. One enum for both versions: the 3.1.1 return code and the
/// 5.0 reason code are two spellings of the same decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectRefusal {
    UnsupportedProtocolVersion,
    ClientIdentifierNotValid,
    /// The broker is shutting down.
    ServerUnavailable,
    /// In a cluster, the client-id bucket did not settle who owns a persistent session's id.
    ClusterUnavailable,
    BadUserNameOrPassword,
    NotAuthorized,
    /// 5.0 extended authentication with a method we do not offer.
    BadAuthenticationMethod,
    /// A will with a QoS above the server's Maximum QoS.
    QosNotSupported,
    /// A retained will while the server has retain switched off.
    RetainNotSupported,
    /// A will topic that is empty, has a wildcard, is too deep, or is the broker's own.
    WillTopicInvalid,
    /// A will whose Payload Format Indicator says UTF-8 when its payload is not (5.0).
    WillPayloadFormatInvalid,
    /// The broker holds `--max-connections` connections already.
    ConnectionLimit,
    /// The broker is near `--memory-max-bytes`.
    ServerBusy,
}

impl ConnectRefusal {
    /// The MQTT 3.1.1 CONNACK return code (1-5); `None` where 3.1.1 has none and the
    /// connection is closed without a CONNACK (a malformed CONNECT, MQTT-3.1.4-1).
    pub fn return_code_v311(self) -> Option<u8> {
        match self {
            ConnectRefusal::UnsupportedProtocolVersion => Some(1),
            ConnectRefusal::ClientIdentifierNotValid => Some(2),
            ConnectRefusal::ServerUnavailable
            | ConnectRefusal::ClusterUnavailable
            | ConnectRefusal::ConnectionLimit
            | ConnectRefusal::ServerBusy => Some(3),
            ConnectRefusal::BadUserNameOrPassword => Some(4),
            ConnectRefusal::NotAuthorized
            | ConnectRefusal::BadAuthenticationMethod
            | ConnectRefusal::QosNotSupported
            | ConnectRefusal::RetainNotSupported => Some(5),
            ConnectRefusal::WillTopicInvalid | ConnectRefusal::WillPayloadFormatInvalid => None,
        }
    }

    pub fn reason_code_v5(self) -> ReasonCode {
        match self {
            ConnectRefusal::UnsupportedProtocolVersion => ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
            ConnectRefusal::ClientIdentifierNotValid => ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
            ConnectRefusal::ServerUnavailable | ConnectRefusal::ClusterUnavailable => ReasonCode::SERVER_UNAVAILABLE,
            ConnectRefusal::ConnectionLimit => ReasonCode::QUOTA_EXCEEDED,
            ConnectRefusal::ServerBusy => ReasonCode::SERVER_BUSY,
            ConnectRefusal::BadUserNameOrPassword => ReasonCode::BAD_USER_NAME_OR_PASSWORD,
            ConnectRefusal::NotAuthorized => ReasonCode::NOT_AUTHORIZED,
            ConnectRefusal::BadAuthenticationMethod => ReasonCode::BAD_AUTHENTICATION_METHOD,
            ConnectRefusal::QosNotSupported => ReasonCode::QOS_NOT_SUPPORTED,
            ConnectRefusal::RetainNotSupported => ReasonCode::RETAIN_NOT_SUPPORTED,
            ConnectRefusal::WillTopicInvalid => ReasonCode::TOPIC_NAME_INVALID,
            ConnectRefusal::WillPayloadFormatInvalid => ReasonCode::PAYLOAD_FORMAT_INVALID,
        }
    }

    /// A human-readable Reason String for 5.0 CONNACKs.
    pub fn describe(self) -> &'static str {
        match self {
            ConnectRefusal::UnsupportedProtocolVersion => "unsupported protocol version",
            ConnectRefusal::ClientIdentifierNotValid => "client identifier not valid",
            ConnectRefusal::ServerUnavailable => "server unavailable (shutting down)",
            ConnectRefusal::ClusterUnavailable => "server unavailable (the cluster cannot settle who owns this client id now)",
            ConnectRefusal::BadUserNameOrPassword => "bad user name or password",
            ConnectRefusal::NotAuthorized => "not authorized",
            ConnectRefusal::BadAuthenticationMethod => "authentication method not supported",
            ConnectRefusal::QosNotSupported => "will QoS above the server's maximum QoS",
            ConnectRefusal::RetainNotSupported => "retained will while retain is not available",
            ConnectRefusal::WillTopicInvalid => "will topic empty, with a wildcard, too deep or long, or under $SYS",
            ConnectRefusal::WillPayloadFormatInvalid => "will payload is not UTF-8 as its format indicator says",
            ConnectRefusal::ConnectionLimit => "the broker holds --max-connections connections",
            ConnectRefusal::ServerBusy => "the broker is near --memory-max-bytes",
        }
    }
}
