//! The desk where the admin API (on the metrics thread) leaves queries for the shards and
//! collects their answers. Each shard looks at its tray once per tick (100 ms) and answers
//! on a channel: admin requests never touch the publish path and never hold a shard.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::shard::admin::{AdminAnswer, AdminQuery};

/// How long a query waits for every shard (a shard answers within a tick when healthy).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);
/// Queries a shard's tray holds; more are refused (the API answers 503).
const TRAY_QUERIES_MAX: usize = 64;

type Request = (AdminQuery, mpsc::Sender<AdminAnswer>);

pub struct AdminDesk {
    trays: Vec<Mutex<Vec<Request>>>,
}

impl AdminDesk {
    pub fn new(shard_count: usize) -> Arc<AdminDesk> {
        Arc::new(AdminDesk { trays: (0..shard_count).map(|_| Mutex::new(Vec::new())).collect() })
    }

    /// Asks `shards` (all of them with `None`); every answer, or `None` if a tray was full
    /// or a shard did not answer in time.
    pub fn ask(&self, query: &AdminQuery, shards: Option<&[usize]>) -> Option<Vec<AdminAnswer>> {
        let all: Vec<usize> = (0..self.trays.len()).collect();
        let shards = shards.unwrap_or(&all);
        let (sender, answers) = mpsc::channel();
        for &shard in shards {
            let mut tray = self.trays.get(shard)?.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if tray.len() >= TRAY_QUERIES_MAX {
                return None;
            }
            tray.push((query.clone(), sender.clone()));
        }
        drop(sender);
        let mut collected = Vec::with_capacity(shards.len());
        for _ in shards {
            collected.push(answers.recv_timeout(ANSWER_TIMEOUT).ok()?);
        }
        Some(collected)
    }

    /// Shard side: the queries waiting for `shard`.
    pub fn take(&self, shard: usize) -> Vec<Request> {
        self.trays
            .get(shard)
            .map(|tray| std::mem::take(&mut *tray.lock().unwrap_or_else(|poisoned| poisoned.into_inner())))
            .unwrap_or_default()
    }

    pub fn shard_count(&self) -> usize {
        self.trays.len()
    }
}
