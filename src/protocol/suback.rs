//! SUBACK (3.1.1 section 3.9, 5.0 section 3.9): one code per requested filter, in order.

use bytes::{BufMut, BytesMut};

use super::error::DecodeError;
use super::packet::{PacketId, ProtocolVersion, packet_len, packet_type, put_fixed_header};
use super::primitives::Reader;
use super::properties::{PacketProperties, PropertyContext};
use super::reason::ReasonCode;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    pub packet_id: PacketId,
    pub properties: PacketProperties,
    /// Granted QoS (0-2) or a failure code (0x80 in 3.1.1, any 5.0 error code).
    pub codes: Vec<ReasonCode>,
}

impl SubAck {
    pub(crate) fn decode(reader: &mut Reader, version: ProtocolVersion) -> Result<SubAck, DecodeError> {
        let packet_id = PacketId::read(reader)?;
        let properties =
            if version.is_v5() { PacketProperties::decode(reader, PropertyContext::SubAck)? } else { PacketProperties::default() };
        let mut codes = Vec::with_capacity(reader.remaining());
        while !reader.is_empty() {
            codes.push(ReasonCode(reader.u8()?));
        }
        Ok(SubAck { packet_id, properties, codes })
    }

    pub fn encode(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        let mut remaining = 2 + self.codes.len();
        if version.is_v5() {
            remaining += self.properties.wire_len();
        }
        buf.reserve(packet_len(remaining));
        put_fixed_header(buf, packet_type::SUBACK << 4, remaining);
        buf.put_u16(self.packet_id.get());
        if version.is_v5() {
            self.properties.encode(buf);
        }
        for code in &self.codes {
            buf.put_u8(code.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v311_bytes() {
        let mut out = BytesMut::new();
        let suback = SubAck {
            packet_id: PacketId::new(5).unwrap(),
            properties: PacketProperties::default(),
            codes: vec![ReasonCode(1), ReasonCode(0x80)],
        };
        suback.encode(ProtocolVersion::V311, &mut out);
        assert_eq!(&out[..], &[0x90, 0x04, 0x00, 0x05, 0x01, 0x80]);
    }
}
