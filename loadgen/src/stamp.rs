//! What every payload carries so the receiver can account for it without a side channel:
//! publisher id, sequence number, and the (intended) send time.

/// Bytes the stamp occupies at the start of every payload; the rest is padding.
pub const STAMP_BYTES: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub publisher: u32,
    pub sequence: u64,
    /// Nanoseconds since the run's origin: the scheduled time in open loop (so queueing
    /// delay in the client counts as latency), the actual time in closed loop.
    pub sent_ns: u64,
}

impl Stamp {
    /// A payload of `size` bytes (at least `STAMP_BYTES`) starting with this stamp.
    pub fn payload(&self, size: usize) -> Vec<u8> {
        let mut payload = vec![0u8; size.max(STAMP_BYTES)];
        self.write(&mut payload);
        payload
    }

    pub fn write(&self, payload: &mut [u8]) {
        payload[0..4].copy_from_slice(&self.publisher.to_be_bytes());
        payload[4..12].copy_from_slice(&self.sequence.to_be_bytes());
        payload[12..20].copy_from_slice(&self.sent_ns.to_be_bytes());
    }

    /// `None` for a payload that is not ours (too short).
    pub fn read(payload: &[u8]) -> Option<Stamp> {
        if payload.len() < STAMP_BYTES {
            return None;
        }
        Some(Stamp {
            publisher: u32::from_be_bytes(payload[0..4].try_into().ok()?),
            sequence: u64::from_be_bytes(payload[4..12].try_into().ok()?),
            sent_ns: u64::from_be_bytes(payload[12..20].try_into().ok()?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_padding() {
        let stamp = Stamp { publisher: 7, sequence: 1 << 40, sent_ns: 123_456_789 };
        let payload = stamp.payload(64);
        assert_eq!(payload.len(), 64);
        assert_eq!(Stamp::read(&payload), Some(stamp));
        assert_eq!(stamp.payload(4).len(), STAMP_BYTES, "never shorter than the stamp");
        assert_eq!(Stamp::read(&payload[..10]), None);
    }
}
