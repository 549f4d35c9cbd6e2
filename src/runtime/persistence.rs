//! The writer task that commits shard 0's retained journal to `retained.log`, on shard
//! 0's executor and io_uring: every `--fsync-interval-ms`, what changed is encoded, written
//! and fsynced in one batch (group commit); when the log has grown well past what the
//! store holds, it is rewritten compacted. A failed write is logged, counted, and answered
//! by a full rewrite at the next interval: the broker keeps serving from memory.

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::future::or;
use glommio::timer::sleep;

use super::latch::Latch;

use crate::persist::log::AppendLog;
use crate::persist::{DataDir, PersistError, RETAINED_LOG, record, retained};
use crate::session::Message;
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
}

/// Locks `--data-dir` and reads what it holds, before the shards start.
pub fn prepare(data_dir: Option<&std::path::Path>, fsync_interval_ms: u64) -> Result<(Option<DataDir>, PersistPlan), PersistError> {
    let Some(path) = data_dir else {
        return Ok((None, PersistPlan::default()));
    };
    let dir = DataDir::lock(path)?;
    let started = std::time::Instant::now();
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
        elapsed_ms = started.elapsed().as_millis() as u64,
        "data directory recovered"
    );
    let retained_log =
        Some(RetainedLogPlan { path: file, valid_bytes: recovered.valid_bytes, interval: Duration::from_millis(fsync_interval_ms) });
    Ok((Some(dir), PersistPlan { retained: Arc::new(recovered.messages), retained_log }))
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
