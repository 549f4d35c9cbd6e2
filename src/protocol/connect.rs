//! CONNECT (MQTT 3.1.1 section 3.1, 5.0 section 3.1): the only packet that names its own
//! protocol version, so it decodes without one.

use bytes::{BufMut, Bytes, BytesMut};

use super::error::DecodeError;
use super::packet::{ProtocolVersion, QoS, packet_len, packet_type, put_fixed_header};
use super::primitives::{Reader, put_string};
use super::properties::{Properties, PropertyContext};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    pub topic: Bytes,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub properties: Properties,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub version: ProtocolVersion,
    pub clean_start: bool,
    pub keep_alive_s: u16,
    pub properties: Properties,
    pub client_id: Bytes,
    pub will: Option<Will>,
    pub username: Option<Bytes>,
    pub password: Option<Bytes>,
}

const FLAG_RESERVED: u8 = 0x01;
const FLAG_CLEAN: u8 = 0x02;
const FLAG_WILL: u8 = 0x04;
const FLAG_WILL_RETAIN: u8 = 0x20;
const FLAG_PASSWORD: u8 = 0x40;
const FLAG_USERNAME: u8 = 0x80;

impl Connect {
    /// A CONNECT with Clean Start, keep alive 60 s, no will, no credentials, no properties.
    pub fn new(version: ProtocolVersion, client_id: impl Into<Bytes>) -> Connect {
        Connect {
            version,
            clean_start: true,
            keep_alive_s: 60,
            properties: Default::default(),
            client_id: client_id.into(),
            will: None,
            username: None,
            password: None,
        }
    }

    /// `Connect::new` for MQTT 3.1.1.
    pub fn v311(client_id: impl Into<Bytes>) -> Connect {
        Connect::new(ProtocolVersion::V311, client_id)
    }

    /// `Connect::new` for MQTT 5.0.
    pub fn v5(client_id: impl Into<Bytes>) -> Connect {
        Connect::new(ProtocolVersion::V5, client_id)
    }

    pub(crate) fn decode(reader: &mut Reader) -> Result<Connect, DecodeError> {
        let name = reader.binary()?;
        let level = reader.u8()?;
        if &name[..] != b"MQTT" {
            // MQTT 3.1 ("MQIsdp", level 3) is a version we do not speak: answer it with
            // return code 1 rather than silence.
            if &name[..] == b"MQIsdp" {
                return Err(DecodeError::UnsupportedProtocolLevel(level));
            }
            return Err(DecodeError::InvalidProtocolName);
        }
        let version = match level {
            4 => ProtocolVersion::V311,
            5 => ProtocolVersion::V5,
            other => return Err(DecodeError::UnsupportedProtocolLevel(other)),
        };
        let flags = reader.u8()?;
        if flags & FLAG_RESERVED != 0 {
            return Err(DecodeError::ReservedConnectFlag);
        }
        let has_will = flags & FLAG_WILL != 0;
        let will_qos = QoS::from_bits((flags >> 3) & 0x03)?;
        let will_retain = flags & FLAG_WILL_RETAIN != 0;
        if !has_will && (will_qos != QoS::AtMostOnce || will_retain) {
            return Err(DecodeError::WillFlagsWithoutWill);
        }
        let has_username = flags & FLAG_USERNAME != 0;
        let has_password = flags & FLAG_PASSWORD != 0;
        if version == ProtocolVersion::V311 && has_password && !has_username {
            return Err(DecodeError::PasswordWithoutUserName);
        }
        let keep_alive_s = reader.u16()?;
        let properties = if version.is_v5() { Properties::decode(reader, PropertyContext::Connect)? } else { Properties::default() };
        let client_id = reader.string()?;
        let will = if has_will {
            let properties = if version.is_v5() { Properties::decode(reader, PropertyContext::Will)? } else { Properties::default() };
            let topic = reader.string()?;
            let payload = reader.binary()?;
            Some(Will { topic, payload, qos: will_qos, retain: will_retain, properties })
        } else {
            None
        };
        let username = if has_username { Some(reader.string()?) } else { None };
        let password = if has_password { Some(reader.binary()?) } else { None };
        Ok(Connect { version, clean_start: flags & FLAG_CLEAN != 0, keep_alive_s, properties, client_id, will, username, password })
    }

    fn remaining_len(&self) -> usize {
        let v5 = self.version.is_v5();
        let mut len = 2 + 4 + 1 + 1 + 2;
        if v5 {
            len += self.properties.wire_len();
        }
        len += 2 + self.client_id.len();
        if let Some(will) = &self.will {
            if v5 {
                len += will.properties.wire_len();
            }
            len += 2 + will.topic.len() + 2 + will.payload.len();
        }
        len += self.username.as_ref().map_or(0, |u| 2 + u.len());
        len += self.password.as_ref().map_or(0, |p| 2 + p.len());
        len
    }

    pub fn encode(&self, buf: &mut BytesMut) {
        let remaining = self.remaining_len();
        buf.reserve(packet_len(remaining));
        put_fixed_header(buf, packet_type::CONNECT << 4, remaining);
        put_string(buf, b"MQTT");
        buf.put_u8(self.version.level());
        let mut flags = 0;
        if self.clean_start {
            flags |= FLAG_CLEAN;
        }
        if let Some(will) = &self.will {
            flags |= FLAG_WILL | ((will.qos as u8) << 3);
            if will.retain {
                flags |= FLAG_WILL_RETAIN;
            }
        }
        if self.username.is_some() {
            flags |= FLAG_USERNAME;
        }
        if self.password.is_some() {
            flags |= FLAG_PASSWORD;
        }
        buf.put_u8(flags);
        buf.put_u16(self.keep_alive_s);
        if self.version.is_v5() {
            self.properties.encode(buf);
        }
        put_string(buf, &self.client_id);
        if let Some(will) = &self.will {
            if self.version.is_v5() {
                will.properties.encode(buf);
            }
            put_string(buf, &will.topic);
            put_string(buf, &will.payload);
        }
        if let Some(username) = &self.username {
            put_string(buf, username);
        }
        if let Some(password) = &self.password {
            put_string(buf, password);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Packet, decode};

    fn decode_one(bytes: &[u8]) -> Result<Option<Packet>, DecodeError> {
        decode(&mut BytesMut::from(bytes), ProtocolVersion::V311, 1 << 20)
    }

    #[test]
    fn minimal_v311_connect_spelled_out() {
        let bytes = [0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 2, b'i', b'd'];
        let Some(Packet::Connect(connect)) = decode_one(&bytes).unwrap() else { panic!("not a CONNECT") };
        assert_eq!(connect.version, ProtocolVersion::V311);
        assert!(connect.clean_start);
        assert_eq!(connect.keep_alive_s, 60);
        assert_eq!(&connect.client_id[..], b"id");
        let mut out = BytesMut::new();
        connect.encode(&mut out);
        assert_eq!(&out[..], &bytes[..]);
    }

    #[test]
    fn reserved_flag_and_will_flags_rejected() {
        let reserved = [0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x03, 0, 60, 0, 0];
        assert_eq!(decode_one(&reserved), Err(DecodeError::ReservedConnectFlag));
        let will_qos_without_will = [0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x0A, 0, 60, 0, 0];
        assert_eq!(decode_one(&will_qos_without_will), Err(DecodeError::WillFlagsWithoutWill));
        let will_qos3 = [0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x1E, 0, 60, 0, 0];
        assert_eq!(decode_one(&will_qos3), Err(DecodeError::InvalidQos));
    }

    #[test]
    fn unknown_level_and_name() {
        let level6 = [0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 6, 0x02, 0, 60, 0, 0];
        assert_eq!(decode_one(&level6), Err(DecodeError::UnsupportedProtocolLevel(6)));
        let mqisdp = [0x10, 14, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, 0x02, 0, 60, 0, 0];
        assert_eq!(decode_one(&mqisdp), Err(DecodeError::UnsupportedProtocolLevel(3)));
        let other = [0x10, 12, 0, 4, b'M', b'Q', b'T', b'X', 4, 0x02, 0, 60, 0, 0];
        assert_eq!(decode_one(&other), Err(DecodeError::InvalidProtocolName));
    }

    #[test]
    fn v311_password_needs_username() {
        let bytes = [0x10, 15, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x42, 0, 60, 0, 0, 0, 1, b'p'];
        assert_eq!(decode_one(&bytes), Err(DecodeError::PasswordWithoutUserName));
    }
}
