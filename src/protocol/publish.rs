//! PUBLISH (3.1.1 section 3.3, 5.0 section 3.3). Topic and payload are slices of the
//! received frame, so forwarding a message never copies its payload.

use bytes::{BufMut, Bytes, BytesMut};

use super::error::DecodeError;
use super::packet::{PacketId, ProtocolVersion, QoS, packet_len, packet_type, put_fixed_header};
use super::primitives::{Reader, put_string, put_varint, varint_len};

const TOPIC_ALIAS_PROPERTY_ID: u8 = 0x23;
use super::properties::{PacketProperties, Properties, PropertyContext};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    pub topic: Bytes,
    /// Present exactly when `qos` is 1 or 2.
    pub packet_id: Option<PacketId>,
    pub properties: PacketProperties,
    pub payload: Bytes,
}

impl Publish {
    /// A QoS 0 PUBLISH (no packet id), not retained, without properties.
    pub fn at_most_once(topic: impl Into<Bytes>, payload: impl Into<Bytes>) -> Publish {
        Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: topic.into(),
            packet_id: None,
            properties: PacketProperties::default(),
            payload: payload.into(),
        }
    }

    /// A QoS 1 or 2 PUBLISH with its packet id, not retained, without properties.
    pub fn acknowledged(topic: impl Into<Bytes>, payload: impl Into<Bytes>, qos: QoS, packet_id: PacketId) -> Publish {
        debug_assert!(qos != QoS::AtMostOnce, "QoS 0 has no packet id: use at_most_once");
        Publish { qos, packet_id: Some(packet_id), ..Publish::at_most_once(topic, payload) }
    }

    /// The same PUBLISH with RETAIN set.
    pub fn retained(self) -> Publish {
        Publish { retain: true, ..self }
    }

    pub(crate) fn decode(flags: u8, reader: &mut Reader, version: ProtocolVersion) -> Result<Publish, DecodeError> {
        let dup = flags & 0b1000 != 0;
        let qos = QoS::from_bits((flags >> 1) & 0b11)?;
        let retain = flags & 0b0001 != 0;
        if qos == QoS::AtMostOnce && dup {
            return Err(DecodeError::DupWithQos0);
        }
        let topic = reader.string()?;
        let packet_id = if qos == QoS::AtMostOnce { None } else { Some(PacketId::read(reader)?) };
        let properties =
            if version.is_v5() { PacketProperties::decode(reader, PropertyContext::Publish)? } else { PacketProperties::default() };
        let payload = reader.rest();
        Ok(Publish { dup, qos, retain, topic, packet_id, properties, payload })
    }

    /// Size on the wire for a connection of `version`.
    pub fn wire_len(&self, version: ProtocolVersion) -> usize {
        packet_len(remaining_len(version, &self.header(), &self.topic, &self.properties, &self.payload))
    }

    fn header(&self) -> PublishHeader {
        PublishHeader { dup: self.dup, qos: self.qos, retain: self.retain, packet_id: self.packet_id, topic_alias: None }
    }

    pub fn encode(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        let header = self.header();
        write_publish(buf, version, header, &self.topic, &self.properties, &self.payload);
    }
}

/// The per-delivery part of a PUBLISH: what differs between two copies of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishHeader {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    pub packet_id: Option<PacketId>,
    /// A broker-to-client Topic Alias (5.0), added to the properties on the wire.
    pub topic_alias: Option<u16>,
}

/// Bytes a Topic Alias property takes: identifier and two-byte value.
const TOPIC_ALIAS_PROPERTY_BYTES: usize = 3;

/// Size on the wire of a PUBLISH with these parts (checked against a client's Maximum
/// Packet Size before it is sent).
pub fn publish_wire_len(version: ProtocolVersion, header: &PublishHeader, topic: &[u8], properties: &Properties, payload: &[u8]) -> usize {
    packet_len(remaining_len(version, header, topic, properties, payload))
}

fn property_block_len(header: &PublishHeader, properties: &Properties) -> usize {
    properties.body_len() + if header.topic_alias.is_some() { TOPIC_ALIAS_PROPERTY_BYTES } else { 0 }
}

fn remaining_len(version: ProtocolVersion, header: &PublishHeader, topic: &[u8], properties: &Properties, payload: &[u8]) -> usize {
    let mut len = 2 + topic.len() + payload.len();
    if header.qos != QoS::AtMostOnce {
        len += 2;
    }
    if version.is_v5() {
        let block = property_block_len(header, properties);
        len += varint_len(block as u32) + block;
    }
    len
}

/// Writes a PUBLISH from its parts, so a routed message is encoded straight into a
/// connection's buffer without building a `Publish` per subscriber.
pub fn write_publish(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    header: PublishHeader,
    topic: &[u8],
    properties: &Properties,
    payload: &[u8],
) {
    debug_assert_eq!(header.packet_id.is_some(), header.qos != QoS::AtMostOnce);
    debug_assert!(properties.topic_alias.is_none(), "aliases are per connection, set through the header");
    let remaining = remaining_len(version, &header, topic, properties, payload);
    buf.reserve(packet_len(remaining));
    let mut first = (packet_type::PUBLISH << 4) | ((header.qos as u8) << 1);
    if header.dup {
        first |= 0b1000;
    }
    if header.retain {
        first |= 0b0001;
    }
    put_fixed_header(buf, first, remaining);
    put_string(buf, topic);
    if let Some(packet_id) = header.packet_id {
        buf.put_u16(packet_id.get());
    }
    if version.is_v5() {
        put_varint(buf, property_block_len(&header, properties) as u32);
        properties.encode_body(buf);
        if let Some(alias) = header.topic_alias {
            buf.put_u8(TOPIC_ALIAS_PROPERTY_ID);
            buf.put_u16(alias);
        }
    }
    buf.put_slice(payload);
}

/// One wire layout of a PUBLISH (version, QoS, RETAIN, properties), encoded once and
/// copied into the buffer of every recipient that gets this layout: recipients differ only
/// in packet id and DUP flag, which are patched in the copy. Reuses its buffer.
#[derive(Debug, Default)]
pub struct PublishLayout {
    bytes: BytesMut,
    /// Where the packet id sits (QoS 1/2 only).
    packet_id_at: Option<usize>,
}

impl PublishLayout {
    /// Encodes the layout, replacing the previous one (no alias: aliases are per connection).
    pub fn encode(&mut self, version: ProtocolVersion, qos: QoS, retain: bool, topic: &[u8], properties: &Properties, payload: &[u8]) {
        // Any id will do as a placeholder; every copy gets its own.
        let placeholder = PacketId::new(u16::MAX).expect("non-zero");
        let header =
            PublishHeader { dup: false, qos, retain, packet_id: (qos != QoS::AtMostOnce).then_some(placeholder), topic_alias: None };
        self.bytes.clear();
        write_publish(&mut self.bytes, version, header, topic, properties, payload);
        let remaining = remaining_len(version, &header, topic, properties, payload);
        let fixed_header = packet_len(remaining) - remaining;
        self.packet_id_at = header.packet_id.map(|_| fixed_header + 2 + topic.len());
    }

    /// The encoded size, for a recipient's Maximum Packet Size.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Appends this layout to `buf` with the recipient's packet id (present exactly for
    /// QoS 1/2) and DUP flag.
    pub fn write_to(&self, buf: &mut BytesMut, packet_id: Option<PacketId>, dup: bool) {
        debug_assert_eq!(packet_id.is_some(), self.packet_id_at.is_some());
        let start = buf.len();
        buf.extend_from_slice(&self.bytes);
        if let (Some(at), Some(packet_id)) = (self.packet_id_at, packet_id) {
            buf[start + at..start + at + 2].copy_from_slice(&packet_id.get().to_be_bytes());
        }
        if dup {
            buf[start] |= 0b1000;
        }
    }

    /// Gives back a large buffer once the message it held is done with.
    pub fn shrink(&mut self, capacity_max: usize) {
        if self.bytes.capacity() > capacity_max {
            self.bytes = BytesMut::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Packet, decode};

    #[test]
    fn qos1_v311_spelled_out() {
        let bytes = [0x32, 0x08, 0, 3, b'a', b'/', b'b', 0x00, 0x07, b'x'];
        let mut buf = BytesMut::from(&bytes[..]);
        let Some(Packet::Publish(publish)) = decode(&mut buf, ProtocolVersion::V311, 1024).unwrap() else { panic!("not a PUBLISH") };
        assert_eq!(publish.qos, QoS::AtLeastOnce);
        assert_eq!(publish.packet_id, PacketId::new(7));
        assert_eq!(&publish.topic[..], b"a/b");
        assert_eq!(&publish.payload[..], b"x");
        let mut out = BytesMut::new();
        publish.encode(ProtocolVersion::V311, &mut out);
        assert_eq!(&out[..], &bytes[..]);
    }

    #[test]
    fn qos3_and_dup_on_qos0_rejected() {
        let mut qos3 = BytesMut::from(&[0x36, 0x05, 0, 1, b'a', 0, 1][..]);
        assert_eq!(decode(&mut qos3, ProtocolVersion::V311, 1024), Err(DecodeError::InvalidQos));
        let mut dup0 = BytesMut::from(&[0x38, 0x03, 0, 1, b'a'][..]);
        assert_eq!(decode(&mut dup0, ProtocolVersion::V311, 1024), Err(DecodeError::DupWithQos0));
    }

    #[test]
    fn topic_alias_from_the_header_is_appended_to_the_properties() {
        let header = PublishHeader { dup: false, qos: QoS::AtMostOnce, retain: false, packet_id: None, topic_alias: Some(2) };
        let mut out = BytesMut::new();
        write_publish(&mut out, ProtocolVersion::V5, header, b"", &Properties::default(), b"p");
        assert_eq!(&out[..], &[0x30, 0x07, 0, 0, 0x03, 0x23, 0x00, 0x02, b'p']);
        assert_eq!(publish_wire_len(ProtocolVersion::V5, &header, b"", &Properties::default(), b"p"), out.len());
        let Some(Packet::Publish(decoded)) = decode(&mut out, ProtocolVersion::V5, 1024).unwrap() else { panic!() };
        assert_eq!((decoded.topic.len(), decoded.properties.topic_alias), (0, Some(2)));
    }

    #[test]
    fn zero_packet_id_rejected() {
        let mut buf = BytesMut::from(&[0x32, 0x05, 0, 1, b'a', 0, 0][..]);
        assert_eq!(decode(&mut buf, ProtocolVersion::V311, 1024), Err(DecodeError::ZeroPacketId));
    }

    #[test]
    fn v5_empty_properties_byte() {
        let bytes = [0x30, 0x05, 0, 1, b't', 0x00, b'p'];
        let mut buf = BytesMut::from(&bytes[..]);
        let Some(Packet::Publish(publish)) = decode(&mut buf, ProtocolVersion::V5, 1024).unwrap() else { panic!("not a PUBLISH") };
        assert_eq!(&publish.payload[..], b"p");
        let mut out = BytesMut::new();
        publish.encode(ProtocolVersion::V5, &mut out);
        assert_eq!(&out[..], &bytes[..]);
    }

    #[test]
    fn a_layout_copied_with_its_own_packet_id_and_dup_equals_a_direct_encoding() {
        let properties = Properties { content_type: Some(Bytes::from_static(b"text/plain")), ..Properties::default() };
        let long_topic = vec![b't'; 300];
        for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
            for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
                for (topic, payload) in [(&b"a/b"[..], &b"x"[..]), (&long_topic[..], &[7u8; 200][..])] {
                    let mut layout = PublishLayout::default();
                    layout.encode(version, qos, true, topic, &properties, payload);
                    for (id, dup) in [(1u16, false), (0x1234, true), (u16::MAX, false)] {
                        let packet_id = (qos != QoS::AtMostOnce).then(|| PacketId::new(id).unwrap());
                        let mut direct = BytesMut::from(&b"before"[..]);
                        let header = PublishHeader { dup, qos, retain: true, packet_id, topic_alias: None };
                        write_publish(&mut direct, version, header, topic, &properties, payload);
                        let mut copied = BytesMut::from(&b"before"[..]);
                        layout.write_to(&mut copied, packet_id, dup);
                        assert_eq!(copied, direct, "{version:?} {qos:?} id {id} dup {dup}");
                        assert_eq!(layout.len() + 6, copied.len());
                    }
                }
            }
        }
    }
}
