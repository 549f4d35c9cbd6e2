//! CONNACK (3.1.1 section 3.2, 5.0 section 3.2). `code` is the 3.1.1 return code or the
//! 5.0 reason code, as the connection's version says.

use bytes::{BufMut, BytesMut};

use super::error::DecodeError;
use super::packet::{ProtocolVersion, packet_len, packet_type, put_fixed_header};
use super::primitives::Reader;
use super::properties::{PacketProperties, PropertyContext};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    pub session_present: bool,
    pub code: u8,
    pub properties: PacketProperties,
}

impl ConnAck {
    pub(crate) fn decode(reader: &mut Reader, version: ProtocolVersion) -> Result<ConnAck, DecodeError> {
        let flags = reader.u8()?;
        if flags & 0xFE != 0 {
            return Err(DecodeError::InvalidHeaderFlags { packet_type: packet_type::CONNACK, flags });
        }
        let code = reader.u8()?;
        let properties =
            if version.is_v5() { PacketProperties::decode(reader, PropertyContext::ConnAck)? } else { PacketProperties::default() };
        Ok(ConnAck { session_present: flags & 1 == 1, code, properties })
    }

    pub fn encode(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        let remaining = 2 + if version.is_v5() { self.properties.wire_len() } else { 0 };
        buf.reserve(packet_len(remaining));
        put_fixed_header(buf, packet_type::CONNACK << 4, remaining);
        buf.put_u8(u8::from(self.session_present));
        buf.put_u8(self.code);
        if version.is_v5() {
            self.properties.encode(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v311_bytes() {
        let mut out = BytesMut::new();
        ConnAck { session_present: true, code: 0, properties: PacketProperties::default() }.encode(ProtocolVersion::V311, &mut out);
        assert_eq!(&out[..], &[0x20, 0x02, 0x01, 0x00]);
    }

    #[test]
    fn v5_bytes_with_property() {
        let mut out = BytesMut::new();
        let properties = crate::protocol::Properties { receive_maximum: Some(10), ..Default::default() };
        ConnAck { session_present: false, code: 0x85, properties: properties.into() }.encode(ProtocolVersion::V5, &mut out);
        assert_eq!(&out[..], &[0x20, 0x06, 0x00, 0x85, 0x03, 0x21, 0x00, 0x0A]);
    }
}
