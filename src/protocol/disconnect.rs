//! DISCONNECT (3.1.1 section 3.14, 5.0 section 3.14). Empty in 3.1.1; in 5.0 an optional
//! reason code and properties, sent by either side.

use bytes::{BufMut, BytesMut};

use super::error::DecodeError;
use super::packet::{ProtocolVersion, packet_len, packet_type, put_fixed_header};
use super::primitives::Reader;
use super::properties::{PacketProperties, PropertyContext};
use super::reason::ReasonCode;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    pub reason: ReasonCode,
    pub properties: PacketProperties,
}

impl Disconnect {
    pub fn new(reason: ReasonCode) -> Disconnect {
        Disconnect { reason, properties: PacketProperties::default() }
    }

    pub(crate) fn decode(reader: &mut Reader, version: ProtocolVersion) -> Result<Disconnect, DecodeError> {
        let mut disconnect = Disconnect::new(ReasonCode::SUCCESS);
        if version.is_v5() && !reader.is_empty() {
            disconnect.reason = ReasonCode(reader.u8()?);
            // MQTT 5.0 3.14.2.1: the codes either side may send, and no others.
            const ALLOWED: &[u8] = &[
                0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99,
                0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2,
            ];
            if !ALLOWED.contains(&disconnect.reason.0) {
                return Err(DecodeError::InvalidReasonCode(disconnect.reason.0));
            }
            if !reader.is_empty() {
                disconnect.properties = PacketProperties::decode(reader, PropertyContext::Disconnect)?;
            }
        }
        Ok(disconnect)
    }

    pub fn encode(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        let remaining = match (version.is_v5(), self.properties.is_empty()) {
            (false, _) => 0,
            (true, true) if self.reason == ReasonCode::SUCCESS => 0,
            (true, true) => 1,
            (true, false) => 1 + self.properties.wire_len(),
        };
        buf.reserve(packet_len(remaining));
        put_fixed_header(buf, packet_type::DISCONNECT << 4, remaining);
        if remaining > 0 {
            buf.put_u8(self.reason.0);
            if !self.properties.is_empty() {
                self.properties.encode(buf);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        let mut out = BytesMut::new();
        Disconnect::new(ReasonCode::SESSION_TAKEN_OVER).encode(ProtocolVersion::V311, &mut out);
        assert_eq!(&out[..], &[0xE0, 0x00]);
        out.clear();
        Disconnect::new(ReasonCode::SESSION_TAKEN_OVER).encode(ProtocolVersion::V5, &mut out);
        assert_eq!(&out[..], &[0xE0, 0x01, 0x8E]);
    }
}
