//! The PROXY protocol header (HAProxy's, versions 1 and 2) that a load balancer (HAProxy,
//! AWS NLB, ...) sends before the client's bytes, so the broker sees the client's address
//! instead of the balancer's. With `--proxy-protocol` every connection must start with one;
//! anything else closes the connection. Pure: bytes in, address and length out.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Version 2's fixed signature.
const V2_SIGNATURE: [u8; 12] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A];
/// A version 1 line is at most 107 bytes, CRLF included.
const V1_LINE_BYTES_MAX: usize = 107;
/// Version 2 addresses and TLVs; more is refused rather than buffered.
const V2_BODY_BYTES_MAX: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("the connection does not start with a PROXY protocol header")]
    Missing,
    #[error("malformed PROXY protocol header")]
    Malformed,
}

/// A complete header: the client's address (`None` for a health check from the balancer
/// itself: v1 `UNKNOWN`, v2 `LOCAL`, or an address family other than TCP over IP) and the
/// header's length, to be skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyHeader {
    pub source: Option<SocketAddr>,
    pub length: usize,
}

/// Parses the header at the start of `buf`: `Ok(None)` while more bytes are needed.
pub fn parse(buf: &[u8]) -> Result<Option<ProxyHeader>, ProxyError> {
    if buf.is_empty() {
        return Ok(None);
    }
    if V2_SIGNATURE.starts_with(&buf[..buf.len().min(12)]) {
        return parse_v2(buf);
    }
    if b"PROXY ".starts_with(&buf[..buf.len().min(6)]) {
        return parse_v1(buf);
    }
    Err(ProxyError::Missing)
}

fn parse_v1(buf: &[u8]) -> Result<Option<ProxyHeader>, ProxyError> {
    let Some(end) = buf.windows(2).position(|pair| pair == b"\r\n") else {
        return if buf.len() >= V1_LINE_BYTES_MAX { Err(ProxyError::Malformed) } else { Ok(None) };
    };
    let length = end + 2;
    if length > V1_LINE_BYTES_MAX {
        return Err(ProxyError::Malformed);
    }
    let line = std::str::from_utf8(&buf[..end]).map_err(|_| ProxyError::Malformed)?;
    let fields: Vec<&str> = line.split(' ').collect();
    let source = match fields[..] {
        ["PROXY", "UNKNOWN", ..] => None,
        ["PROXY", family @ ("TCP4" | "TCP6"), source, destination, source_port, destination_port] => {
            let source: IpAddr = source.parse().map_err(|_| ProxyError::Malformed)?;
            let _: IpAddr = destination.parse().map_err(|_| ProxyError::Malformed)?;
            if (family == "TCP4") != source.is_ipv4() {
                return Err(ProxyError::Malformed);
            }
            let port: u16 = source_port.parse().map_err(|_| ProxyError::Malformed)?;
            let _: u16 = destination_port.parse().map_err(|_| ProxyError::Malformed)?;
            Some(SocketAddr::new(source, port))
        }
        _ => return Err(ProxyError::Malformed),
    };
    Ok(Some(ProxyHeader { source, length }))
}

fn parse_v2(buf: &[u8]) -> Result<Option<ProxyHeader>, ProxyError> {
    if buf.len() < 16 {
        return Ok(None);
    }
    let (version_command, family, body_len) = (buf[12], buf[13], usize::from(u16::from_be_bytes([buf[14], buf[15]])));
    if version_command >> 4 != 2 || body_len > V2_BODY_BYTES_MAX {
        return Err(ProxyError::Malformed);
    }
    let length = 16 + body_len;
    if buf.len() < length {
        return Ok(None);
    }
    let body = &buf[16..length];
    let source = match (version_command & 0x0F, family) {
        // LOCAL: the balancer's own connection (health checks).
        (0x0, _) => None,
        // PROXY over TCP/IPv4: source address, destination address, source port, destination port.
        (0x1, 0x11) if body.len() >= 12 => {
            let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            Some(SocketAddr::new(IpAddr::V4(ip), u16::from_be_bytes([body[8], body[9]])))
        }
        (0x1, 0x21) if body.len() >= 36 => {
            let octets: [u8; 16] = body[..16].try_into().map_err(|_| ProxyError::Malformed)?;
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(octets)), u16::from_be_bytes([body[32], body[33]])))
        }
        (0x1, 0x11 | 0x21) => return Err(ProxyError::Malformed),
        // Another family (UDP, unix): no address we can use, but a valid header.
        (0x1, _) => None,
        _ => return Err(ProxyError::Malformed),
    };
    Ok(Some(ProxyHeader { source, length }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut header = V2_SIGNATURE.to_vec();
        header.extend_from_slice(&[0x20 | command, family]);
        header.extend_from_slice(&(body.len() as u16).to_be_bytes());
        header.extend_from_slice(body);
        header
    }

    #[test]
    fn version_1_lines_give_the_client_address_and_their_length() {
        let line = b"PROXY TCP4 192.0.2.7 198.51.100.1 51000 1883\r\n\x10\x0c";
        let header = parse(line).unwrap().unwrap();
        assert_eq!(header.source, Some("192.0.2.7:51000".parse().unwrap()));
        assert_eq!(&line[header.length..], b"\x10\x0c", "what follows is the client's");
        let six = parse(b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 1883\r\n").unwrap().unwrap();
        assert_eq!(six.source, Some("[2001:db8::1]:4000".parse().unwrap()));
        assert_eq!(parse(b"PROXY UNKNOWN\r\n").unwrap().unwrap().source, None);
    }

    #[test]
    fn partial_headers_wait_for_more_bytes() {
        let line = b"PROXY TCP4 192.0.2.7 198.51.100.1 51000 1883\r\n";
        for cut in 1..line.len() {
            assert_eq!(parse(&line[..cut]), Ok(None), "cut at {cut}");
        }
        let header = v2(1, 0x11, &[192, 0, 2, 7, 198, 51, 100, 1, 0xC7, 0x38, 0x07, 0x5B]);
        for cut in 1..header.len() {
            assert_eq!(parse(&header[..cut]), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn version_2_headers_for_ipv4_ipv6_and_local() {
        let four = v2(1, 0x11, &[192, 0, 2, 7, 198, 51, 100, 1, 0xC7, 0x38, 0x07, 0x5B]);
        assert_eq!(parse(&four), Ok(Some(ProxyHeader { source: Some("192.0.2.7:51000".parse().unwrap()), length: 28 })));
        let mut body = vec![0u8; 36];
        body[15] = 1;
        body[31] = 2;
        body[32..34].copy_from_slice(&4000u16.to_be_bytes());
        let six = v2(1, 0x21, &body);
        assert_eq!(parse(&six).unwrap().unwrap().source, Some("[::1]:4000".parse().unwrap()));
        // TLVs after the addresses are skipped with the header.
        let mut with_tlv = [192, 0, 2, 7, 198, 51, 100, 1, 0xC7, 0x38, 0x07, 0x5B].to_vec();
        with_tlv.extend_from_slice(&[0x04, 0x00, 0x01, 0xAA]);
        assert_eq!(parse(&v2(1, 0x11, &with_tlv)).unwrap().unwrap().length, 16 + 16);
        assert_eq!(parse(&v2(0, 0x00, &[])).unwrap().unwrap().source, None, "LOCAL");
    }

    #[test]
    fn anything_else_is_refused() {
        assert_eq!(parse(b"\x10\x0c\x00\x04MQTT"), Err(ProxyError::Missing), "a bare CONNECT");
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(ProxyError::Missing));
        assert_eq!(parse(b"PROXY TCP4 nonsense\r\n"), Err(ProxyError::Malformed));
        assert_eq!(parse(b"PROXY TCP4 2001:db8::1 2001:db8::2 1 2\r\n"), Err(ProxyError::Malformed), "family mismatch");
        assert_eq!(
            parse(&[b'P', b'R', b'O', b'X', b'Y', b' '].iter().copied().chain(std::iter::repeat_n(b'x', 200)).collect::<Vec<_>>()),
            Err(ProxyError::Malformed)
        );
        assert_eq!(parse(&v2(1, 0x11, &[1, 2, 3])), Err(ProxyError::Malformed), "short addresses");
        let mut bad_version = v2(1, 0x11, &[0; 12]);
        bad_version[12] = 0x31;
        assert_eq!(parse(&bad_version), Err(ProxyError::Malformed));
    }
}
