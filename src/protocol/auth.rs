//! AUTH (5.0 section 3.15): extended authentication exchange. Same layout as DISCONNECT.

use bytes::{BufMut, BytesMut};

use super::error::DecodeError;
use super::packet::{packet_len, packet_type, put_fixed_header};
use super::primitives::Reader;
use super::properties::{PacketProperties, PropertyContext};
use super::reason::ReasonCode;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    pub reason: ReasonCode,
    pub properties: PacketProperties,
}

impl Auth {
    pub(crate) fn decode(reader: &mut Reader) -> Result<Auth, DecodeError> {
        let mut auth = Auth { reason: ReasonCode::SUCCESS, properties: PacketProperties::default() };
        if !reader.is_empty() {
            auth.reason = ReasonCode(reader.u8()?);
            // MQTT 5.0 3.15.2.1: success, continue, re-authenticate; nothing else.
            if ![0x00, 0x18, 0x19].contains(&auth.reason.0) {
                return Err(DecodeError::InvalidReasonCode(auth.reason.0));
            }
            if !reader.is_empty() {
                auth.properties = PacketProperties::decode(reader, PropertyContext::Auth)?;
            }
        }
        Ok(auth)
    }

    pub fn encode(&self, buf: &mut BytesMut) {
        let remaining = if self.reason == ReasonCode::SUCCESS && self.properties.is_empty() { 0 } else { 1 + self.properties.wire_len() };
        buf.reserve(packet_len(remaining));
        put_fixed_header(buf, packet_type::AUTH << 4, remaining);
        if remaining > 0 {
            buf.put_u8(self.reason.0);
            self.properties.encode(buf);
        }
    }
}
