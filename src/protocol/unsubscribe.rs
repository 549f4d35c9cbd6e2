//! UNSUBSCRIBE (3.1.1 section 3.10, 5.0 section 3.10): a packet id and one or more filters.

use bytes::{BufMut, Bytes, BytesMut};

use super::error::DecodeError;
use super::packet::{PacketId, ProtocolVersion, packet_len, packet_type, put_fixed_header};
use super::primitives::{Reader, put_string};
use super::properties::{PacketProperties, PropertyContext};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    pub packet_id: PacketId,
    pub properties: PacketProperties,
    pub filters: Vec<Bytes>,
}

impl Unsubscribe {
    pub(crate) fn decode(reader: &mut Reader, version: ProtocolVersion) -> Result<Unsubscribe, DecodeError> {
        let packet_id = PacketId::read(reader)?;
        let properties =
            if version.is_v5() { PacketProperties::decode(reader, PropertyContext::Unsubscribe)? } else { PacketProperties::default() };
        let mut filters = Vec::new();
        while !reader.is_empty() {
            filters.push(reader.string()?);
        }
        if filters.is_empty() {
            return Err(DecodeError::NoTopicFilters);
        }
        Ok(Unsubscribe { packet_id, properties, filters })
    }

    pub fn encode(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        let mut remaining = 2 + self.filters.iter().map(|f| 2 + f.len()).sum::<usize>();
        if version.is_v5() {
            remaining += self.properties.wire_len();
        }
        buf.reserve(packet_len(remaining));
        put_fixed_header(buf, (packet_type::UNSUBSCRIBE << 4) | 0b0010, remaining);
        buf.put_u16(self.packet_id.get());
        if version.is_v5() {
            self.properties.encode(buf);
        }
        for filter in &self.filters {
            put_string(buf, filter);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Packet, decode};

    #[test]
    fn v311_bytes_round_trip() {
        let bytes = [0xA2, 0x05, 0x00, 0x09, 0, 1, b'a'];
        let mut buf = BytesMut::from(&bytes[..]);
        let Some(Packet::Unsubscribe(unsubscribe)) = decode(&mut buf, ProtocolVersion::V311, 1024).unwrap() else { panic!() };
        let mut out = BytesMut::new();
        unsubscribe.encode(ProtocolVersion::V311, &mut out);
        assert_eq!(&out[..], &bytes[..]);
    }
}
