//! decode: arbitrary bytes, fed in two chunks, never panic `protocol::decode` (3.1.1 or 5.0),
//! `Ok(None)` consumes nothing, and every decoded packet survives encode -> decode unchanged.
//! Run by libFuzzer (`fuzz/fuzz_targets/decode.rs`) and, bounded, by `tests/fuzz_bounded.rs`.

use bytes::BytesMut;
use ringmq::protocol::{Packet, ProtocolVersion, decode};

pub fn run(data: &[u8]) {
    // First byte: bit 0 the version, bit 1 a tiny Maximum Packet Size, the rest the split point.
    let Some((&control, input)) = data.split_first() else { return };
    let version = if control & 1 == 0 { ProtocolVersion::V311 } else { ProtocolVersion::V5 };
    let max = if control & 2 == 0 { 1 << 20 } else { 64 };
    let split = input.len() * usize::from(control >> 2) / 63;
    let mut buf = BytesMut::from(&input[..split]);
    if drain(&mut buf, version, max) {
        buf.extend_from_slice(&input[split..]);
        drain(&mut buf, version, max);
    }
}

/// Decodes packets until the buffer is incomplete (true) or rejected (false).
fn drain(buf: &mut BytesMut, version: ProtocolVersion, max: u32) -> bool {
    loop {
        let before = buf.len();
        match decode(buf, version, max) {
            Ok(Some(packet)) => round_trip(&packet, version),
            Ok(None) => {
                assert_eq!(buf.len(), before, "Ok(None) must consume nothing");
                return true;
            }
            Err(_) => return false,
        }
    }
}

/// The invariant proptests.rs checks: encode then decode gives the packet back, nothing left.
fn round_trip(packet: &Packet, version: ProtocolVersion) {
    match packet {
        // CONNECT carries its own version; proptests only build it for the connection's.
        Packet::Connect(connect) if connect.version != version => return,
        // A Topic Alias goes through `PublishHeader`; `Publish::encode` debug-asserts it is
        // absent from the properties (proptests never build one), so this is not a packet
        // `encode` accepts.
        Packet::Publish(publish) if publish.properties.topic_alias.is_some() => return,
        _ => {}
    }
    let mut wire = BytesMut::new();
    packet.encode(version, &mut wire);
    // Re-encoding may be a byte longer (an AUTH reason gains an empty property block).
    let again = decode(&mut wire, version, u32::MAX);
    assert_eq!(again, Ok(Some(packet.clone())), "round trip ({version:?})");
    assert!(wire.is_empty(), "round trip left {} bytes", wire.len());
}
