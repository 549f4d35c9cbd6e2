//! PUBACK, PUBREC, PUBREL and PUBCOMP: one layout (packet id, then in 5.0 an optional
//! reason code and properties), told apart by the packet type in the fixed header.

use bytes::{BufMut, BytesMut};

use super::error::DecodeError;
use super::packet::{PacketId, ProtocolVersion, packet_len, put_fixed_header};
use super::primitives::Reader;
use super::properties::{Properties, PropertyContext};
use super::reason::ReasonCode;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub packet_id: PacketId,
    pub reason: ReasonCode,
    pub properties: Properties,
}

impl Ack {
    pub fn new(packet_id: PacketId) -> Ack {
        Ack { packet_id, reason: ReasonCode::SUCCESS, properties: Properties::default() }
    }

    pub fn with_reason(packet_id: PacketId, reason: ReasonCode) -> Ack {
        Ack { packet_id, reason, properties: Properties::default() }
    }

    pub(crate) fn decode(reader: &mut Reader, version: ProtocolVersion) -> Result<Ack, DecodeError> {
        let packet_id = PacketId::read(reader)?;
        let mut ack = Ack::new(packet_id);
        if version.is_v5() && !reader.is_empty() {
            ack.reason = ReasonCode(reader.u8()?);
            if !reader.is_empty() {
                ack.properties = Properties::decode(reader, PropertyContext::Ack)?;
            }
        }
        Ok(ack)
    }

    pub fn encode(&self, first_byte: u8, version: ProtocolVersion, buf: &mut BytesMut) {
        // 5.0 lets a success without properties shrink to the 3.1.1 form.
        let short = !version.is_v5() || (self.reason == ReasonCode::SUCCESS && self.properties.is_empty());
        let remaining = if short {
            2
        } else if self.properties.is_empty() {
            3
        } else {
            3 + self.properties.wire_len()
        };
        buf.reserve(packet_len(remaining));
        put_fixed_header(buf, first_byte, remaining);
        buf.put_u16(self.packet_id.get());
        if !short {
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
    use crate::protocol::{Packet, decode};

    #[test]
    fn pubrel_bytes_and_flags() {
        let mut out = BytesMut::new();
        Packet::PubRel(Ack::new(PacketId::new(258).unwrap())).encode(ProtocolVersion::V311, &mut out);
        assert_eq!(&out[..], &[0x62, 0x02, 0x01, 0x02]);
        let mut wrong_flags = BytesMut::from(&[0x60, 0x02, 0x01, 0x02][..]);
        assert!(matches!(
            decode(&mut wrong_flags, ProtocolVersion::V311, 1024),
            Err(DecodeError::InvalidHeaderFlags { packet_type: 6, .. })
        ));
    }

    #[test]
    fn v5_reason_forms() {
        let mut out = BytesMut::new();
        let ack = Ack::with_reason(PacketId::new(1).unwrap(), ReasonCode::NO_MATCHING_SUBSCRIBERS);
        Packet::PubAck(ack.clone()).encode(ProtocolVersion::V5, &mut out);
        assert_eq!(&out[..], &[0x40, 0x03, 0x00, 0x01, 0x10]);
        assert_eq!(decode(&mut out, ProtocolVersion::V5, 1024), Ok(Some(Packet::PubAck(ack))));
        let mut short = BytesMut::from(&[0x40, 0x02, 0x00, 0x01][..]);
        let Some(Packet::PubAck(ack)) = decode(&mut short, ProtocolVersion::V5, 1024).unwrap() else { panic!() };
        assert_eq!(ack.reason, ReasonCode::SUCCESS);
    }
}
