//! The shard-to-shard transport: glommio's channel mesh, the only place that names it.
//! Each shard joins the mesh once at start-up, then one task per peer feeds received
//! batches to the shard and one task per peer forwards the shard's outbox to it. Swapping
//! the queue implementation (e.g. crossbeam with an eventfd wake-up) touches this file only.

use std::cell::RefCell;
use std::future::poll_fn;
use std::rc::Rc;
use std::time::Instant;

use glommio::channels::channel_mesh::{Full, MeshBuilder, Receivers, Senders};

use crate::shard::{MeshMessage, Shard, ShardId};

/// What travels between two shards at once: one batch from an outbox (`shard/outbox.rs`).
pub(super) type Batch = Vec<MeshMessage>;

/// The mesh before the shards joined it (one per broker, cloned into every shard).
pub(super) type Mesh = MeshBuilder<Batch, Full>;

pub(super) fn new_mesh(shard_count: usize, channel_batches: usize) -> Mesh {
    MeshBuilder::full(shard_count, channel_batches)
}

/// This shard's end of the mesh, once joined.
pub(super) struct Joined {
    senders: Senders<Batch>,
    receivers: Receivers<Batch>,
}

/// Joins the mesh; resolves once every shard has (`None` if the join failed).
pub(super) async fn join(mesh: Mesh) -> Option<Joined> {
    let (senders, receivers) = mesh.join().await.ok()?;
    Some(Joined { senders, receivers })
}

impl Joined {
    /// The shard's id: its place in the mesh.
    pub(super) fn shard_id(&self) -> ShardId {
        ShardId(self.senders.peer_id())
    }

    /// Spawns the receiving and forwarding tasks between `shard` and each peer.
    pub(super) fn serve(mut self, shard: &Rc<RefCell<Shard>>, shard_count: usize) {
        let here = self.shard_id();
        for (peer, receiver) in self.receivers.streams() {
            let shard = shard.clone();
            glommio::spawn_local(async move {
                while let Some(batch) = receiver.recv().await {
                    shard.borrow_mut().handle_batch(ShardId(peer), batch, Instant::now());
                    // A peer that keeps the channel full would otherwise keep this task
                    // running for good (a ready channel never makes it wait), and every
                    // connection on this shard, a CONNECT's included, with it.
                    glommio::yield_if_needed().await;
                }
            })
            .detach();
        }
        let senders = Rc::new(self.senders);
        for peer in (0..shard_count).filter(|&peer| peer != here.0) {
            let shard = shard.clone();
            let senders = senders.clone();
            glommio::spawn_local(async move {
                loop {
                    let batch = poll_fn(|cx| shard.borrow_mut().poll_outbox(ShardId(peer), cx)).await;
                    if senders.send_to(peer, batch).await.is_err() {
                        break;
                    }
                }
            })
            .detach();
        }
    }
}
