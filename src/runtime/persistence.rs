//! The writer tasks, each on its shard's executor and io_uring: shard 0 commits the
//! retained journal to `retained.log`; every shard commits its persistent sessions to its
//! own session log. Every `--fsync-interval-ms`, what changed is encoded, written and
//! fsynced in one batch (group commit); when a log has grown well past what it holds, it is
//! rewritten compacted. A failed write is logged, counted, and answered by a full rewrite
//! at the next interval: the broker keeps serving from memory.
//!
//! Session logs are `sessions-<generation>-<shard>.log`. Each start reads every generation
//! and writes a new one (the shard count may have changed, and sessions with it); the old
//! files are deleted once every shard has committed its first batch, which holds every
//! session it restored. A crash before that leaves both, and the newest epochs win.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_lite::future::or;
use glommio::timer::sleep;

use super::latch::Latch;

use crate::config::Durability;
use crate::persist::log::AppendLog;
use crate::persist::session::{LoggedSession, SessionReplay};
use crate::persist::{DataDir, PersistError, RETAINED_LOG, record, retained};
use crate::session::{Message, SessionLimits};
use crate::shard::Shard;

/// The log is rewritten once it is this much larger than the store would be written whole,
/// and past `LOG_REWRITE_BYTES_MIN`: recovery then reads at most about 4x the live data.
const LOG_GROWTH_FACTOR: u64 = 4;
const LOG_REWRITE_BYTES_MIN: u64 = 4 << 20;

/// What every shard starts with, and what shard 0 writes to (`None`: no `--data-dir`).
#[derive(Clone, Default)]
pub struct PersistPlan {
    pub retained: Arc<Vec<Arc<Message>>>,
    pub retained_log: Option<RetainedLogPlan>,
    /// Every persistent session in the logs; each shard takes those it is home for.
    pub sessions: Arc<Vec<LoggedSession>>,
    pub session_logs: Option<SessionLogsPlan>,
    /// `--durability sync`.
    pub sync: bool,
}

/// Where each shard writes its sessions, and what they share.
#[derive(Clone)]
pub struct SessionLogsPlan {
    pub dir: PathBuf,
    pub generation: u64,
    pub interval: Duration,
    /// Above every epoch in the logs; every shard draws from it.
    pub epochs: Arc<AtomicU64>,
    /// The logs read at start-up, deleted once no shard still has to commit its first batch.
    pub old_files: Arc<Vec<PathBuf>>,
    pub first_commits_left: Arc<AtomicUsize>,
    /// The client ids whose sessions ended, and at which epoch (see `Replayed::ended`);
    /// each shard carries those it is home for into the new generation.
    pub ended: Arc<Vec<(bytes::Bytes, u64)>>,
}

impl SessionLogsPlan {
    fn path(&self, shard: usize) -> PathBuf {
        self.dir.join(format!("sessions-{}-{shard}.log", self.generation))
    }
}

/// The generation a session log's name gives (`sessions-<generation>-<shard>.log`).
fn session_log_generation(name: &str) -> Option<u64> {
    let rest = name.strip_prefix("sessions-")?.strip_suffix(".log")?;
    let (generation, shard) = rest.split_once('-')?;
    shard.parse::<usize>().ok()?;
    generation.parse().ok()
}

/// Reads every session log in `dir`, oldest generation first.
fn recover_sessions(
    dir: &Path,
    limits: SessionLimits,
    shard_count: usize,
    interval: Duration,
) -> Result<(Vec<LoggedSession>, SessionLogsPlan), PersistError> {
    let read_error = |source| PersistError::Read { file: dir.to_path_buf(), source };
    let mut files: Vec<(u64, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_error)? {
        let path = entry.map_err(read_error)?.path();
        let Some(name) = path.file_name().and_then(|name| name.to_str()) else { continue };
        if let Some(generation) = session_log_generation(name) {
            files.push((generation, path));
        } else if name.starts_with("sessions-") && name.ends_with(".log.new") {
            // A rewrite that never got renamed into place: the log it was to replace is whole.
            let _ = std::fs::remove_file(&path);
        }
    }
    files.sort();
    let mut replay = SessionReplay::new(limits, retained::Clock::system());
    for (_, file) in &files {
        let bytes = std::fs::read(file).map_err(|source| PersistError::Read { file: file.clone(), source })?;
        let scan = record::scan(&bytes).map_err(|source| PersistError::NotALog { file: file.clone(), source })?;
        if let Some(damage) = scan.damage {
            tracing::warn!(
                file = %file.display(),
                ?damage,
                cut_bytes = bytes.len() - scan.valid_bytes,
                "a session log ends in a damaged or incomplete record (a crash mid-write, or a bad disk block): \
                 everything before it is restored, the rest is ignored"
            );
        }
        replay.file(scan.records.iter().copied()).map_err(|source| PersistError::SessionRecord { file: file.clone(), source })?;
    }
    if replay.mismatches > 0 {
        tracing::warn!(events = replay.mismatches, "session log events that did not fit the session they name were skipped");
    }
    let generation = files.last().map_or(1, |(generation, _)| generation + 1);
    let epochs = Arc::new(AtomicU64::new(replay.max_epoch + 1));
    let replayed = replay.finish();
    let sessions = replayed.sessions;
    let plan = SessionLogsPlan {
        dir: dir.to_path_buf(),
        generation,
        interval,
        epochs,
        old_files: Arc::new(files.into_iter().map(|(_, path)| path).collect()),
        first_commits_left: Arc::new(AtomicUsize::new(shard_count)),
        ended: Arc::new(replayed.ended),
    };
    Ok((sessions, plan))
}

/// Locks `--data-dir` and reads what it holds, before the shards start.
pub fn prepare(
    data_dir: Option<&std::path::Path>,
    durability: Durability,
    fsync_interval_ms: u64,
    session_limits: SessionLimits,
    shard_count: usize,
) -> Result<(Option<DataDir>, PersistPlan), PersistError> {
    let Some(path) = data_dir else {
        return Ok((None, PersistPlan::default()));
    };
    if durability == Durability::Off {
        tracing::warn!(dir = %path.display(), "--durability off: the data directory is neither read nor written");
        return Ok((None, PersistPlan::default()));
    }
    let dir = DataDir::lock(path)?;
    let started = std::time::Instant::now();
    let interval = Duration::from_millis(fsync_interval_ms);
    let (sessions, session_logs) = recover_sessions(dir.path(), session_limits, shard_count, interval)?;
    let recovered = crate::persist::recover_retained(&dir)?;
    let file = dir.path().join(RETAINED_LOG);
    if let Some(damage) = recovered.damage {
        tracing::warn!(
            file = %file.display(),
            ?damage,
            cut_bytes = recovered.cut_bytes,
            kept_bytes = recovered.valid_bytes,
            "the retained log ends in a damaged or incomplete record (a crash mid-write, or a bad disk block): \
             everything before it is restored, the rest is cut"
        );
    }
    tracing::info!(
        dir = %dir.path().display(),
        retained_messages = recovered.messages.len(),
        sessions = sessions.len(),
        queued_messages = sessions.iter().map(|logged| logged.session.queued_len() + logged.session.inflight_len()).sum::<usize>(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "data directory recovered"
    );
    let retained_log = Some(RetainedLogPlan { path: file, valid_bytes: recovered.valid_bytes });
    let plan = PersistPlan {
        retained: Arc::new(recovered.messages),
        retained_log,
        sessions: Arc::new(sessions),
        session_logs: Some(session_logs),
        sync: durability == Durability::Sync,
    };
    Ok((Some(dir), plan))
}

/// Where the writer starts: the log file and how much of it recovery found good.
#[derive(Clone)]
pub struct RetainedLogPlan {
    pub path: PathBuf,
    pub valid_bytes: u64,
}

fn encode(messages: &[Arc<Message>], out: &mut Vec<u8>) {
    let clock = retained::Clock::system();
    let mut body = Vec::new();
    for message in messages {
        body.clear();
        retained::encode(message, clock, &mut body);
        record::append(record::Kind::Retained, &body, out);
    }
}

/// One log file, and how big it was when last written whole (the yardstick for compaction).
struct LogFile {
    log: AppendLog,
    path: PathBuf,
    rewritten_bytes: u64,
}

impl LogFile {
    async fn open(path: PathBuf, valid_bytes: u64) -> Option<LogFile> {
        match AppendLog::open(&path, valid_bytes).await {
            Ok(log) => Some(LogFile { rewritten_bytes: log.len(), log, path }),
            Err(error) => {
                tracing::error!(file = %path.display(), %error, "cannot open a log in the data directory: what it would hold is kept in memory only");
                None
            }
        }
    }

    fn wants_compaction(&self) -> bool {
        self.log.len() > LOG_REWRITE_BYTES_MIN.max(self.rewritten_bytes * LOG_GROWTH_FACTOR)
    }

    async fn rewrite(&mut self, records: Vec<u8>) -> std::io::Result<()> {
        self.rewritten_bytes = records.len() as u64 + record::FILE_MAGIC.len() as u64;
        self.log.rewrite(records).await
    }
}

/// What a shard's writer task writes: its session log, and on shard 0 the retained log.
pub struct WriterPlan {
    pub index: usize,
    pub sessions: SessionLogsPlan,
    pub retained: Option<RetainedLogPlan>,
    /// `--durability sync`: commit as soon as something waits for it.
    pub sync: bool,
}

/// Commits one shard's changes until `finish` is set (after the shard has closed its
/// clients), then commits what is left: a clean stop loses nothing. The shard must keep
/// its journals from before it serves anyone (`keep_session_log`, `keep_retained_journal`,
/// `enable_durability`).
pub async fn write_logs(shard: Rc<RefCell<Shard>>, plan: WriterPlan, finish: Rc<Latch>) {
    let sessions_path = plan.sessions.path(plan.index);
    // Until the log opens (a full disk at start-up), the shard counts as failed: held
    // output is dropped and QoS 1/2 publishes refused, instead of waiting forever.
    let mut sessions_log = loop {
        if let Some(log) = LogFile::open(sessions_path.clone(), 0).await {
            break log;
        }
        shard.borrow_mut().commit_failed();
        if finish.is_set() {
            return;
        }
        or(sleep(plan.sessions.interval), finish.wait()).await;
    };
    let mut retained_log = match &plan.retained {
        Some(retained) => LogFile::open(retained.path.clone(), retained.valid_bytes).await,
        None => None,
    };
    let durability = shard.borrow().durability_handle();
    let mut first_commit_done = false;
    loop {
        let finishing = finish.is_set();
        // Taken together, with no await between: the batch closes on a consistent state.
        let (commit, retained) = {
            let mut shard = shard.borrow_mut();
            let commit = shard.take_commit();
            let retained = retained_log.as_ref().map(|_| shard.take_retained_journal());
            (commit, retained)
        };
        let mut wrote = false;
        let mut failure = None;
        if let (Some(log), Some(journal)) = (retained_log.as_mut(), retained) {
            let compact = journal.rewrite_needed || log.wants_compaction();
            let outcome = if compact {
                let mut records = Vec::new();
                encode(&shard.borrow().retained_messages(), &mut records);
                log.rewrite(records).await
            } else if !journal.changes.is_empty() {
                let mut records = Vec::new();
                encode(&journal.changes, &mut records);
                log.log.append(records).await
            } else {
                Ok(())
            };
            wrote |= compact || !journal.changes.is_empty();
            if let Err(error) = outcome {
                shard.borrow_mut().require_retained_rewrite();
                failure = Some((log.path.clone(), error));
            }
        }
        let compact = commit.sessions.rewrite_needed || sessions_log.wants_compaction();
        let outcome = if compact {
            let records = shard.borrow_mut().session_snapshot();
            sessions_log.rewrite(records).await
        } else if !commit.sessions.records.is_empty() {
            sessions_log.log.append(commit.sessions.records.clone()).await
        } else {
            Ok(())
        };
        wrote |= compact || !commit.sessions.records.is_empty();
        if let Err(error) = outcome {
            failure = Some((sessions_log.path.clone(), error));
        }
        match failure {
            None => {
                let mut shard = shard.borrow_mut();
                if wrote {
                    shard.counters.persist_commits += 1;
                }
                shard.commit_done(&commit, Instant::now());
                drop(shard);
                if !first_commit_done {
                    first_commit_done = true;
                    remove_old_session_logs(&plan.sessions);
                }
            }
            Some((file, error)) => {
                tracing::error!(
                    file = %file.display(),
                    %error,
                    "writing to the data directory failed; the broker keeps serving from memory, refuses QoS 1/2 publishes \
                     and rewrites the log at the next attempt"
                );
                let mut shard = shard.borrow_mut();
                shard.commit_failed();
                shard.counters.persist_write_failures += 1;
            }
        }
        if finishing {
            let _ = sessions_log.log.close().await;
            if let Some(log) = retained_log {
                let _ = log.log.close().await;
            }
            return;
        }
        let interval = plan.sessions.interval;
        match (&durability, plan.sync) {
            (Some(durability), true) => {
                let wanted = std::future::poll_fn(|cx| {
                    if durability.take_wanted(cx.waker()) { std::task::Poll::Ready(()) } else { std::task::Poll::Pending }
                });
                or(or(wanted, sleep(interval)), finish.wait()).await;
            }
            _ => or(sleep(interval), finish.wait()).await,
        }
    }
}

/// After a shard's first commit: once every shard has made its first, every restored
/// session is in the new generation and the earlier logs go.
fn remove_old_session_logs(plan: &SessionLogsPlan) {
    if plan.first_commits_left.fetch_sub(1, Ordering::AcqRel) != 1 {
        return;
    }
    for old in plan.old_files.iter() {
        if let Err(error) = std::fs::remove_file(old) {
            tracing::warn!(file = %old.display(), %error, "cannot remove a session log of an earlier run");
        }
    }
    // The removals are durable too (an old file coming back is harmless: the new
    // generation repeats every end, and newer epochs win).
    if let Ok(directory) = std::fs::File::open(&plan.dir) {
        let _ = directory.sync_all();
    }
}
