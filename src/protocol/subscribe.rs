//! SUBSCRIBE (3.1.1 section 3.8, 5.0 section 3.8): a packet id and one or more
//! (filter, options) pairs. The filter's syntax is checked by `topics`, not here, because
//! an invalid filter earns a per-filter SUBACK failure rather than a closed connection.

use bytes::{BufMut, Bytes, BytesMut};

use super::error::DecodeError;
use super::packet::{PacketId, ProtocolVersion, QoS, packet_len, packet_type, put_fixed_header};
use super::primitives::{Reader, put_string};
use super::properties::{PacketProperties, PropertyContext};

/// MQTT 5.0 retain handling option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetainHandling {
    SendOnSubscribe = 0,
    SendIfNewSubscription = 1,
    DoNotSend = 2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscriptionOptions {
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: RetainHandling,
}

impl SubscriptionOptions {
    pub fn with_qos(qos: QoS) -> SubscriptionOptions {
        SubscriptionOptions { qos, no_local: false, retain_as_published: false, retain_handling: RetainHandling::SendOnSubscribe }
    }

    /// The options as the 5.0 wire byte (every option kept), for the session log.
    pub fn to_byte(self) -> u8 {
        self.encode(ProtocolVersion::V5)
    }

    /// The inverse of `to_byte`.
    pub fn from_byte(byte: u8) -> Result<SubscriptionOptions, DecodeError> {
        Self::decode(byte, ProtocolVersion::V5)
    }

    fn decode(byte: u8, version: ProtocolVersion) -> Result<SubscriptionOptions, DecodeError> {
        let reserved_mask = if version.is_v5() { 0b1100_0000 } else { 0b1111_1100 };
        if byte & reserved_mask != 0 {
            return Err(DecodeError::InvalidSubscriptionOptions);
        }
        let retain_handling = match (byte >> 4) & 0b11 {
            0 => RetainHandling::SendOnSubscribe,
            1 => RetainHandling::SendIfNewSubscription,
            2 => RetainHandling::DoNotSend,
            _ => return Err(DecodeError::InvalidSubscriptionOptions),
        };
        Ok(SubscriptionOptions {
            qos: QoS::from_bits(byte & 0b11)?,
            no_local: byte & 0b0100 != 0,
            retain_as_published: byte & 0b1000 != 0,
            retain_handling,
        })
    }

    fn encode(&self, version: ProtocolVersion) -> u8 {
        let mut byte = self.qos as u8;
        if version.is_v5() {
            byte |= u8::from(self.no_local) << 2;
            byte |= u8::from(self.retain_as_published) << 3;
            byte |= (self.retain_handling as u8) << 4;
        }
        byte
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    pub packet_id: PacketId,
    pub properties: PacketProperties,
    pub filters: Vec<(Bytes, SubscriptionOptions)>,
}

impl Subscribe {
    pub(crate) fn decode(reader: &mut Reader, version: ProtocolVersion) -> Result<Subscribe, DecodeError> {
        let packet_id = PacketId::read(reader)?;
        let properties =
            if version.is_v5() { PacketProperties::decode(reader, PropertyContext::Subscribe)? } else { PacketProperties::default() };
        let mut filters = Vec::new();
        while !reader.is_empty() {
            let filter = reader.string()?;
            let options = SubscriptionOptions::decode(reader.u8()?, version)?;
            filters.push((filter, options));
        }
        if filters.is_empty() {
            return Err(DecodeError::NoTopicFilters);
        }
        Ok(Subscribe { packet_id, properties, filters })
    }

    pub fn encode(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        let mut remaining = 2 + self.filters.iter().map(|(f, _)| 2 + f.len() + 1).sum::<usize>();
        if version.is_v5() {
            remaining += self.properties.wire_len();
        }
        buf.reserve(packet_len(remaining));
        put_fixed_header(buf, (packet_type::SUBSCRIBE << 4) | 0b0010, remaining);
        buf.put_u16(self.packet_id.get());
        if version.is_v5() {
            self.properties.encode(buf);
        }
        for (filter, options) in &self.filters {
            put_string(buf, filter);
            buf.put_u8(options.encode(version));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Packet, decode};

    #[test]
    fn v311_two_filters_spelled_out() {
        let bytes = [0x82, 0x0C, 0x00, 0x05, 0, 1, b'a', 0x01, 0, 3, b'b', b'/', b'#', 0x02];
        let mut buf = BytesMut::from(&bytes[..]);
        let Some(Packet::Subscribe(subscribe)) = decode(&mut buf, ProtocolVersion::V311, 1024).unwrap() else { panic!() };
        assert_eq!(subscribe.filters.len(), 2);
        assert_eq!(subscribe.filters[1].1.qos, QoS::ExactlyOnce);
        let mut out = BytesMut::new();
        subscribe.encode(ProtocolVersion::V311, &mut out);
        assert_eq!(&out[..], &bytes[..]);
    }

    #[test]
    fn empty_and_reserved_bits_rejected() {
        let mut empty = BytesMut::from(&[0x82, 0x02, 0x00, 0x05][..]);
        assert_eq!(decode(&mut empty, ProtocolVersion::V311, 1024), Err(DecodeError::NoTopicFilters));
        let mut reserved = BytesMut::from(&[0x82, 0x06, 0x00, 0x05, 0, 1, b'a', 0x04][..]);
        assert_eq!(decode(&mut reserved, ProtocolVersion::V311, 1024), Err(DecodeError::InvalidSubscriptionOptions));
        let mut qos3 = BytesMut::from(&[0x82, 0x06, 0x00, 0x05, 0, 1, b'a', 0x03][..]);
        assert_eq!(decode(&mut qos3, ProtocolVersion::V311, 1024), Err(DecodeError::InvalidQos));
    }

    #[test]
    fn v5_options_round_trip() {
        let options = SubscriptionOptions {
            qos: QoS::AtLeastOnce,
            no_local: true,
            retain_as_published: true,
            retain_handling: RetainHandling::DoNotSend,
        };
        assert_eq!(options.encode(ProtocolVersion::V5), 0b0010_1101);
        assert_eq!(SubscriptionOptions::decode(0b0010_1101, ProtocolVersion::V5), Ok(options));
        assert_eq!(SubscriptionOptions::decode(0b0011_0000, ProtocolVersion::V5), Err(DecodeError::InvalidSubscriptionOptions));
    }
}
