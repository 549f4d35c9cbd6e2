//! Persistence: what outlives the process, under `--data-dir`. Owns the data directory
//! (its lock, its files), the log format (`record`), what each kind of record holds
//! (`retained`) and the append-only log file on io_uring (`log`). The shards never touch a
//! file: they hand over what changed through narrow calls (`Shard::take_retained_journal`),
//! and the runtime's writer task (`runtime/persistence.rs`) commits it.
//!
//! Retained messages are in `retained.log`, written by shard 0 (every shard holds a
//! replica; one copy on disk is enough); persistent sessions in one log per shard
//! (`session`), each written by its shard. Both are fsynced every `--fsync-interval-ms`.

pub mod log;
pub mod record;
pub mod retained;
pub mod session;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::session::Message;

/// The file that keeps a second broker out of the directory.
const LOCK_FILE: &str = "ringmq.lock";
/// The retained store's log.
pub const RETAINED_LOG: &str = "retained.log";

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("--data-dir {dir}: {source}")]
    Directory { dir: PathBuf, source: std::io::Error },
    #[error("--data-dir {dir} is in use by another ringmq (it holds {dir}/ringmq.lock)")]
    Locked { dir: PathBuf },
    #[error("{file}: {source}")]
    Read { file: PathBuf, source: std::io::Error },
    #[error("{file}: {source}")]
    NotALog { file: PathBuf, source: record::NotALog },
    #[error("{file}: {source} (the record's checksum is good: this is a ringmq bug, please report it; the file is left as it is)")]
    Record { file: PathBuf, source: retained::RetainedRecordError },
    #[error("{file}: {source} (the record's checksum is good: this is a ringmq bug, please report it; the file is left as it is)")]
    SessionRecord { file: PathBuf, source: session::SessionRecordError },
}

/// The locked data directory. The lock is released when this is dropped (or the process
/// dies: it is an `flock`, which the kernel drops with the descriptor).
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    _lock: File,
}

impl DataDir {
    /// Creates the directory if needed and takes its lock.
    pub fn lock(path: &Path) -> Result<DataDir, PersistError> {
        let directory_error = |source| PersistError::Directory { dir: path.to_path_buf(), source };
        std::fs::create_dir_all(path).map_err(directory_error)?;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path.join(LOCK_FILE))
            .map_err(directory_error)?;
        // SAFETY: flock on a descriptor we own; no memory is involved.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let error = std::io::Error::last_os_error();
            return Err(if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
                PersistError::Locked { dir: path.to_path_buf() }
            } else {
                directory_error(error)
            });
        }
        Ok(DataDir { path: path.to_path_buf(), _lock: lock })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// What recovery found in the retained log.
#[derive(Debug)]
pub struct RecoveredRetained {
    pub messages: Vec<Arc<Message>>,
    /// Where the good records end: appending continues there.
    pub valid_bytes: u64,
    /// Bytes after the last good record (a torn or damaged tail), cut off.
    pub cut_bytes: u64,
    pub damage: Option<record::Damage>,
}

/// Reads the retained log before the shards start (a blocking read, once, before any
/// client is served). A torn or damaged tail is reported and left for the writer to cut.
pub fn recover_retained(dir: &DataDir) -> Result<RecoveredRetained, PersistError> {
    let file = dir.path.join(RETAINED_LOG);
    let bytes = match std::fs::read(&file) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(source) => return Err(PersistError::Read { file, source }),
    };
    let scan = record::scan(&bytes).map_err(|source| PersistError::NotALog { file: file.clone(), source })?;
    let bodies = scan.records.iter().filter(|(kind, _)| *kind == record::Kind::Retained).map(|(_, body)| *body);
    let messages = retained::replay(bodies, retained::Clock::system()).map_err(|source| PersistError::Record { file, source })?;
    Ok(RecoveredRetained {
        messages,
        valid_bytes: scan.valid_bytes as u64,
        cut_bytes: (bytes.len() - scan.valid_bytes) as u64,
        damage: scan.damage,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_one_directory_is_refused_until_the_first_is_dropped() {
        let dir = std::env::temp_dir().join(format!("ringmq-lock-test-{}", std::process::id()));
        let first = DataDir::lock(&dir).unwrap();
        assert!(matches!(DataDir::lock(&dir), Err(PersistError::Locked { .. })));
        drop(first);
        let again = DataDir::lock(&dir).unwrap();
        drop(again);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn recovery_reads_the_good_records_and_measures_a_torn_tail() {
        let dir = std::env::temp_dir().join(format!("ringmq-recover-test-{}", std::process::id()));
        let data = DataDir::lock(&dir).unwrap();
        assert!(recover_retained(&data).unwrap().messages.is_empty(), "no file yet: nothing retained");
        let clock = retained::Clock::system();
        let mut file = record::FILE_MAGIC.to_vec();
        for (topic, payload) in [("a", "1"), ("b", "2")] {
            let message = Message {
                topic: bytes::Bytes::from_static(topic.as_bytes()),
                payload: bytes::Bytes::from_static(payload.as_bytes()),
                qos: crate::protocol::QoS::AtMostOnce,
                retain: true,
                properties: Default::default(),
                publisher: None,
                expires_at: None,
            };
            let mut body = Vec::new();
            retained::encode(&message, clock, &mut body);
            record::append(record::Kind::Retained, &body, &mut file);
        }
        let good = file.len();
        file.extend_from_slice(&[200, 0, 0, 0, 1, 2]);
        std::fs::write(dir.join(RETAINED_LOG), &file).unwrap();
        let recovered = recover_retained(&data).unwrap();
        assert_eq!(recovered.messages.len(), 2);
        assert_eq!((recovered.valid_bytes, recovered.cut_bytes, recovered.damage), (good as u64, 6, Some(record::Damage::Torn)));
        std::fs::write(dir.join(RETAINED_LOG), b"something else entirely").unwrap();
        assert!(matches!(recover_retained(&data), Err(PersistError::NotALog { .. })));
        drop(data);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
