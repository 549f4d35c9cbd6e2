//! PUBACK, PUBREC, PUBREL and PUBCOMP: one layout (packet id, then in 5.0 an optional
//! reason code and properties), told apart by the packet type in the fixed header.

use bytes::{BufMut, BytesMut};

use super::error::DecodeError;
use super::packet::{PacketId, ProtocolVersion, packet_len, packet_type, put_fixed_header};
use super::primitives::Reader;
use super::properties::{PacketProperties, PropertyContext};
use super::reason::ReasonCode;

/// Bytes of a PUBACK that carries nothing but its packet id (3.1.1's only form, and 5.0's
/// success without properties): `0x40 0x02 id id`.
pub const SHORT_PUBACK_BYTES: usize = 4;

/// The packet ids of the whole short PUBACKs `buf` starts with, in order: what `decode`
/// returns for each of them (a PUBACK, reason Success, no properties, in either version),
/// for a reader that takes a subscriber's run of acknowledgements at once. The run ends
/// at the first bytes that are anything else, an id of 0 (which `decode` refuses) and an
/// incomplete packet included.
pub fn short_pubacks(buf: &[u8]) -> impl Iterator<Item = PacketId> + '_ {
    buf.chunks_exact(SHORT_PUBACK_BYTES).map_while(|ack| match *ack {
        [0x40, 0x02, high, low] => PacketId::new(u16::from_be_bytes([high, low])),
        _ => None,
    })
}

/// How many bytes at the start of `buf` the run `short_pubacks` reads takes.
pub fn short_puback_run_bytes(buf: &[u8]) -> usize {
    short_pubacks(buf).count() * SHORT_PUBACK_BYTES
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub packet_id: PacketId,
    pub reason: ReasonCode,
    pub properties: PacketProperties,
}

impl Ack {
    pub fn new(packet_id: PacketId) -> Ack {
        Ack { packet_id, reason: ReasonCode::SUCCESS, properties: PacketProperties::default() }
    }

    pub fn with_reason(packet_id: PacketId, reason: ReasonCode) -> Ack {
        Ack { packet_id, reason, properties: PacketProperties::default() }
    }

    /// `packet_type`: which of the four this is, for the reason codes it may carry.
    pub(crate) fn decode(reader: &mut Reader, version: ProtocolVersion, packet_type: u8) -> Result<Ack, DecodeError> {
        let packet_id = PacketId::read(reader)?;
        let mut ack = Ack::new(packet_id);
        if version.is_v5() && !reader.is_empty() {
            ack.reason = ReasonCode(reader.u8()?);
            // MQTT 5.0 3.4.2.1, 3.5.2.1, 3.6.2.1, 3.7.2.1: only the listed codes.
            let allowed: &[u8] = match packet_type {
                packet_type::PUBACK | packet_type::PUBREC => &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99],
                _ => &[0x00, 0x92],
            };
            if !allowed.contains(&ack.reason.0) {
                return Err(DecodeError::InvalidReasonCode(ack.reason.0));
            }
            if !reader.is_empty() {
                ack.properties = PacketProperties::decode(reader, PropertyContext::Ack)?;
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

    #[test]
    fn undefined_reason_codes_are_malformed() {
        let decode_v5 = |bytes: &[u8]| decode(&mut BytesMut::from(bytes), ProtocolVersion::V5, 1024);
        // 0x92 is a PUBREL/PUBCOMP code, not a PUBACK/PUBREC one, and 0x05 is nobody's.
        for bytes in [
            &[0x40, 0x03, 0x00, 0x01, 0x92][..],
            &[0x50, 0x03, 0x00, 0x01, 0x05],
            &[0x62, 0x03, 0x00, 0x01, 0x10],
            &[0x70, 0x03, 0x00, 0x01, 0x80],
        ] {
            let error = decode_v5(bytes).unwrap_err();
            assert!(matches!(error, DecodeError::InvalidReasonCode(_)), "{bytes:02x?}: {error:?}");
            assert_eq!(error.reason_code(), ReasonCode::MALFORMED_PACKET);
        }
        assert!(decode_v5(&[0x50, 0x03, 0x00, 0x01, 0x87]).is_ok());
        assert!(decode_v5(&[0x70, 0x03, 0x00, 0x01, 0x92]).is_ok());
        assert!(matches!(decode_v5(&[0xE0, 0x01, 0x05]), Err(DecodeError::InvalidReasonCode(0x05))), "DISCONNECT");
        assert!(matches!(decode_v5(&[0xF0, 0x01, 0x01]), Err(DecodeError::InvalidReasonCode(0x01))), "AUTH");
    }
}
