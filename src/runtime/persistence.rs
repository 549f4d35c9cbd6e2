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
use std::time::Duration;

use futures_lite::future::or;
use glommio::timer::sleep;

use super::latch::Latch;

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
    let sessions = replay.finish();
    let plan = SessionLogsPlan {
        dir: dir.to_path_buf(),
        generation,
        interval,
        epochs,
        old_files: Arc::new(files.into_iter().map(|(_, path)| path).collect()),
        first_commits_left: Arc::new(AtomicUsize::new(shard_count)),
    };
    Ok((sessions, plan))
}

/// Locks `--data-dir` and reads what it holds, before the shards start.
pub fn prepare(
    data_dir: Option<&std::path::Path>,
    fsync_interval_ms: u64,
    session_limits: SessionLimits,
    shard_count: usize,
) -> Result<(Option<DataDir>, PersistPlan), PersistError> {
    let Some(path) = data_dir else {
        return Ok((None, PersistPlan::default()));
    };
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
    let retained_log = Some(RetainedLogPlan { path: file, valid_bytes: recovered.valid_bytes, interval });
    let plan = PersistPlan {
        retained: Arc::new(recovered.messages),
        retained_log,
        sessions: Arc::new(sessions),
        session_logs: Some(session_logs),
    };
    Ok((Some(dir), plan))
}

/// Where the writer starts: the log file and how much of it recovery found good.
#[derive(Clone)]
pub struct RetainedLogPlan {
    pub path: PathBuf,
    pub valid_bytes: u64,
    pub interval: Duration,
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

/// The shard must keep its journal from before it serves anyone (`keep_retained_journal`).
/// Runs until `finish` is set (after the shard has closed its clients), then commits what
/// is left: a clean stop loses nothing.
pub async fn write_retained(shard: Rc<RefCell<Shard>>, plan: RetainedLogPlan, finish: Rc<Latch>) {
    let mut log = match AppendLog::open(&plan.path, plan.valid_bytes).await {
        Ok(log) => log,
        Err(error) => {
            // Checked at start-up already (the directory is ours and writable), so this is rare.
            tracing::error!(file = %plan.path.display(), %error, "cannot open the retained log: retained messages are kept in memory only");
            return;
        }
    };
    // What the store took when last written whole: the yardstick for compaction.
    let mut rewritten_bytes = log.len();
    loop {
        let finishing = finish.is_set();
        let journal = shard.borrow_mut().take_retained_journal();
        let mut batch = Vec::new();
        let batch_was_empty = !journal.rewrite_needed && journal.changes.is_empty() && log.len() <= LOG_REWRITE_BYTES_MIN;
        let outcome = if journal.rewrite_needed || log.len() > LOG_REWRITE_BYTES_MIN.max(rewritten_bytes * LOG_GROWTH_FACTOR) {
            let messages = shard.borrow().retained_messages();
            encode(&messages, &mut batch);
            rewritten_bytes = batch.len() as u64 + record::FILE_MAGIC.len() as u64;
            log.rewrite(batch).await
        } else if !journal.changes.is_empty() {
            encode(&journal.changes, &mut batch);
            log.append(batch).await
        } else {
            Ok(())
        };
        match outcome {
            Ok(()) if !batch_was_empty => shard.borrow_mut().counters.persist_commits += 1,
            Ok(()) => {}
            Err(error) => {
                tracing::error!(
                    file = %plan.path.display(),
                    %error,
                    "writing retained messages failed; the broker keeps serving them from memory and rewrites the log at the next interval"
                );
                let mut shard = shard.borrow_mut();
                shard.require_retained_rewrite();
                shard.counters.persist_write_failures += 1;
            }
        }
        if finishing {
            let _ = log.close().await;
            return;
        }
        or(sleep(plan.interval), finish.wait()).await;
    }
}

/// Commits shard `shard`'s persistent sessions until `finish` is set (after the shard has
/// closed its clients), then commits what is left: a clean stop loses nothing.
pub async fn write_sessions(shard: Rc<RefCell<Shard>>, index: usize, plan: SessionLogsPlan, finish: Rc<Latch>) {
    let path = plan.path(index);
    let mut log = match AppendLog::open(&path, 0).await {
        Ok(log) => log,
        Err(error) => {
            tracing::error!(file = %path.display(), %error, "cannot open the session log: sessions are kept in memory only");
            return;
        }
    };
    let mut rewritten_bytes = log.len();
    let mut first_commit_done = false;
    loop {
        let finishing = finish.is_set();
        let batch = shard.borrow_mut().take_session_batch();
        let compact = log.len() > LOG_REWRITE_BYTES_MIN.max(rewritten_bytes * LOG_GROWTH_FACTOR);
        let wrote = !batch.records.is_empty() || batch.rewrite_needed || compact;
        let outcome = if batch.rewrite_needed || compact {
            let records = shard.borrow_mut().session_snapshot();
            rewritten_bytes = records.len() as u64 + record::FILE_MAGIC.len() as u64;
            log.rewrite(records).await
        } else if !batch.records.is_empty() {
            log.append(batch.records).await
        } else {
            Ok(())
        };
        match outcome {
            Ok(()) => {
                if wrote {
                    shard.borrow_mut().counters.persist_commits += 1;
                }
                if !first_commit_done {
                    first_commit_done = true;
                    if plan.first_commits_left.fetch_sub(1, Ordering::AcqRel) == 1 {
                        // Every shard's log now holds every session it restored.
                        for old in plan.old_files.iter() {
                            if let Err(error) = std::fs::remove_file(old) {
                                tracing::warn!(file = %old.display(), %error, "cannot remove a session log of an earlier run");
                            }
                        }
                    }
                }
            }
            Err(error) => {
                tracing::error!(
                    file = %path.display(),
                    %error,
                    "writing sessions failed; the broker keeps serving them from memory and rewrites the log at the next interval"
                );
                let mut shard = shard.borrow_mut();
                shard.require_session_rewrite();
                shard.counters.persist_write_failures += 1;
            }
        }
        if finishing {
            let _ = log.close().await;
            return;
        }
        or(sleep(plan.interval), finish.wait()).await;
    }
}
