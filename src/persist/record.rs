//! The log's record framing, pure: a file starts with `FILE_MAGIC`, then records of
//! `[body length u32 LE][CRC-32 u32 LE of kind and body][kind u8][body]`.
//!
//! Reading stops at the first record that is incomplete (a write torn by a crash) or whose
//! checksum fails (a damaged disk block): everything before it is good, nothing from it on
//! is replayed, and the caller cuts the file there and says so.

/// What every log file starts with: the format and its version.
pub const FILE_MAGIC: &[u8; 8] = b"RINGMQL1";
/// Length, checksum, kind.
pub const HEADER_BYTES: usize = 4 + 4 + 1;

/// What a record holds; the byte in the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A retained message (an empty payload clears its topic), see `persist::retained`.
    Retained = 1,
    /// The records of a session log, see `persist::session`.
    SessionOpen = 2,
    SessionState = 3,
    SessionEvents = 4,
    SessionMessage = 5,
    SessionEnd = 6,
}

impl Kind {
    fn from_byte(byte: u8) -> Option<Kind> {
        match byte {
            1 => Some(Kind::Retained),
            2 => Some(Kind::SessionOpen),
            3 => Some(Kind::SessionState),
            4 => Some(Kind::SessionEvents),
            5 => Some(Kind::SessionMessage),
            6 => Some(Kind::SessionEnd),
            _ => None,
        }
    }
}

fn checksum(kind: u8, body: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&[kind]);
    hasher.update(body);
    hasher.finalize()
}

/// Appends one record to `out`.
pub fn append(kind: Kind, body: &[u8], out: &mut Vec<u8>) {
    let length = u32::try_from(body.len()).expect("a record body is bounded by the packet size, far below 4 GiB");
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(&checksum(kind as u8, body).to_le_bytes());
    out.push(kind as u8);
    out.extend_from_slice(body);
}

/// Why reading stopped before the end of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Damage {
    /// The last record is incomplete: a write cut short.
    Torn,
    /// A record's checksum fails, or its kind is unknown.
    Corrupt,
}

/// A file read through: the good records, where the good part ends, and what followed it.
#[derive(Debug)]
pub struct Scan<'a> {
    pub records: Vec<(Kind, &'a [u8])>,
    /// Bytes from the start of the file (magic included) that hold good records.
    pub valid_bytes: usize,
    pub damage: Option<Damage>,
}

/// The file does not start with `FILE_MAGIC`: not a ringmq log, or another version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a ringmq log file (format RINGMQL1)")]
pub struct NotALog;

/// Reads a whole file. An empty file (created, never written) is an empty log.
pub fn scan(file: &[u8]) -> Result<Scan<'_>, NotALog> {
    if file.is_empty() {
        return Ok(Scan { records: Vec::new(), valid_bytes: 0, damage: None });
    }
    if file.len() < FILE_MAGIC.len() {
        // A crash while writing the magic itself.
        return if FILE_MAGIC.starts_with(file) {
            Ok(Scan { records: Vec::new(), valid_bytes: 0, damage: Some(Damage::Torn) })
        } else {
            Err(NotALog)
        };
    }
    if &file[..FILE_MAGIC.len()] != FILE_MAGIC {
        return Err(NotALog);
    }
    let mut records = Vec::new();
    let mut at = FILE_MAGIC.len();
    let damage = loop {
        let rest = &file[at..];
        if rest.is_empty() {
            break None;
        }
        if rest.len() < HEADER_BYTES {
            break Some(Damage::Torn);
        }
        let length = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let expected = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        let kind = rest[8];
        let Some(body) = rest.get(HEADER_BYTES..HEADER_BYTES + length) else {
            break Some(Damage::Torn);
        };
        if checksum(kind, body) != expected {
            break Some(Damage::Corrupt);
        }
        let Some(kind) = Kind::from_byte(kind) else {
            break Some(Damage::Corrupt);
        };
        records.push((kind, body));
        at += HEADER_BYTES + length;
    };
    Ok(Scan { records, valid_bytes: at, damage })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn log_of(bodies: &[Vec<u8>]) -> (Vec<u8>, Vec<usize>) {
        let mut file = FILE_MAGIC.to_vec();
        let mut ends = Vec::new();
        for body in bodies {
            append(Kind::Retained, body, &mut file);
            ends.push(file.len());
        }
        (file, ends)
    }

    #[test]
    fn records_read_back_and_an_empty_file_is_an_empty_log() {
        let (file, _) = log_of(&[b"one".to_vec(), Vec::new(), b"three".to_vec()]);
        let scan = scan(&file).unwrap();
        assert_eq!(scan.records, vec![(Kind::Retained, &b"one"[..]), (Kind::Retained, &b""[..]), (Kind::Retained, &b"three"[..])]);
        assert_eq!((scan.valid_bytes, scan.damage), (file.len(), None));
        let empty = super::scan(&[]).unwrap();
        assert!(empty.records.is_empty() && empty.damage.is_none());
    }

    #[test]
    fn another_format_is_refused() {
        assert_eq!(scan(b"RINGMQL2....").unwrap_err(), NotALog);
        assert_eq!(scan(b"{\"json\": 1}").unwrap_err(), NotALog);
        assert_eq!(scan(b"RING").unwrap().damage, Some(Damage::Torn), "a torn magic is a torn empty log");
    }

    #[test]
    fn an_unknown_kind_with_a_good_checksum_is_corruption() {
        let mut file = FILE_MAGIC.to_vec();
        file.extend_from_slice(&3u32.to_le_bytes());
        file.extend_from_slice(&checksum(9, b"abc").to_le_bytes());
        file.push(9);
        file.extend_from_slice(b"abc");
        let scan = scan(&file).unwrap();
        assert_eq!((scan.records.len(), scan.valid_bytes, scan.damage), (0, FILE_MAGIC.len(), Some(Damage::Corrupt)));
    }

    proptest! {
        /// A crash can leave any prefix of what was written: reading it yields exactly the
        /// records wholly inside it, and flags the rest as torn.
        #[test]
        fn any_truncation_keeps_exactly_the_whole_records(
            bodies in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..12),
            cut in any::<prop::sample::Index>(),
        ) {
            let (file, ends) = log_of(&bodies);
            let cut = cut.index(file.len() + 1);
            let scan = scan(&file[..cut]).unwrap();
            let whole = ends.iter().filter(|&&end| end <= cut).count();
            prop_assert_eq!(scan.records.len(), whole);
            for (record, body) in scan.records.iter().zip(&bodies) {
                prop_assert_eq!(record.1, &body[..]);
            }
            let good_end = if whole == 0 { FILE_MAGIC.len().min(cut) } else { ends[whole - 1] };
            prop_assert_eq!(scan.valid_bytes, if cut < FILE_MAGIC.len() { 0 } else { good_end });
            let damaged = if cut < FILE_MAGIC.len() { cut > 0 } else { cut != good_end };
            prop_assert_eq!(scan.damage.is_some(), damaged);
        }

        /// Any flipped byte is caught at or before its record: nothing from the damaged
        /// record on is returned, and what is returned was written.
        #[test]
        fn a_flipped_byte_is_never_replayed(
            bodies in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..40), 1..12),
            at in any::<prop::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let (mut file, ends) = log_of(&bodies);
            let at = FILE_MAGIC.len() + at.index(file.len() - FILE_MAGIC.len());
            file[at] ^= flip;
            let damaged_record = ends.iter().position(|&end| at < end).unwrap();
            let scan = scan(&file).unwrap();
            prop_assert!(scan.records.len() <= damaged_record, "{} records, damage in record {}", scan.records.len(), damaged_record);
            for (record, body) in scan.records.iter().zip(&bodies) {
                prop_assert_eq!(record.1, &body[..]);
            }
            prop_assert!(scan.damage.is_some());
        }
    }
}
