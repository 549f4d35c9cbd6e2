//! MQTT 5.0 properties: one struct for every packet, with the set of properties each
//! packet may carry checked on decode (a property in the wrong packet is a protocol error).
//!
//! MQTT 3.1.1 packets have no property block; their `Properties` stay at the default,
//! which owns no heap memory.

use bytes::{BufMut, Bytes};

use super::error::DecodeError;
use super::primitives::{Reader, put_string, put_varint, varint_len};

/// Which packet (or the will inside CONNECT) a property block belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PropertyContext {
    Connect,
    ConnAck,
    Publish,
    Will,
    /// PUBACK, PUBREC, PUBREL and PUBCOMP share one property set.
    Ack,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

impl PropertyContext {
    const fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

const CONNECT: u16 = PropertyContext::Connect.bit();
const CONNACK: u16 = PropertyContext::ConnAck.bit();
const PUBLISH: u16 = PropertyContext::Publish.bit();
const WILL: u16 = PropertyContext::Will.bit();
const ACK: u16 = PropertyContext::Ack.bit();
const SUBSCRIBE: u16 = PropertyContext::Subscribe.bit();
const SUBACK: u16 = PropertyContext::SubAck.bit();

const UNSUBACK: u16 = PropertyContext::UnsubAck.bit();
const DISCONNECT: u16 = PropertyContext::Disconnect.bit();
const AUTH: u16 = PropertyContext::Auth.bit();

pub const USER_PROPERTY_ID: u8 = 0x26;
pub const SUBSCRIPTION_IDENTIFIER_ID: u8 = 0x0B;

/// Reads, writes and sizes one property value of a given wire type.
trait WireValue: Sized {
    fn read(reader: &mut Reader) -> Result<Self, DecodeError>;
    fn write(&self, buf: &mut impl BufMut);
    fn wire_len(&self) -> usize;
}

impl WireValue for u8 {
    fn read(reader: &mut Reader) -> Result<Self, DecodeError> {
        reader.u8()
    }
    fn write(&self, buf: &mut impl BufMut) {
        buf.put_u8(*self)
    }
    fn wire_len(&self) -> usize {
        1
    }
}

impl WireValue for u16 {
    fn read(reader: &mut Reader) -> Result<Self, DecodeError> {
        reader.u16()
    }
    fn write(&self, buf: &mut impl BufMut) {
        buf.put_u16(*self)
    }
    fn wire_len(&self) -> usize {
        2
    }
}

impl WireValue for u32 {
    fn read(reader: &mut Reader) -> Result<Self, DecodeError> {
        reader.u32()
    }
    fn write(&self, buf: &mut impl BufMut) {
        buf.put_u32(*self)
    }
    fn wire_len(&self) -> usize {
        4
    }
}

/// UTF-8 strings and binary data share the two-byte length prefix; the table says which to validate.
impl WireValue for Bytes {
    fn read(reader: &mut Reader) -> Result<Self, DecodeError> {
        reader.binary()
    }
    fn write(&self, buf: &mut impl BufMut) {
        put_string(buf, self)
    }
    fn wire_len(&self) -> usize {
        2 + self.len()
    }
}

macro_rules! properties {
    ($( $id:literal $field:ident : $ty:ty, utf8 = $utf8:literal, in $allowed:expr, valid $valid:expr; )*) => {
        /// Every MQTT 5.0 property. `None`/empty means absent.
        #[derive(Debug, Clone, Default, PartialEq, Eq)]
        pub struct Properties {
            $( pub $field: Option<$ty>, )*
            /// Repeatable; only PUBLISH may carry several, SUBSCRIBE at most one.
            pub subscription_identifiers: Vec<u32>,
            /// Repeatable name/value pairs, order preserved.
            pub user_properties: Vec<(Bytes, Bytes)>,
        }

        impl Properties {
            /// Decodes a property block (length prefix included) for `context`.
            pub fn decode(reader: &mut Reader, context: PropertyContext) -> Result<Self, DecodeError> {
                let len = reader.varint()? as usize;
                let mut block = reader.sub(len)?;
                let mut props = Properties::default();
                while !block.is_empty() {
                    let id = block.u8()?;
                    match id {
                        $( $id => {
                            if $allowed & context.bit() == 0 {
                                return Err(DecodeError::PropertyNotAllowed(id));
                            }
                            if props.$field.is_some() {
                                return Err(DecodeError::DuplicateProperty(id));
                            }
                            let value = <$ty as WireValue>::read(&mut block)?;
                            let valid: fn(&$ty) -> bool = $valid;
                            if !valid(&value) {
                                return Err(DecodeError::InvalidPropertyValue(id));
                            }
                            if $utf8 && !is_utf8_value(&value) {
                                return Err(DecodeError::InvalidUtf8);
                            }
                            props.$field = Some(value);
                        } )*
                        SUBSCRIPTION_IDENTIFIER_ID => {
                            if (PUBLISH | SUBSCRIBE) & context.bit() == 0 {
                                return Err(DecodeError::PropertyNotAllowed(id));
                            }
                            if context == PropertyContext::Subscribe && !props.subscription_identifiers.is_empty() {
                                return Err(DecodeError::DuplicateProperty(id));
                            }
                            let value = block.varint()?;
                            if value == 0 {
                                return Err(DecodeError::InvalidPropertyValue(id));
                            }
                            props.subscription_identifiers.push(value);
                        }
                        USER_PROPERTY_ID => {
                            let name = block.string()?;
                            let value = block.string()?;
                            props.user_properties.push((name, value));
                        }
                        other => return Err(DecodeError::UnknownProperty(other)),
                    }
                }
                Ok(props)
            }

            /// Length of the property block without its own length prefix.
            pub fn body_len(&self) -> usize {
                let mut len = 0;
                $( if let Some(value) = &self.$field { len += 1 + value.wire_len(); } )*
                for id in &self.subscription_identifiers {
                    len += 1 + varint_len(*id);
                }
                for (name, value) in &self.user_properties {
                    len += 1 + 2 + name.len() + 2 + value.len();
                }
                len
            }

            /// Length of the block as it appears on the wire, prefix included.
            pub fn wire_len(&self) -> usize {
                let body = self.body_len();
                varint_len(body as u32) + body
            }

            pub fn encode(&self, buf: &mut impl BufMut) {
                put_varint(buf, self.body_len() as u32);
                self.encode_body(buf);
            }

            /// The properties without the length prefix (for callers that append more).
            pub fn encode_body(&self, buf: &mut impl BufMut) {
                $( if let Some(value) = &self.$field { buf.put_u8($id); value.write(buf); } )*
                for id in &self.subscription_identifiers {
                    buf.put_u8(SUBSCRIPTION_IDENTIFIER_ID);
                    put_varint(buf, *id);
                }
                for (name, value) in &self.user_properties {
                    buf.put_u8(USER_PROPERTY_ID);
                    put_string(buf, name);
                    put_string(buf, value);
                }
            }
        }
    };
}

fn is_utf8_value<T: 'static>(value: &T) -> bool {
    match (value as &dyn std::any::Any).downcast_ref::<Bytes>() {
        Some(bytes) => super::primitives::is_mqtt_utf8(bytes),
        None => true,
    }
}

fn any<T>(_: &T) -> bool {
    true
}
fn zero_or_one(value: &u8) -> bool {
    *value <= 1
}
fn non_zero_u16(value: &u16) -> bool {
    *value != 0
}
fn non_zero_u32(value: &u32) -> bool {
    *value != 0
}

properties! {
    0x01 payload_format_indicator: u8, utf8 = false, in PUBLISH | WILL, valid zero_or_one;
    0x02 message_expiry_interval: u32, utf8 = false, in PUBLISH | WILL, valid any;
    0x03 content_type: Bytes, utf8 = true, in PUBLISH | WILL, valid any;
    0x08 response_topic: Bytes, utf8 = true, in PUBLISH | WILL, valid any;
    0x09 correlation_data: Bytes, utf8 = false, in PUBLISH | WILL, valid any;
    0x11 session_expiry_interval: u32, utf8 = false, in CONNECT | CONNACK | DISCONNECT, valid any;
    0x12 assigned_client_identifier: Bytes, utf8 = true, in CONNACK, valid any;
    0x13 server_keep_alive: u16, utf8 = false, in CONNACK, valid any;
    0x15 authentication_method: Bytes, utf8 = true, in CONNECT | CONNACK | AUTH, valid any;
    0x16 authentication_data: Bytes, utf8 = false, in CONNECT | CONNACK | AUTH, valid any;
    0x17 request_problem_information: u8, utf8 = false, in CONNECT, valid zero_or_one;
    0x18 will_delay_interval: u32, utf8 = false, in WILL, valid any;
    0x19 request_response_information: u8, utf8 = false, in CONNECT, valid zero_or_one;
    0x1A response_information: Bytes, utf8 = true, in CONNACK, valid any;
    0x1C server_reference: Bytes, utf8 = true, in CONNACK | DISCONNECT, valid any;
    0x1F reason_string: Bytes, utf8 = true, in CONNACK | ACK | SUBACK | UNSUBACK | DISCONNECT | AUTH, valid any;
    0x21 receive_maximum: u16, utf8 = false, in CONNECT | CONNACK, valid non_zero_u16;
    0x22 topic_alias_maximum: u16, utf8 = false, in CONNECT | CONNACK, valid any;
    0x23 topic_alias: u16, utf8 = false, in PUBLISH, valid any;
    0x24 maximum_qos: u8, utf8 = false, in CONNACK, valid zero_or_one;
    0x25 retain_available: u8, utf8 = false, in CONNACK, valid zero_or_one;
    0x27 maximum_packet_size: u32, utf8 = false, in CONNECT | CONNACK, valid non_zero_u32;
    0x28 wildcard_subscription_available: u8, utf8 = false, in CONNACK, valid zero_or_one;
    0x29 subscription_identifier_available: u8, utf8 = false, in CONNACK, valid zero_or_one;
    0x2A shared_subscription_available: u8, utf8 = false, in CONNACK, valid zero_or_one;
}

impl Properties {
    pub fn is_empty(&self) -> bool {
        self.body_len() == 0
    }

    /// The same properties in one compact allocation of their own, so that keeping them
    /// does not keep the frame they were decoded from alive.
    pub fn detached(&self, context: PropertyContext) -> Properties {
        if self.is_empty() {
            return Properties::default();
        }
        let mut block = bytes::BytesMut::with_capacity(self.wire_len());
        self.encode(&mut block);
        Properties::decode(&mut Reader::new(block.freeze()), context).expect("our own encoding decodes")
    }
}

/// Properties as the frequent packets (PUBLISH and its acknowledgements) carry them: one
/// pointer, nothing allocated while empty, which is every 3.1.1 packet and most 5.0 ones.
/// Inline, the full set is 400 bytes, and moving PUBLISH and PUBACK values through the
/// decoder and the shard was 7% of a QoS 1 fan-out profile, all of it in memcpy.
/// Reads see an empty set when there is none. There is no `DerefMut` on purpose: a write
/// through it would allocate even to `take()` from an empty set (as every PUBLISH's topic
/// alias check did); `get_mut` never allocates, `make_mut` says that it may.
#[derive(Clone, Default)]
pub struct PacketProperties(Option<Box<Properties>>);

/// What an absent set reads as.
static NO_PROPERTIES: std::sync::LazyLock<Properties> = std::sync::LazyLock::new(Properties::default);

impl PacketProperties {
    /// Decodes a property block (length prefix included); an empty one allocates nothing.
    pub fn decode(reader: &mut Reader, context: PropertyContext) -> Result<Self, DecodeError> {
        if reader.first() == Some(0) {
            reader.u8()?;
            return Ok(PacketProperties(None));
        }
        Properties::decode(reader, context).map(PacketProperties::from)
    }

    /// The set, for changing what is there; `None` when the packet has no properties.
    pub fn get_mut(&mut self) -> Option<&mut Properties> {
        self.0.as_deref_mut()
    }

    /// The set, allocated first if the packet had none.
    pub fn make_mut(&mut self) -> &mut Properties {
        self.0.get_or_insert_with(Box::default)
    }

    /// The set itself, for a caller that keeps it (an empty one allocates nothing).
    pub fn into_inner(self) -> Properties {
        self.0.map(|boxed| *boxed).unwrap_or_default()
    }
}

impl From<Properties> for PacketProperties {
    fn from(properties: Properties) -> Self {
        PacketProperties((!properties.is_empty()).then(|| Box::new(properties)))
    }
}

impl std::ops::Deref for PacketProperties {
    type Target = Properties;

    fn deref(&self) -> &Properties {
        self.0.as_deref().unwrap_or(&NO_PROPERTIES)
    }
}

impl PartialEq for PacketProperties {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for PacketProperties {}

impl std::fmt::Debug for PacketProperties {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(formatter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(bytes: &'static [u8], context: PropertyContext) -> Result<Properties, DecodeError> {
        Properties::decode(&mut Reader::new(Bytes::from_static(bytes)), context)
    }

    #[test]
    fn spelled_out_block_decodes() {
        // length 14: message expiry 10, user property ("k","v"), subscription id 5
        let props = decode(&[14, 0x02, 0, 0, 0, 10, 0x26, 0, 1, b'k', 0, 1, b'v', 0x0B, 5], PropertyContext::Publish).unwrap();
        assert_eq!(props.message_expiry_interval, Some(10));
        assert_eq!(props.user_properties, vec![(Bytes::from_static(b"k"), Bytes::from_static(b"v"))]);
        assert_eq!(props.subscription_identifiers, vec![5]);
        let mut out = Vec::new();
        props.encode(&mut out);
        assert_eq!(out, [14, 0x02, 0, 0, 0, 10, 0x0B, 5, 0x26, 0, 1, b'k', 0, 1, b'v']);
    }

    #[test]
    fn property_in_wrong_packet_is_rejected() {
        assert_eq!(decode(&[2, 0x13, 0], PropertyContext::Connect), Err(DecodeError::PropertyNotAllowed(0x13)));
        assert_eq!(decode(&[3, 0x13, 0, 5], PropertyContext::Connect), Err(DecodeError::PropertyNotAllowed(0x13)));
        // A Session Expiry Interval in a PUBLISH makes it a Malformed Packet (5.0 2.2.2.2).
        let error = decode(&[6, 0x11, 0, 0, 0, 10, 0], PropertyContext::Publish).unwrap_err();
        assert_eq!(error, DecodeError::PropertyNotAllowed(0x11));
        assert_eq!(error.reason_code(), crate::protocol::ReasonCode::MALFORMED_PACKET);
    }

    #[test]
    fn duplicates_invalid_values_and_unknown_ids() {
        assert_eq!(decode(&[4, 0x01, 1, 0x01, 0], PropertyContext::Publish), Err(DecodeError::DuplicateProperty(0x01)));
        assert_eq!(decode(&[2, 0x01, 2], PropertyContext::Publish), Err(DecodeError::InvalidPropertyValue(0x01)));
        assert_eq!(decode(&[3, 0x21, 0, 0], PropertyContext::Connect), Err(DecodeError::InvalidPropertyValue(0x21)));
        assert_eq!(decode(&[2, 0x0B, 0], PropertyContext::Publish), Err(DecodeError::InvalidPropertyValue(0x0B)));
        assert_eq!(decode(&[1, 0x7F], PropertyContext::Publish), Err(DecodeError::UnknownProperty(0x7F)));
        assert_eq!(decode(&[4, 0x0B, 1, 0x0B, 2], PropertyContext::Subscribe), Err(DecodeError::DuplicateProperty(0x0B)));
    }

    #[test]
    fn packet_properties_stay_small_and_read_like_the_set() {
        assert_eq!(std::mem::size_of::<PacketProperties>(), std::mem::size_of::<usize>());
        let empty = PacketProperties::decode(&mut Reader::new(Bytes::from_static(&[0])), PropertyContext::Ack).unwrap();
        assert!(empty.0.is_none() && empty.is_empty() && empty == PacketProperties::default());
        let mut set = PacketProperties::decode(&mut Reader::new(Bytes::from_static(&[2, 0x01, 1])), PropertyContext::Publish).unwrap();
        assert_eq!(set.payload_format_indicator, Some(1));
        assert_ne!(set, empty);
        set.get_mut().expect("decoded a set").payload_format_indicator = None;
        assert_eq!(set, empty, "equal by content, boxed or not");
        let mut none = PacketProperties::default();
        assert!(none.get_mut().is_none(), "reading for a change allocates nothing");
        none.make_mut().topic_alias = Some(3);
        assert_eq!(none.topic_alias, Some(3));
        assert!(PacketProperties::from(Properties::default()).0.is_none());
        // Errors in a block are the set's errors.
        let error = PacketProperties::decode(&mut Reader::new(Bytes::from_static(&[2, 0x01, 2])), PropertyContext::Publish);
        assert_eq!(error.unwrap_err(), DecodeError::InvalidPropertyValue(0x01));
    }

    #[test]
    fn content_type_must_be_utf8() {
        assert_eq!(decode(&[4, 0x03, 0, 1, 0xFF], PropertyContext::Publish), Err(DecodeError::InvalidUtf8));
        // correlation data is binary: any bytes
        assert!(decode(&[4, 0x09, 0, 1, 0xFF], PropertyContext::Publish).is_ok());
    }
}
