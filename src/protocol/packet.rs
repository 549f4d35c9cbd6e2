//! The packet enum, the fixed header, and the two entry points every connection uses:
//! `decode` (bytes in, one packet out, or "need more") and `Packet::encode`.

use bytes::{Buf, BufMut, BytesMut};

use super::error::DecodeError;
use super::primitives::{Reader, peek_varint, put_varint, varint_len};
use super::{Ack, Auth, ConnAck, Connect, Disconnect, Publish, SubAck, Subscribe, UnsubAck, Unsubscribe};

/// MQTT 3.1.1 (protocol level 4) or 5.0 (level 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProtocolVersion {
    V311,
    V5,
}

impl ProtocolVersion {
    pub fn level(self) -> u8 {
        match self {
            ProtocolVersion::V311 => 4,
            ProtocolVersion::V5 => 5,
        }
    }
    pub fn is_v5(self) -> bool {
        self == ProtocolVersion::V5
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QoS {
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl QoS {
    pub fn from_bits(bits: u8) -> Result<QoS, DecodeError> {
        match bits {
            0 => Ok(QoS::AtMostOnce),
            1 => Ok(QoS::AtLeastOnce),
            2 => Ok(QoS::ExactlyOnce),
            _ => Err(DecodeError::InvalidQos),
        }
    }
}

/// A non-zero packet identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PacketId(u16);

impl PacketId {
    pub fn new(value: u16) -> Option<PacketId> {
        (value != 0).then_some(PacketId(value))
    }
    pub fn get(self) -> u16 {
        self.0
    }
    /// The next identifier after this one, wrapping past 65535 to 1.
    pub fn next(self) -> PacketId {
        PacketId(if self.0 == u16::MAX { 1 } else { self.0 + 1 })
    }
    pub(crate) fn read(reader: &mut Reader) -> Result<PacketId, DecodeError> {
        PacketId::new(reader.u16()?).ok_or(DecodeError::ZeroPacketId)
    }
}

pub mod packet_type {
    pub const CONNECT: u8 = 1;
    pub const CONNACK: u8 = 2;
    pub const PUBLISH: u8 = 3;
    pub const PUBACK: u8 = 4;
    pub const PUBREC: u8 = 5;
    pub const PUBREL: u8 = 6;
    pub const PUBCOMP: u8 = 7;
    pub const SUBSCRIBE: u8 = 8;
    pub const SUBACK: u8 = 9;
    pub const UNSUBSCRIBE: u8 = 10;
    pub const UNSUBACK: u8 = 11;
    pub const PINGREQ: u8 = 12;
    pub const PINGRESP: u8 = 13;
    pub const DISCONNECT: u8 = 14;
    pub const AUTH: u8 = 15;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Connect(Box<Connect>),
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(Ack),
    PubRec(Ack),
    PubRel(Ack),
    PubComp(Ack),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    PingReq,
    PingResp,
    Disconnect(Disconnect),
    Auth(Auth),
}

impl Packet {
    /// Drops the Reason String and User Properties, which a sender may leave out to keep a
    /// packet within the receiver's Maximum Packet Size (5.0 3.1.2.25 and each packet's
    /// property notes). False if there was nothing to drop.
    pub fn strip_diagnostics(&mut self) -> bool {
        let properties = match self {
            Packet::ConnAck(connack) => &mut connack.properties,
            Packet::PubAck(ack) | Packet::PubRec(ack) | Packet::PubRel(ack) | Packet::PubComp(ack) => &mut ack.properties,
            Packet::SubAck(suback) => &mut suback.properties,
            Packet::UnsubAck(unsuback) => &mut unsuback.properties,
            Packet::Disconnect(disconnect) => &mut disconnect.properties,
            Packet::Auth(auth) => &mut auth.properties,
            Packet::Connect(_)
            | Packet::Publish(_)
            | Packet::Subscribe(_)
            | Packet::Unsubscribe(_)
            | Packet::PingReq
            | Packet::PingResp => {
                return false;
            }
        };
        let Some(properties) = properties.get_mut() else { return false };
        let had_any = properties.reason_string.is_some() || !properties.user_properties.is_empty();
        properties.reason_string = None;
        properties.user_properties.clear();
        had_any
    }
}

/// Decodes one packet from the front of `buf`, consuming it.
///
/// `Ok(None)` means the packet is not complete yet; nothing is consumed. A packet whose
/// declared size exceeds `max_packet_size_bytes` is rejected from its fixed header alone,
/// before its body is buffered. `version` is the connection's negotiated version; CONNECT
/// carries its own.
pub fn decode(buf: &mut BytesMut, version: ProtocolVersion, max_packet_size_bytes: u32) -> Result<Option<Packet>, DecodeError> {
    let Some(&first) = buf.first() else { return Ok(None) };
    let Some((remaining_len, len_bytes)) = peek_varint(&buf[1..])? else { return Ok(None) };
    let total = 1 + len_bytes as u64 + u64::from(remaining_len);
    if total > u64::from(max_packet_size_bytes) {
        return Err(DecodeError::PacketTooLarge { size: total, max: max_packet_size_bytes });
    }
    let total = total as usize;
    if buf.len() < total {
        return Ok(None);
    }
    let packet_type = first >> 4;
    let flags = first & 0x0F;
    if remaining_len == 2
        && len_bytes == 1
        && let Some(ack) = short_ack(packet_type, flags, [buf[2], buf[3]])
    {
        buf.advance(total);
        return ack.map(Some);
    }
    decode_frame(buf, total, len_bytes, version).map(Some)
}

/// Splits the whole packet of `total` bytes off `buf` and decodes it: the general path,
/// whose fields (topics, payloads) share the input's memory.
pub(crate) fn decode_frame(buf: &mut BytesMut, total: usize, len_bytes: usize, version: ProtocolVersion) -> Result<Packet, DecodeError> {
    let mut frame = buf.split_to(total).freeze();
    let first = frame[0];
    frame.advance(1 + len_bytes);
    let mut reader = Reader::new(frame);
    let packet = decode_body(first >> 4, first & 0x0F, &mut reader, version)?;
    if !reader.is_empty() {
        return Err(DecodeError::TrailingBytes(reader.remaining()));
    }
    Ok(packet)
}

/// An acknowledgement in its two-byte form (every 3.1.1 one, a 5.0 success), read in
/// place: a fan-out's subscribers send one per message, and splitting each off the input
/// as a frame of its own costs two atomic reference-count updates. `None`: not one of the
/// four, or flags `decode_body` must judge.
fn short_ack(packet_type: u8, flags: u8, id: [u8; 2]) -> Option<Result<Packet, DecodeError>> {
    use packet_type::*;
    if !matches!((packet_type, flags), (PUBACK | PUBREC | PUBCOMP, 0) | (PUBREL, 0b0010)) {
        return None;
    }
    let Some(packet_id) = PacketId::new(u16::from_be_bytes(id)) else { return Some(Err(DecodeError::ZeroPacketId)) };
    let ack = Ack::new(packet_id);
    Some(Ok(match packet_type {
        PUBACK => Packet::PubAck(ack),
        PUBREC => Packet::PubRec(ack),
        PUBREL => Packet::PubRel(ack),
        _ => Packet::PubComp(ack),
    }))
}

fn expect_flags(packet_type: u8, flags: u8, expected: u8) -> Result<(), DecodeError> {
    if flags != expected {
        return Err(DecodeError::InvalidHeaderFlags { packet_type, flags });
    }
    Ok(())
}

fn decode_body(packet_type: u8, flags: u8, reader: &mut Reader, version: ProtocolVersion) -> Result<Packet, DecodeError> {
    use packet_type::*;
    if packet_type == PUBLISH {
        return Ok(Packet::Publish(Publish::decode(flags, reader, version)?));
    }
    let expected_flags = match packet_type {
        PUBREL | SUBSCRIBE | UNSUBSCRIBE => 0b0010,
        _ => 0,
    };
    expect_flags(packet_type, flags, expected_flags)?;
    Ok(match packet_type {
        CONNECT => Packet::Connect(Box::new(Connect::decode(reader)?)),
        CONNACK => Packet::ConnAck(ConnAck::decode(reader, version)?),
        PUBACK => Packet::PubAck(Ack::decode(reader, version, PUBACK)?),
        PUBREC => Packet::PubRec(Ack::decode(reader, version, PUBREC)?),
        PUBREL => Packet::PubRel(Ack::decode(reader, version, PUBREL)?),
        PUBCOMP => Packet::PubComp(Ack::decode(reader, version, PUBCOMP)?),
        SUBSCRIBE => Packet::Subscribe(Subscribe::decode(reader, version)?),
        SUBACK => Packet::SubAck(SubAck::decode(reader, version)?),
        UNSUBSCRIBE => Packet::Unsubscribe(Unsubscribe::decode(reader, version)?),
        UNSUBACK => Packet::UnsubAck(UnsubAck::decode(reader, version)?),
        PINGREQ => Packet::PingReq,
        PINGRESP => Packet::PingResp,
        DISCONNECT => Packet::Disconnect(Disconnect::decode(reader, version)?),
        AUTH if version.is_v5() => Packet::Auth(Auth::decode(reader)?),
        AUTH => return Err(DecodeError::NotInThisVersion(AUTH)),
        other => return Err(DecodeError::ReservedPacketType(other)),
    })
}

/// Writes a fixed header: the first byte and the remaining length.
pub fn put_fixed_header(buf: &mut impl BufMut, first_byte: u8, remaining_len: usize) {
    buf.put_u8(first_byte);
    put_varint(buf, remaining_len as u32);
}

/// Size of a whole packet given its remaining length.
pub fn packet_len(remaining_len: usize) -> usize {
    1 + varint_len(remaining_len as u32) + remaining_len
}

impl Packet {
    /// Encodes the packet for a connection of `version`.
    pub fn encode(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        use packet_type::*;
        match self {
            Packet::Connect(connect) => connect.encode(buf),
            Packet::ConnAck(connack) => connack.encode(version, buf),
            Packet::Publish(publish) => publish.encode(version, buf),
            Packet::PubAck(ack) => ack.encode(PUBACK << 4, version, buf),
            Packet::PubRec(ack) => ack.encode(PUBREC << 4, version, buf),
            Packet::PubRel(ack) => ack.encode((PUBREL << 4) | 0b0010, version, buf),
            Packet::PubComp(ack) => ack.encode(PUBCOMP << 4, version, buf),
            Packet::Subscribe(subscribe) => subscribe.encode(version, buf),
            Packet::SubAck(suback) => suback.encode(version, buf),
            Packet::Unsubscribe(unsubscribe) => unsubscribe.encode(version, buf),
            Packet::UnsubAck(unsuback) => unsuback.encode(version, buf),
            Packet::PingReq => put_fixed_header(buf, PINGREQ << 4, 0),
            Packet::PingResp => put_fixed_header(buf, PINGRESP << 4, 0),
            Packet::Disconnect(disconnect) => disconnect.encode(version, buf),
            Packet::Auth(auth) => auth.encode(buf),
        }
    }

    /// The packet's name, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Packet::Connect(_) => "CONNECT",
            Packet::ConnAck(_) => "CONNACK",
            Packet::Publish(_) => "PUBLISH",
            Packet::PubAck(_) => "PUBACK",
            Packet::PubRec(_) => "PUBREC",
            Packet::PubRel(_) => "PUBREL",
            Packet::PubComp(_) => "PUBCOMP",
            Packet::Subscribe(_) => "SUBSCRIBE",
            Packet::SubAck(_) => "SUBACK",
            Packet::Unsubscribe(_) => "UNSUBSCRIBE",
            Packet::UnsubAck(_) => "UNSUBACK",
            Packet::PingReq => "PINGREQ",
            Packet::PingResp => "PINGRESP",
            Packet::Disconnect(_) => "DISCONNECT",
            Packet::Auth(_) => "AUTH",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: u32 = 1 << 20;

    #[test]
    fn incomplete_packets_consume_nothing() {
        let mut buf = BytesMut::from(&[0x30, 0x05, 0x00][..]);
        assert_eq!(decode(&mut buf, ProtocolVersion::V311, MAX), Ok(None));
        assert_eq!(buf.len(), 3);
        let mut empty = BytesMut::new();
        assert_eq!(decode(&mut empty, ProtocolVersion::V311, MAX), Ok(None));
    }

    #[test]
    fn oversize_rejected_from_header_alone() {
        // Declares 2 MiB of body; only the header has arrived.
        let mut buf = BytesMut::from(&[0x30, 0x80, 0x80, 0x80, 0x01][..]);
        assert_eq!(decode(&mut buf, ProtocolVersion::V311, MAX), Err(DecodeError::PacketTooLarge { size: 2_097_157, max: MAX }));
    }

    #[test]
    fn ping_and_reserved_types() {
        let mut buf = BytesMut::from(&[0xC0, 0x00, 0xD0, 0x00][..]);
        assert_eq!(decode(&mut buf, ProtocolVersion::V311, MAX), Ok(Some(Packet::PingReq)));
        assert_eq!(decode(&mut buf, ProtocolVersion::V311, MAX), Ok(Some(Packet::PingResp)));
        let mut reserved = BytesMut::from(&[0x00, 0x00][..]);
        assert_eq!(decode(&mut reserved, ProtocolVersion::V311, MAX), Err(DecodeError::ReservedPacketType(0)));
        let mut auth = BytesMut::from(&[0xF0, 0x00][..]);
        assert_eq!(decode(&mut auth, ProtocolVersion::V311, MAX), Err(DecodeError::NotInThisVersion(15)));
    }

    #[test]
    fn reserved_flag_bits_rejected() {
        let mut pingreq_flags = BytesMut::from(&[0xC1, 0x00][..]);
        assert_eq!(
            decode(&mut pingreq_flags, ProtocolVersion::V311, MAX),
            Err(DecodeError::InvalidHeaderFlags { packet_type: 12, flags: 1 })
        );
        // SUBSCRIBE must have flags 0b0010
        let mut subscribe = BytesMut::from(&[0x80, 0x06, 0, 1, 0, 1, b'a', 0][..]);
        assert!(matches!(decode(&mut subscribe, ProtocolVersion::V311, MAX), Err(DecodeError::InvalidHeaderFlags { packet_type: 8, .. })));
    }

    #[test]
    fn trailing_bytes_rejected() {
        let mut buf = BytesMut::from(&[0xC0, 0x01, 0x00][..]);
        assert_eq!(decode(&mut buf, ProtocolVersion::V311, MAX), Err(DecodeError::TrailingBytes(1)));
    }

    #[test]
    fn packet_id_wraps_to_one() {
        assert_eq!(PacketId::new(u16::MAX).unwrap().next().get(), 1);
        assert!(PacketId::new(0).is_none());
    }
}
