//! The shard's two tasks for the cluster gateway (`--cluster`): one takes the shard's
//! cluster outbox to the gateway's queue, one feeds the shard what the gateway received
//! from other nodes. The queues are tokio's bounded channels, whose ends need no tokio
//! runtime: here they are awaited on glommio, and a wake from the gateway thread is a
//! foreign wake of this executor.

use std::cell::RefCell;
use std::future::poll_fn;
use std::rc::Rc;
use std::time::Instant;

use tokio::sync::mpsc;

use crate::cluster::port::{FromCluster, ToGateway};
use crate::shard::Shard;

/// Messages applied per borrow of the shard.
const INBOX_BATCH: usize = 256;

/// This shard's ends of the gateway's queues.
pub(super) struct ShardClusterEnds {
    pub(super) to_gateway: mpsc::Sender<Vec<ToGateway>>,
    pub(super) inbox: mpsc::Receiver<FromCluster>,
    /// `--cluster-durable`: the shard keeps its sessions' checkpoints fresh.
    pub(super) durable: bool,
}

pub(super) fn serve(shard: &Rc<RefCell<Shard>>, ends: ShardClusterEnds) {
    let ShardClusterEnds { to_gateway, mut inbox, durable } = ends;
    shard.borrow_mut().attach_cluster(durable);
    let outgoing = shard.clone();
    glommio::spawn_local(async move {
        loop {
            let batch = poll_fn(|cx| outgoing.borrow_mut().poll_cluster_outbox(cx)).await;
            if to_gateway.send(batch).await.is_err() {
                break;
            }
        }
    })
    .detach();
    let incoming = shard.clone();
    glommio::spawn_local(async move {
        let mut batch = Vec::with_capacity(INBOX_BATCH);
        while inbox.recv_many(&mut batch, INBOX_BATCH).await > 0 {
            let now = Instant::now();
            {
                let mut shard = incoming.borrow_mut();
                for received in batch.drain(..) {
                    shard.from_cluster(received, now);
                }
            }
            // The gateway can keep the inbox full: give the shard's connections their turn.
            glommio::yield_if_needed().await;
        }
    })
    .detach();
}
