//! The codec's error type. Every variant knows the reason code the broker answers with
//! (MQTT 5.0 DISCONNECT) before closing; 3.1.1 clients are simply disconnected.

use super::reason::ReasonCode;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("variable byte integer longer than four bytes")]
    MalformedVarInt,
    #[error("packet of {size} bytes exceeds the maximum packet size of {max} bytes")]
    PacketTooLarge { size: u64, max: u32 },
    #[error("reserved packet type {0}")]
    ReservedPacketType(u8),
    #[error("invalid fixed-header flags {flags:#06b} for packet type {packet_type}")]
    InvalidHeaderFlags { packet_type: u8, flags: u8 },
    #[error("QoS 3 is not a valid quality of service")]
    InvalidQos,
    #[error("a field runs past the end of the packet")]
    Truncated,
    #[error("{0} unexpected bytes after the last field")]
    TrailingBytes(usize),
    #[error("string is not valid UTF-8 or contains U+0000")]
    InvalidUtf8,
    #[error("protocol name is not MQTT")]
    InvalidProtocolName,
    #[error("protocol level {0} is not supported")]
    UnsupportedProtocolLevel(u8),
    #[error("reserved CONNECT flag bit is set")]
    ReservedConnectFlag,
    #[error("will QoS or will retain set without the will flag")]
    WillFlagsWithoutWill,
    #[error("password present without a user name (MQTT 3.1.1)")]
    PasswordWithoutUserName,
    #[error("unknown property identifier {0:#04x}")]
    UnknownProperty(u8),
    #[error("property {0:#04x} appears more than once")]
    DuplicateProperty(u8),
    #[error("property {0:#04x} is not allowed in this packet")]
    PropertyNotAllowed(u8),
    #[error("property {0:#04x} has an invalid value")]
    InvalidPropertyValue(u8),
    #[error("packet identifier 0 is not allowed")]
    ZeroPacketId,
    #[error("SUBSCRIBE or UNSUBSCRIBE carries no topic filter")]
    NoTopicFilters,
    #[error("reserved subscription option bits are set")]
    InvalidSubscriptionOptions,
    #[error("PUBLISH with QoS 0 has the DUP flag set")]
    DupWithQos0,
    #[error("packet type {0} is not valid in this protocol version")]
    NotInThisVersion(u8),
    #[error("reason code {0:#04x} is not defined for this packet")]
    InvalidReasonCode(u8),
}

impl DecodeError {
    /// The MQTT 5.0 reason code for the DISCONNECT the broker sends before closing. A
    /// property in a packet that may not carry it, or an undefined reason code, makes the
    /// packet malformed (5.0 2.2.2.2, 1.2): 0x81.
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            DecodeError::PacketTooLarge { .. } => ReasonCode::PACKET_TOO_LARGE,
            DecodeError::UnsupportedProtocolLevel(_) => ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
            DecodeError::DuplicateProperty(_)
            | DecodeError::InvalidPropertyValue(_)
            | DecodeError::DupWithQos0
            | DecodeError::PasswordWithoutUserName
            | DecodeError::NotInThisVersion(_) => ReasonCode::PROTOCOL_ERROR,
            _ => ReasonCode::MALFORMED_PACKET,
        }
    }
}
