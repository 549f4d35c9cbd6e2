//! Owns each shard's persistent readiness set: one multishot poll per connection socket,
//! armed once when the connection starts, in a small io_uring of the shard's own.
//!
//! Why: glommio 0.9 waits for a socket with a one-shot poll that it re-arms after every
//! read, so each read that drains a socket costs a poll request, its submission, its
//! completion and its bookkeeping. At QoS 1 fan-out (every subscriber answers each batch
//! with a run of PUBACKs) that was tens of thousands of re-arms per second and about a
//! tenth of the shard's CPU (README "Performance", eighth pass). A multishot poll stays
//! armed: the kernel posts one completion each time data arrives, and nothing is
//! submitted per read.
//!
//! How: the ring signals an eventfd when it posts completions. One task per shard
//! (`pump`) waits for that eventfd through glommio (a read on glommio's own ring, so a
//! sleeping shard wakes for it like for any other IO), then drains the ring and wakes the
//! readers whose sockets became readable. A reader reads with a plain non-blocking `recv`
//! and waits only once the socket is drained. glommio offers no public way to poll an
//! arbitrary descriptor, hence the second ring; drop this module when it does.
//!
//! Where the kernel lacks multishot poll (before 5.13) or the ring cannot be created,
//! `start` reports it and connections keep glommio's own read path.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use io_uring::{IoUring, cqueue, opcode, squeue, types};

/// Submission slots: registrations and removals are submitted one at a time as they
/// happen, re-arms in batches after a drain; a full queue is submitted and reused.
const SUBMISSION_ENTRIES: u32 = 256;

/// Completion slots. Each data arrival on a watched socket posts one; the pump empties
/// the queue every time the shard gets to it. Past this the kernel ends the busiest
/// multishot polls (a completion without `F_MORE`), and the pump arms them again.
const COMPLETION_ENTRIES: u32 = 16_384;

/// Events a connection's reader waits for: data, the peer's FIN, errors.
const READ_EVENTS: u32 = (libc::POLLIN | libc::POLLRDHUP) as u32;

/// The user data of requests whose completions mean nothing to the pump (removals).
const IGNORED_TOKEN: u64 = u64::MAX;

/// The start-up probe's poll (no socket slot reaches this token).
const PROBE_TOKEN: u64 = u64::MAX - 1;

thread_local! {
    /// This shard's readiness set, once `start` has run on the shard's thread.
    static CURRENT: RefCell<Option<Rc<Readiness>>> = const { RefCell::new(None) };
}

/// Creates this shard's readiness set and spawns its pump on the current executor.
/// Connections accepted afterwards on this thread use it.
pub fn start() -> io::Result<()> {
    let readiness = Rc::new(Readiness::new(SUBMISSION_ENTRIES, COMPLETION_ENTRIES)?);
    let eventfd = readiness.eventfd.try_clone()?;
    glommio::spawn_local(pump(readiness.clone(), eventfd)).detach();
    CURRENT.with(|current| *current.borrow_mut() = Some(readiness));
    Ok(())
}

/// Watches `fd` for reads on this shard's readiness set; `None` where the shard has none
/// (the caller keeps glommio's read path) or the socket could not be registered.
pub fn watch(fd: RawFd) -> Option<Watch> {
    let readiness = CURRENT.with(|current| current.borrow().clone())?;
    match readiness.register(fd) {
        Ok(watch) => Some(watch),
        Err(error) => {
            tracing::debug!(%error, "socket not added to the readiness set; it is polled per read");
            None
        }
    }
}

/// One shard's ring, its eventfd and what each watched socket's reader needs.
pub struct Readiness {
    ring: RefCell<IoUring>,
    eventfd: OwnedFd,
    sockets: RefCell<Sockets>,
    /// Readers to wake after a drain, woken once no borrow is held (reused, not freed).
    to_wake: RefCell<Vec<Waker>>,
}

impl Readiness {
    fn new(submission_entries: u32, completion_entries: u32) -> io::Result<Readiness> {
        let mut ring = build_ring(submission_entries, completion_entries)?;
        // Blocking on purpose: glommio's read of it must wait for a signal, and io_uring
        // answers a read of a non-blocking descriptor with EAGAIN instead of waiting.
        // SAFETY: eventfd takes no pointers; a non-negative result is a new descriptor we own.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` was just returned by eventfd and is owned by nothing else.
        let eventfd = unsafe { OwnedFd::from_raw_fd(raw) };
        probe_multishot(&mut ring)?;
        ring.submitter().register_eventfd(eventfd.as_raw_fd())?;
        Ok(Readiness { ring: RefCell::new(ring), eventfd, sockets: RefCell::new(Sockets::default()), to_wake: RefCell::new(Vec::new()) })
    }

    fn register(self: &Rc<Self>, fd: RawFd) -> io::Result<Watch> {
        let token = self.sockets.borrow_mut().insert(fd);
        let mut ring = self.ring.borrow_mut();
        if let Err(error) = push(&mut ring, &poll_entry(fd, token)) {
            self.sockets.borrow_mut().remove(token);
            return Err(error);
        }
        if let Err(error) = ring.submit() {
            // The request stays queued and goes with a later submission, so the watch
            // stays (its removal cancels it); until then the reader uses glommio's path.
            tracing::debug!(%error, "submitting a socket poll failed; it is polled per read");
            if let Some(socket) = self.sockets.borrow_mut().get_mut(token) {
                socket.armed = false;
            }
        }
        Ok(Watch { readiness: self.clone(), token, fd })
    }

    /// Pushes one request and submits it with whatever else is queued.
    fn submit(&self, entry: squeue::Entry) -> io::Result<()> {
        let mut ring = self.ring.borrow_mut();
        push(&mut ring, &entry)?;
        ring.submit()?;
        Ok(())
    }

    /// Marks every socket the ring reported readable and wakes its reader; arms again the
    /// polls the kernel ended.
    fn drain(&self) {
        let mut to_wake = self.to_wake.borrow_mut();
        self.take_completions(&mut to_wake);
        for reader in to_wake.drain(..) {
            reader.wake();
        }
    }

    /// One pass over the completion queue. Not a loop until it stays empty: a poll armed
    /// again on a socket that still has data completes at once, so with more readable
    /// sockets than completion slots that loop would never end. The readers run first;
    /// the completions posted meanwhile signal the eventfd for the next pass.
    fn take_completions(&self, to_wake: &mut Vec<Waker>) {
        let mut ring = self.ring.borrow_mut();
        let mut sockets = self.sockets.borrow_mut();
        let (submitter, mut submissions, mut completions) = ring.split();
        completions.sync();
        for entry in &mut completions {
            let token = entry.user_data();
            let Some(socket) = sockets.get_mut(token) else {
                continue;
            };
            socket.readable = true;
            to_wake.extend(socket.reader.take());
            if cqueue::more(entry.flags()) {
                continue;
            }
            // The kernel ended the poll (its queue was full): armed again, unless the poll
            // failed, in which case this socket goes back to glommio's read path.
            socket.armed = entry.result() >= 0;
            if socket.armed {
                let rearm = poll_entry(socket.fd, token);
                // SAFETY: a poll request carries no pointers; the socket is open while it
                // is registered (see `Watch`).
                while unsafe { submissions.push(&rearm) }.is_err() {
                    submissions.sync();
                    if submitter.submit().is_err() {
                        socket.armed = false;
                        break;
                    }
                    submissions.sync();
                }
            }
        }
        submissions.sync();
        // The enter also moves completions held back while the queue was full into the queue.
        let overflowed = submissions.cq_overflow();
        if (!submissions.is_empty() || overflowed)
            && let Err(error) = submitter.submit()
        {
            tracing::warn!(%error, "re-arming socket polls failed");
        }
        completions.sync();
        if overflowed && !completions.is_empty() {
            // Released completions wait for the next pass: make sure there is one soon,
            // whether or not the kernel signalled them.
            let one = 1u64.to_ne_bytes();
            // SAFETY: writes 8 bytes from a live buffer to the eventfd we own.
            unsafe { libc::write(self.eventfd.as_raw_fd(), one.as_ptr().cast(), one.len()) };
        }
    }
}

/// Pushes `entry`, submitting first if the submission queue is full.
fn push(ring: &mut IoUring, entry: &squeue::Entry) -> io::Result<()> {
    // SAFETY: poll and poll-remove requests carry no pointers; the descriptor they name
    // stays open while it is registered (see `Watch`).
    if unsafe { ring.submission().push(entry) }.is_ok() {
        return Ok(());
    }
    ring.submit()?;
    // SAFETY: as above.
    unsafe { ring.submission().push(entry) }.map_err(|_| io::Error::other("io_uring submission queue full"))
}

fn poll_entry(fd: RawFd, token: u64) -> squeue::Entry {
    opcode::PollAdd::new(types::Fd(fd), READ_EVENTS).multi(true).build().user_data(token)
}

/// A ring with cooperative task running (no interrupt to a running shard for each
/// completion; see `runtime::ring_setup`) where the kernel has it.
fn build_ring(submission_entries: u32, completion_entries: u32) -> io::Result<IoUring> {
    let mut builder = IoUring::builder();
    builder.setup_cqsize(completion_entries);
    match builder.clone().setup_coop_taskrun().build(submission_entries) {
        Ok(ring) => Ok(ring),
        Err(error) if error.raw_os_error() == Some(libc::EINVAL) => builder.build(submission_entries),
        Err(error) => Err(error),
    }
}

/// Fails where the kernel rejects multishot poll (before Linux 5.13, which refuses the
/// flag with EINVAL as the request is prepared, so within the submission).
fn probe_multishot(ring: &mut IoUring) -> io::Result<()> {
    // SAFETY: eventfd takes no pointers; a non-negative result is a new descriptor we own.
    let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` was just returned by eventfd and is owned by nothing else.
    let probe = unsafe { OwnedFd::from_raw_fd(raw) };
    let submissions = [poll_entry(probe.as_raw_fd(), PROBE_TOKEN), opcode::PollRemove::new(PROBE_TOKEN).build().user_data(IGNORED_TOKEN)];
    // SAFETY: the entries carry no pointers; `probe` stays open until both complete.
    unsafe { ring.submission().push_multiple(&submissions) }.map_err(|_| io::Error::other("io_uring submission queue full"))?;
    // Both complete within the submission: the poll refused or cancelled, the removal done.
    ring.submit_and_wait(submissions.len())?;
    let refused = ring.completion().any(|entry| entry.user_data() == PROBE_TOKEN && entry.result() == -libc::EINVAL);
    ring.completion().for_each(drop);
    if refused {
        return Err(io::Error::new(io::ErrorKind::Unsupported, "this kernel has no multishot poll (Linux 5.13)"));
    }
    Ok(())
}

/// Waits on the eventfd through glommio and drains the ring, for the life of the shard.
async fn pump(readiness: Rc<Readiness>, eventfd: OwnedFd) {
    // SAFETY: the BufferedFile takes over the descriptor (a duplicate of the ring's
    // eventfd) and closes it when the pump ends.
    let file = unsafe { glommio::io::BufferedFile::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(eventfd)) };
    loop {
        // Whatever the kernel posts after this drain (held-back completions included,
        // which the drain's submission releases) signals the eventfd again, so the read
        // below cannot sleep through it.
        readiness.drain();
        if let Err(error) = file.read_at(0, 8).await {
            // Not expected of an eventfd; keep the readers served on a short timer.
            tracing::warn!(%error, "reading the readiness eventfd failed");
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// A socket in the readiness set; the registration ends (and the kernel drops its poll)
/// when this drops. The socket must stay open until then.
pub struct Watch {
    readiness: Rc<Readiness>,
    token: u64,
    fd: RawFd,
}

impl Watch {
    /// Reads what the socket has, or registers `cx` to be woken when it has more. `None`
    /// where the socket's poll ended with an error: the caller reads through glommio.
    pub fn poll_read(&self, cx: &Context<'_>, buf: &mut [u8]) -> Option<Poll<io::Result<usize>>> {
        let mut sockets = self.readiness.sockets.borrow_mut();
        let socket = sockets.get_mut(self.token)?;
        if !socket.armed {
            return None;
        }
        if !socket.readable {
            socket.wait(cx.waker());
            return Some(Poll::Pending);
        }
        loop {
            // SAFETY: `fd` is open (see `Watch`); `buf` is valid for `buf.len()` bytes.
            let count = unsafe { libc::recv(self.fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
            if count >= 0 {
                let count = count as usize;
                // A short read drained the socket; a full one may have left more. At the end
                // of the stream every read returns 0 at once, so it stays readable.
                if count > 0 && count < buf.len() {
                    socket.readable = false;
                }
                return Some(Poll::Ready(Ok(count)));
            }
            let error = io::Error::last_os_error();
            match error.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => {
                    socket.readable = false;
                    socket.wait(cx.waker());
                    return Some(Poll::Pending);
                }
                _ => return Some(Poll::Ready(Err(error))),
            }
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.readiness.sockets.borrow_mut().remove(self.token);
        let remove = opcode::PollRemove::new(self.token).build().user_data(IGNORED_TOKEN);
        if let Err(error) = self.readiness.submit(remove) {
            tracing::warn!(%error, "removing a socket from the readiness set failed");
        }
    }
}

/// Watched sockets by slot; a token is the slot and its generation, so a completion that
/// arrives after its socket left (and the slot went to another) is recognised as stale.
#[derive(Default)]
struct Sockets {
    slots: Vec<Slot>,
    free: Vec<u32>,
}

struct Slot {
    generation: u32,
    socket: Option<Socket>,
}

struct Socket {
    fd: RawFd,
    /// The last read did not drain it, or the kernel reported data since.
    readable: bool,
    /// The multishot poll is in place (false after it failed).
    armed: bool,
    reader: Option<Waker>,
}

impl Socket {
    fn wait(&mut self, waker: &Waker) {
        match &self.reader {
            Some(reader) if reader.will_wake(waker) => {}
            _ => self.reader = Some(waker.clone()),
        }
    }
}

fn token_of(index: u32, generation: u32) -> u64 {
    (u64::from(generation) << 32) | u64::from(index)
}

impl Sockets {
    fn insert(&mut self, fd: RawFd) -> u64 {
        // Readable until a read finds it empty: data may have come before the poll.
        let socket = Socket { fd, readable: true, armed: true, reader: None };
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                self.slots.push(Slot { generation: 0, socket: None });
                (self.slots.len() - 1) as u32
            }
        };
        let slot = &mut self.slots[index as usize];
        slot.socket = Some(socket);
        token_of(index, slot.generation)
    }

    fn get_mut(&mut self, token: u64) -> Option<&mut Socket> {
        let slot = self.slots.get_mut((token & u64::from(u32::MAX)) as usize)?;
        if u64::from(slot.generation) != token >> 32 {
            return None;
        }
        slot.socket.as_mut()
    }

    fn remove(&mut self, token: u64) {
        let index = (token & u64::from(u32::MAX)) as u32;
        if let Some(slot) = self.slots.get_mut(index as usize)
            && u64::from(slot.generation) == token >> 32
            && slot.socket.take().is_some()
        {
            slot.generation = slot.generation.wrapping_add(1);
            self.free.push(index);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::{Future, poll_fn};
    use std::io::{Read, Write};
    use std::task::Waker;

    use glommio::net::{TcpListener, TcpStream};
    use glommio::timer::{sleep, timeout};

    use super::*;

    fn on_executor<F, Fut>(test: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        glommio::LocalExecutorBuilder::default().spawn(test).expect("executor starts").join().expect("test passes");
    }

    /// A connected pair: the broker's end as glommio accepts it, the peer a plain socket.
    async fn pair(listener: &TcpListener) -> (TcpStream, std::net::TcpStream) {
        let peer = std::net::TcpStream::connect(listener.local_addr().expect("bound")).expect("connects");
        let ours = listener.accept().await.expect("accepts");
        (ours, peer)
    }

    async fn read(watch: &Watch) -> Vec<u8> {
        let mut buf = [0u8; 64];
        let read = timeout(Duration::from_secs(5), async { Ok(poll_fn(|cx| watch.poll_read(cx, &mut buf).expect("poll armed")).await) });
        let count = read.await.expect("woken within 5 s").expect("read");
        buf[..count].to_vec()
    }

    #[test]
    fn every_arrival_wakes_the_waiting_reader() {
        on_executor(|| async {
            start().expect("multishot poll on this kernel");
            let listener = TcpListener::bind("127.0.0.1:0").expect("binds");
            let (ours, mut peer) = pair(&listener).await;
            let watch = super::watch(ours.as_raw_fd()).expect("registered");
            for round in 0..100u8 {
                // Written while the reader waits: only the pump's wake can end the wait.
                let write = glommio::spawn_local(async move {
                    sleep(Duration::from_millis(1)).await;
                    peer.write_all(&[round, round]).expect("writes");
                    peer
                });
                assert_eq!(read(&watch).await, [round, round]);
                peer = write.await;
            }
            drop(peer);
            assert_eq!(read(&watch).await, [] as [u8; 0], "end of stream");
        });
    }

    #[test]
    fn a_socket_closes_once_its_watch_and_stream_drop() {
        on_executor(|| async {
            start().expect("multishot poll on this kernel");
            let listener = TcpListener::bind("127.0.0.1:0").expect("binds");
            let (ours, mut peer) = pair(&listener).await;
            let watch = super::watch(ours.as_raw_fd()).expect("registered");
            // The kernel's poll holds the socket open until it is removed.
            drop(watch);
            drop(ours);
            peer.set_nonblocking(true).expect("non-blocking");
            let mut buf = [0u8; 8];
            for _ in 0..500 {
                match peer.read(&mut buf) {
                    Ok(0) => return,
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => sleep(Duration::from_millis(10)).await,
                    other => panic!("unexpected read: {other:?}"),
                }
            }
            panic!("the peer saw no end of stream within 5 s");
        });
    }

    /// Drains and reads until every socket gave `expected` bytes; false if some did not
    /// within a hundred drains.
    fn drain_until_read(readiness: &Readiness, watches: &[Watch], expected: usize) -> bool {
        let cx = Context::from_waker(Waker::noop());
        let mut buf = [0u8; 64];
        let mut received = vec![0; watches.len()];
        for _ in 0..100 {
            readiness.drain();
            for (watch, received) in watches.iter().zip(&mut received) {
                if let Some(Poll::Ready(Ok(count))) = watch.poll_read(&cx, &mut buf) {
                    *received += count;
                }
            }
            if received.iter().all(|&count| count == expected) {
                return true;
            }
        }
        false
    }

    #[test]
    fn polls_ended_by_a_full_completion_queue_are_armed_again() {
        on_executor(|| async {
            // Four completion slots for eight sockets written to three times each: the
            // kernel ends polls whose completions do not fit.
            let readiness = Rc::new(Readiness::new(4, 4).expect("ring"));
            let listener = TcpListener::bind("127.0.0.1:0").expect("binds");
            let mut streams = Vec::new();
            let mut peers = Vec::new();
            let mut watches = Vec::new();
            for _ in 0..8 {
                let (ours, peer) = pair(&listener).await;
                watches.push(readiness.register(ours.as_raw_fd()).expect("registered"));
                streams.push(ours);
                peers.push(peer);
            }
            assert!(drain_until_read(&readiness, &watches, 0), "nothing to read yet");
            for _ in 0..3 {
                for peer in &mut peers {
                    peer.write_all(b"x").expect("writes");
                }
            }
            assert!(drain_until_read(&readiness, &watches, 3), "every write of the first round read");
            // Every socket must still be watched: one more write each is reported.
            for peer in &mut peers {
                peer.write_all(b"y").expect("writes");
            }
            assert!(drain_until_read(&readiness, &watches, 1), "every socket's poll armed again");
        });
    }

    #[test]
    fn a_token_of_a_socket_that_left_names_nothing() {
        let mut sockets = Sockets::default();
        let first = sockets.insert(7);
        sockets.remove(first);
        let second = sockets.insert(8);
        assert_ne!(first, second, "the slot is reused under a new generation");
        assert!(sockets.get_mut(first).is_none());
        assert_eq!(sockets.get_mut(second).map(|socket| socket.fd), Some(8));
        sockets.remove(first);
        assert!(sockets.get_mut(second).is_some(), "a stale removal leaves the new socket");
    }
}
