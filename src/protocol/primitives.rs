//! MQTT wire primitives: variable byte integers, two-byte-length strings and binary data.
//!
//! Owns the bounds checks every field goes through. Decoding works on a `Reader` over a
//! packet body that is already fully buffered, so a declared length can never make us
//! allocate before its bytes have arrived: slices are cut from the body (`Bytes`), not copied.

use bytes::{Buf, BufMut, Bytes};

use super::error::DecodeError;

/// The largest value a variable byte integer can carry (four bytes of seven bits).
pub const VARINT_MAX: u32 = 268_435_455;

/// Number of bytes `value` takes as a variable byte integer.
pub fn varint_len(value: u32) -> usize {
    debug_assert!(value <= VARINT_MAX);
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

pub fn put_varint(buf: &mut impl BufMut, mut value: u32) {
    debug_assert!(value <= VARINT_MAX);
    loop {
        let mut byte = (value % 128) as u8;
        value /= 128;
        if value > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if value == 0 {
            break;
        }
    }
}

/// Reads a variable byte integer from the front of `bytes` without consuming.
/// `Ok(None)`: more bytes are needed. Returns the value and how many bytes it took.
pub fn peek_varint(bytes: &[u8]) -> Result<Option<(u32, usize)>, DecodeError> {
    let mut value: u32 = 0;
    for (index, byte) in bytes.iter().enumerate().take(4) {
        value |= u32::from(byte & 0x7F) << (7 * index);
        if byte & 0x80 == 0 {
            // A non-minimal encoding (e.g. 0x80 0x00) is still a valid number on the wire;
            // the spec only bounds the length to four bytes.
            return Ok(Some((value, index + 1)));
        }
    }
    if bytes.len() >= 4 {
        return Err(DecodeError::MalformedVarInt);
    }
    Ok(None)
}

pub fn put_string(buf: &mut impl BufMut, value: &[u8]) {
    debug_assert!(value.len() <= u16::MAX as usize);
    buf.put_u16(value.len() as u16);
    buf.put_slice(value);
}

/// True if `bytes` is a well-formed MQTT UTF-8 string: valid UTF-8 and no U+0000.
pub fn is_mqtt_utf8(bytes: &[u8]) -> bool {
    !bytes.contains(&0) && std::str::from_utf8(bytes).is_ok()
}

/// A cursor over one packet's body. Every read checks the remaining length first.
pub struct Reader {
    body: Bytes,
}

impl Reader {
    pub fn new(body: Bytes) -> Self {
        Reader { body }
    }

    pub fn remaining(&self) -> usize {
        self.body.len()
    }

    pub fn is_empty(&self) -> bool {
        self.body.is_empty()
    }

    /// The next byte, not consumed.
    pub fn first(&self) -> Option<u8> {
        self.body.first().copied()
    }

    fn need(&self, count: usize) -> Result<(), DecodeError> {
        if self.body.len() < count {
            return Err(DecodeError::Truncated);
        }
        Ok(())
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        self.need(1)?;
        Ok(self.body.get_u8())
    }

    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        self.need(2)?;
        Ok(self.body.get_u16())
    }

    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        self.need(4)?;
        Ok(self.body.get_u32())
    }

    pub fn varint(&mut self) -> Result<u32, DecodeError> {
        match peek_varint(&self.body)? {
            Some((value, used)) => {
                self.body.advance(used);
                Ok(value)
            }
            None => Err(DecodeError::Truncated),
        }
    }

    pub fn take(&mut self, count: usize) -> Result<Bytes, DecodeError> {
        self.need(count)?;
        Ok(self.body.split_to(count))
    }

    pub fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let len = self.u16()? as usize;
        self.take(len)
    }

    pub fn string(&mut self) -> Result<Bytes, DecodeError> {
        let value = self.binary()?;
        if !is_mqtt_utf8(&value) {
            return Err(DecodeError::InvalidUtf8);
        }
        Ok(value)
    }

    /// Everything left: the payload of a PUBLISH or the body of a CONNECT will.
    pub fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.body)
    }

    /// A sub-reader over the next `count` bytes (a property block).
    pub fn sub(&mut self, count: usize) -> Result<Reader, DecodeError> {
        Ok(Reader::new(self.take(count)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_boundaries_round_trip() {
        for value in [0, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152, VARINT_MAX] {
            let mut buf = Vec::new();
            put_varint(&mut buf, value);
            assert_eq!(buf.len(), varint_len(value));
            assert_eq!(peek_varint(&buf).unwrap(), Some((value, buf.len())));
        }
    }

    #[test]
    fn varint_spelled_out() {
        let mut buf = Vec::new();
        put_varint(&mut buf, 321);
        assert_eq!(buf, [0xC1, 0x02]);
    }

    #[test]
    fn varint_incomplete_and_overlong() {
        assert_eq!(peek_varint(&[0x80, 0x80]).unwrap(), None);
        assert_eq!(peek_varint(&[0xFF, 0xFF, 0xFF, 0xFF, 0x01]), Err(DecodeError::MalformedVarInt));
    }

    #[test]
    fn strings_reject_nul_and_bad_utf8() {
        assert!(is_mqtt_utf8("a/β".as_bytes()));
        assert!(!is_mqtt_utf8(b"a\0b"));
        assert!(!is_mqtt_utf8(&[0xC3, 0x28]));
        let mut reader = Reader::new(Bytes::from_static(&[0, 3, b'a', 0, b'b']));
        assert_eq!(reader.string(), Err(DecodeError::InvalidUtf8));
    }

    #[test]
    fn declared_length_beyond_body_is_truncated() {
        let mut reader = Reader::new(Bytes::from_static(&[0xFF, 0xFF, b'a']));
        assert_eq!(reader.binary(), Err(DecodeError::Truncated));
    }
}
