//! UNSUBACK (3.1.1 section 3.11, 5.0 section 3.11). 3.1.1 carries only the packet id;
//! 5.0 adds properties and one reason code per filter.

use bytes::{BufMut, BytesMut};

use super::error::DecodeError;
use super::packet::{PacketId, ProtocolVersion, packet_len, packet_type, put_fixed_header};
use super::primitives::Reader;
use super::properties::{PacketProperties, PropertyContext};
use super::reason::ReasonCode;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    pub packet_id: PacketId,
    pub properties: PacketProperties,
    /// Empty for 3.1.1.
    pub codes: Vec<ReasonCode>,
}

impl UnsubAck {
    pub(crate) fn decode(reader: &mut Reader, version: ProtocolVersion) -> Result<UnsubAck, DecodeError> {
        let packet_id = PacketId::read(reader)?;
        let mut unsuback = UnsubAck { packet_id, properties: PacketProperties::default(), codes: Vec::new() };
        if version.is_v5() {
            unsuback.properties = PacketProperties::decode(reader, PropertyContext::UnsubAck)?;
            while !reader.is_empty() {
                unsuback.codes.push(ReasonCode(reader.u8()?));
            }
        }
        Ok(unsuback)
    }

    pub fn encode(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        let remaining = if version.is_v5() { 2 + self.properties.wire_len() + self.codes.len() } else { 2 };
        buf.reserve(packet_len(remaining));
        put_fixed_header(buf, packet_type::UNSUBACK << 4, remaining);
        buf.put_u16(self.packet_id.get());
        if version.is_v5() {
            self.properties.encode(buf);
            for code in &self.codes {
                buf.put_u8(code.0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v311_has_no_codes_v5_has_them() {
        let unsuback = UnsubAck {
            packet_id: PacketId::new(9).unwrap(),
            properties: PacketProperties::default(),
            codes: vec![ReasonCode::NO_SUBSCRIPTION_EXISTED],
        };
        let mut out = BytesMut::new();
        unsuback.encode(ProtocolVersion::V311, &mut out);
        assert_eq!(&out[..], &[0xB0, 0x02, 0x00, 0x09]);
        out.clear();
        unsuback.encode(ProtocolVersion::V5, &mut out);
        assert_eq!(&out[..], &[0xB0, 0x04, 0x00, 0x09, 0x00, 0x11]);
    }
}
