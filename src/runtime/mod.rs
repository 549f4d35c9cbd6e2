//! Start and stop of the broker: one glommio `LocalExecutor` pinned per CPU, each running
//! one shard; the full mesh of bounded channels between them; the SO_REUSEPORT listeners.
//! This and `net` are the only modules that know glommio.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use glommio::timer::sleep;
use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement, PoolPlacement};

mod cluster;
pub mod heap;
mod latch;
mod listen;
mod memory;
mod mesh;
mod nudge;
mod persistence;
pub mod reload;
pub mod ring_setup;
mod uring_probe;

use latch::Latch;
use listen::{PortLock, listen, reserve_address};
use mesh::Mesh;
use nudge::Nudger;

use crate::auth::Authenticator;
use crate::config::MemoryBound;
use crate::config::{Config, ConfigError, ListenerSpec, Steering};
use crate::net::{ListenerContext, TlsSource, accept_loop};
use crate::shard::{ConnectionBudget, Shard, ShardLimits};
use memory::MemoryGauge;
use reload::{AuthSlot, LimitsSlot, Reloadable, TlsSlot};

/// The coarse timer's period: keep-alive checks, `$SYS`, and noticing a stop request.
const TICK: Duration = Duration::from_millis(100);
/// Time given to writers to flush DISCONNECTs on shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(200);
/// How long a shard's tasks run before glommio asks the busy one to yield (at its next
/// `yield_if_needed`: the read loop, the mesh and cluster receivers) and polls for IO.
/// glommio's default (100 ms) let one client sending flat out, or a peer shard keeping a
/// channel full, hold a CONNECT or a takeover for that long per turn; 10 ms cut the worst
/// takeover under a flood from 0.3-0.6 s to 0.06-0.15 s with no loss of throughput
/// (README, "Fairness on a shard").
const PREEMPT_INTERVAL: Duration = Duration::from_millis(10);
/// glommio refuses to start an executor below this locked-memory limit.
const GLOMMIO_MIN_MEMLOCK_BYTES: u64 = 512 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Auth(#[from] reload::AuthLoadError),
    #[error(transparent)]
    Tls(#[from] crate::transport::tls::TlsLoadError),
    #[error(
        "locked-memory limit is {limit_kib} KiB; io_uring needs at least {needed_kib} KiB. \
         Raise it with `ulimit -l {needed_kib}` (or `ulimit -l unlimited`), or LimitMEMLOCK= in a systemd unit"
    )]
    MemLock { limit_kib: u64, needed_kib: u64 },
    #[error("cannot bind {addr}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Persist(#[from] crate::persist::PersistError),
    #[error("cannot start shard executor: {0}")]
    Executor(String),
    #[error(transparent)]
    Uring(#[from] uring_probe::UringUnavailable),
    #[error(transparent)]
    Cluster(#[from] crate::cluster::gateway::GatewayError),
}

/// A running broker. Dropping it does not stop it; set the stop flag and `wait`.
pub struct Broker {
    /// The first listener's address.
    pub local_addr: SocketAddr,
    /// Every listener's address, in the order given.
    pub local_addrs: Vec<SocketAddr>,
    pub shard_count: usize,
    handles: Vec<ExecutorJoinHandle<()>>,
    nudger: Arc<Nudger>,
    nudging: Option<std::thread::JoinHandle<()>>,
    /// Samples resident memory for `--memory-max-bytes`.
    gauge: Arc<MemoryGauge>,
    sampling: Option<std::thread::JoinHandle<()>>,
    /// What SIGHUP reloads (`reload.rs`).
    reloadable: Reloadable,
    /// Reloads the certificate when its files change.
    tls_watch: Option<std::thread::JoinHandle<()>>,
    _port_locks: Vec<PortLock>,
    /// Held while the broker runs: one broker per `--data-dir`.
    _data_dir: Option<crate::persist::DataDir>,
    /// Where `--metrics-listen` serves, and its thread.
    pub metrics_addr: Option<SocketAddr>,
    metrics_thread: Option<std::thread::JoinHandle<()>>,
    /// With `--cluster`: the gateway thread holding the NATS connection.
    cluster_thread: Option<std::thread::JoinHandle<()>>,
}

impl Broker {
    /// What a reload (SIGHUP) rereads: password file, ACL, TLS certificate.
    pub fn reloadable(&self) -> Reloadable {
        self.reloadable.clone()
    }

    /// Blocks until every shard has stopped.
    pub fn wait(mut self) {
        for handle in std::mem::take(&mut self.handles) {
            if let Err(error) = handle.join() {
                tracing::error!(%error, "shard executor failed");
            }
        }
        self.nudger.finish();
        if let Some(nudging) = self.nudging.take() {
            let _ = nudging.join();
        }
        self.gauge.finish();
        if let Some(sampling) = self.sampling.take() {
            let _ = sampling.join();
        }
        if let Some(watch) = self.tls_watch.take() {
            let _ = watch.join();
        }
        if let Some(metrics) = self.metrics_thread.take() {
            let _ = metrics.join();
        }
        if let Some(cluster) = self.cluster_thread.take() {
            let _ = cluster.join();
        }
    }
}

/// CPUs this process may run on (respects `taskset`).
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity fills it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect();
        }
        (0..libc::CPU_SETSIZE as usize).filter(|&cpu| libc::CPU_ISSET(cpu, &set)).collect()
    }
}

fn memlock_limit_bytes() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } != 0 {
        return u64::MAX;
    }
    limit.rlim_cur
}

/// Starts every shard and returns once all are listening.
/// `--check-config`: every check `start` makes before it binds or locks anything (values
/// and how they relate, the CPUs, the password and ACL files, the TLS certificate).
pub fn check(config: &Config) -> Result<(), StartError> {
    config.check_exposure()?;
    config.limits()?;
    config.cpus(&allowed_cpus())?;
    reload::load_authenticator(config)?;
    TlsSlot::load(config.tls_options()?)?;
    if let Some(settings) = gateway_settings(config, config.all_listeners().first().map_or(0, |spec| spec.addr.port())) {
        crate::cluster::gateway::check(&settings)?;
    }
    Ok(())
}

/// `--cluster` and its companions, or `None` for a node on its own.
fn gateway_settings(config: &Config, port: u16) -> Option<crate::cluster::gateway::GatewaySettings> {
    (!config.cluster.is_empty()).then(|| crate::cluster::gateway::GatewaySettings {
        servers: config.cluster.clone(),
        node_id: config.node_id.clone().unwrap_or_else(|| format!("{}-{port}", host_name())),
        cluster_name: config.cluster_name.clone(),
        replicas: config.cluster_replicas as usize,
        durable: config.cluster_durable.then(|| crate::cluster::message_stream::DurableSettings {
            retention: Duration::from_secs(config.cluster_durable_retention_s),
            bytes_max: config.cluster_durable_bytes_max,
        }),
        sweep_interval: Duration::from_secs(config.cluster_sweep_interval_s),
    })
}

fn host_name() -> String {
    let mut name = [0u8; 256];
    // SAFETY: gethostname writes at most `name.len()` bytes into the buffer we own.
    if unsafe { libc::gethostname(name.as_mut_ptr().cast(), name.len()) } != 0 {
        return "ringmq".into();
    }
    let end = name.iter().position(|&byte| byte == 0).unwrap_or(name.len());
    String::from_utf8_lossy(&name[..end]).into_owned()
}

pub fn start(config: &Config, stop: Arc<AtomicBool>) -> Result<Broker, StartError> {
    config.check_exposure()?;
    let mut limits = config.limits()?;
    if config.memory_max_bytes == MemoryBound::Auto {
        limits.memory_bytes_max = memory::available_bytes().map(|available| available / 4 * 3);
        match limits.memory_bytes_max {
            Some(bytes) => tracing::info!(memory_max_bytes = bytes, "memory bound: three quarters of the memory available"),
            None => tracing::warn!("memory bound off: the available memory is unknown (set --memory-max-bytes)"),
        }
    }
    let cpus = config.cpus(&allowed_cpus())?;
    let (listen_backlog, steering) = (config.listen_backlog.max(1), config.steer);
    let auth = Arc::new(reload::load_authenticator(config)?);
    let certificates_name_users = config.tls_username_from != crate::transport::tls::UsernameFrom::Off;
    if config.acl_file.is_some() && config.password_file.is_none() && !certificates_name_users {
        tracing::warn!(
            "--acl-file without --password-file: user names are not verified, so a client can claim any user's rules; \
             only the anonymous section and patterns on client ids are meaningful"
        );
    }
    let auth_slot = AuthSlot::new(auth.clone());
    let limits_slot = LimitsSlot::new(limits.clone());
    let tls_slot = TlsSlot::load(config.tls_options()?)?;
    let (data_dir, persist_plan) =
        persistence::prepare(config.data_dir.as_deref(), config.durability, config.fsync_interval_ms, limits.session, cpus.len())?;

    uring_probe::check()?;
    let memlock = memlock_limit_bytes();
    if memlock < GLOMMIO_MIN_MEMLOCK_BYTES {
        return Err(StartError::MemLock { limit_kib: memlock / 1024, needed_kib: GLOMMIO_MIN_MEMLOCK_BYTES / 1024 });
    }
    let io_memory_bytes = config.io_memory_kib * 1024;
    let wanted = (io_memory_bytes * cpus.len()) as u64;
    if memlock < wanted {
        tracing::warn!(
            limit_kib = memlock / 1024,
            wanted_kib = wanted / 1024,
            "locked-memory limit below shards x --io-memory-kib: io_uring buffers stay unregistered \
             (sockets work; raise `ulimit -l` or lower --io-memory-kib to silence this)"
        );
    }

    // Each listener's address is proved free and locked before any shard binds it.
    let mut port_locks = Vec::new();
    let mut listeners: Vec<ListenerSpec> = Vec::new();
    for mut spec in config.all_listeners() {
        let (lock, addr) = reserve_address(spec.addr)?;
        port_locks.push(lock);
        spec.addr = addr;
        listeners.push(spec);
    }
    let local_addrs: Vec<SocketAddr> = listeners.iter().map(|spec| spec.addr).collect();
    let shard_count = cpus.len();
    let cluster = gateway_settings(config, local_addrs.first().map_or(0, SocketAddr::port));
    if let Some(settings) = &cluster {
        crate::cluster::gateway::check(settings)?;
    }
    // The gateway starts first (it stops with the stop flag if a shard then fails); each
    // shard takes its ends of the queues below.
    let (mut shard_inboxes, to_gateway, cluster_thread) = match cluster {
        Some(settings) => {
            let channels = crate::cluster::port::Channels::new(shard_count);
            let thread = crate::cluster::gateway::start(settings, channels.gateway_inbox, channels.to_shards, stop.clone())?;
            (Some(channels.shard_inboxes.into_iter()), Some(channels.to_gateway), Some(thread))
        }
        None => (None, None, None),
    };
    // The board feeds the metrics endpoint and shard 0's `$SYS/broker` totals.
    let metrics_board =
        (config.metrics_listen.is_some() || config.sys_interval_s > 0).then(|| crate::metrics::SnapshotBoard::new(shard_count));
    let admin_desk = config.metrics_listen.map(|_| crate::admin::AdminDesk::new(shard_count));
    let (metrics_addr, metrics_thread) = match (config.metrics_listen, &metrics_board, &admin_desk) {
        (Some(addr), Some(board), Some(desk)) => {
            let admin = crate::metrics::server::AdminAccess { desk: desk.clone(), token: config.admin_token.clone() };
            let (bound, thread) = crate::metrics::server::serve(addr, board.clone(), admin, stop.clone())
                .map_err(|source| StartError::Bind { addr, source })?;
            (Some(bound), Some(thread))
        }
        _ => (None, None),
    };
    let mesh = mesh::new_mesh(shard_count, config.mesh_channel_batches);
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), StartError>>();
    let nudger = Nudger::new(shard_count);
    let nudging = {
        let nudger = nudger.clone();
        std::thread::Builder::new()
            .name("ringmq-nudge".into())
            .spawn(move || nudger.run())
            .map_err(|error| StartError::Executor(error.to_string()))?
    };
    let budget = (config.max_connections > 0).then(|| ConnectionBudget::new(config.max_connections));
    let gauge = MemoryGauge::new();
    let sampling = match limits.memory_bytes_max {
        Some(_) if gauge.needs_sampling() => {
            let gauge = gauge.clone();
            Some(
                std::thread::Builder::new()
                    .name("ringmq-memory".into())
                    .spawn(move || gauge.run())
                    .map_err(|error| StartError::Executor(error.to_string()))?,
            )
        }
        _ => None,
    };
    let mut handles = Vec::with_capacity(shard_count);
    for (index, &cpu) in cpus.iter().enumerate() {
        let nudger = nudger.clone();
        let mesh = mesh.clone();
        let limits = limits.clone();
        let auth = auth.clone();
        let stop = stop.clone();
        let ready = ready_tx.clone();
        let budget = budget.clone();
        let listeners = listeners.clone();
        let gauge = gauge.clone();
        let auth_slot = auth_slot.clone();
        let tls_slot = tls_slot.clone();
        let limits_slot = limits_slot.clone();
        let persist_plan = persist_plan.clone();
        let metrics_board = metrics_board.clone();
        let admin_desk = admin_desk.clone();
        let connection_rate_max = config.connection_rate_max;
        let cluster = to_gateway
            .clone()
            .zip(shard_inboxes.as_mut().and_then(Iterator::next))
            .map(|(to_gateway, inbox)| cluster::ShardClusterEnds { to_gateway, inbox, durable: config.cluster_durable });
        let handle = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&format!("ringmq-shard-{index}"))
            .io_memory(io_memory_bytes)
            .ring_depth(config.ring_depth)
            .preempt_timer(PREEMPT_INTERVAL)
            // Password hashing runs here: any CPU, so it never competes with a shard's own.
            .blocking_thread_pool_placement(PoolPlacement::Unbound(1))
            .spawn(move || {
                let (listen_backlog, steering) = (listen_backlog, steering);
                shard_main(ShardParams {
                    index,
                    shard_count,
                    listeners,
                    limits,
                    listen_backlog,
                    steering,
                    auth,
                    mesh,
                    stop,
                    ready,
                    nudger,
                    budget,
                    connection_rate_max,
                    gauge,
                    auth_slot,
                    tls_slot,
                    limits_slot,
                    persist_plan,
                    metrics_board,
                    admin_desk,
                    cluster,
                })
            })
            .map_err(|error| StartError::Executor(error.to_string()))?;
        handles.push(handle);
    }
    drop(ready_tx);
    drop(to_gateway);
    let mut failure = None;
    for _ in 0..shard_count {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(error)) => failure = failure.or(Some(error)),
            Err(_) => failure = failure.or(Some(StartError::Executor("a shard exited during start-up".into()))),
        }
    }
    if let Some(error) = failure {
        stop.store(true, Ordering::SeqCst);
        for handle in handles {
            let _ = handle.join();
        }
        nudger.finish();
        let _ = nudging.join();
        gauge.finish();
        if let Some(sampling) = sampling {
            let _ = sampling.join();
        }
        if let Some(cluster) = cluster_thread {
            let _ = cluster.join();
        }
        return Err(error);
    }
    let tls_watch = tls_slot.clone().watch(stop.clone()).map_err(|error| StartError::Executor(error.to_string()))?;
    Ok(Broker {
        local_addr: local_addrs[0],
        local_addrs,
        shard_count,
        handles,
        nudger,
        nudging: Some(nudging),
        gauge,
        sampling,
        reloadable: Reloadable { auth: auth_slot, tls: tls_slot, limits: limits_slot },
        tls_watch,
        _port_locks: port_locks,
        _data_dir: data_dir,
        metrics_addr,
        metrics_thread,
        cluster_thread,
    })
}

/// Has the shard read the latest resident-memory sample every `memory::SAMPLE_PERIOD`,
/// so it notices memory falling while no PUBLISH is read (the shard also reads it after
/// every 1 MiB of input, since a busy shard's timers run late).
async fn follow_memory(shard: Rc<RefCell<Shard>>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        sleep(memory::SAMPLE_PERIOD).await;
        shard.borrow_mut().refresh_memory();
    }
}

struct ShardParams {
    /// This executor's place in the start order (the mesh numbers shards its own way).
    index: usize,
    shard_count: usize,
    /// Every listener, its port resolved.
    listeners: Vec<ListenerSpec>,
    limits: ShardLimits,
    listen_backlog: i32,
    steering: Steering,
    auth: Arc<Authenticator>,
    mesh: Mesh,
    stop: Arc<AtomicBool>,
    ready: mpsc::Sender<Result<(), StartError>>,
    nudger: Arc<Nudger>,
    /// `--max-connections`, one budget for every shard.
    budget: Option<Arc<ConnectionBudget>>,
    /// `--connection-rate-max` for the listener, shared evenly by the shards.
    connection_rate_max: u32,
    gauge: Arc<MemoryGauge>,
    auth_slot: Arc<AuthSlot>,
    tls_slot: Arc<TlsSlot>,
    /// Limits SIGHUP changes live.
    limits_slot: Arc<LimitsSlot>,
    persist_plan: persistence::PersistPlan,
    /// Where the shard leaves its metrics snapshot (`--metrics-listen`).
    metrics_board: Option<Arc<crate::metrics::SnapshotBoard>>,
    /// Where the admin API leaves queries for this shard.
    admin_desk: Option<Arc<crate::admin::AdminDesk>>,
    /// With `--cluster`: this shard's ends of the gateway's queues.
    cluster: Option<cluster::ShardClusterEnds>,
}

async fn shard_main(params: ShardParams) {
    let ShardParams {
        index,
        shard_count,
        listeners,
        limits,
        listen_backlog,
        steering,
        auth,
        mesh,
        stop,
        ready,
        nudger,
        budget,
        connection_rate_max,
        gauge,
        auth_slot,
        tls_slot,
        limits_slot,
        persist_plan,
        metrics_board,
        admin_desk,
        cluster,
    } = params;
    // First of all, so that even the join below cannot sleep forever (see `nudge.rs`).
    glommio::spawn_local(nudger.heartbeat(index)).detach();
    // A stop request ends a join that has not finished, rather than being ignored.
    let joined = futures_lite::future::or(mesh::join(mesh), async {
        while !stop.load(Ordering::Relaxed) {
            sleep(TICK).await;
        }
        None
    })
    .await;
    let Some(joined) = joined else {
        let _ = ready.send(Err(StartError::Executor("joining the shard mesh failed or was stopped".into())));
        return;
    };
    let id = joined.shard_id();
    let mut bound = Vec::with_capacity(listeners.len());
    for spec in listeners {
        match listen(spec.addr, listen_backlog, steering, shard_count) {
            Ok(listener) => bound.push((listener, spec)),
            Err(source) => {
                let _ = ready.send(Err(StartError::Bind { addr: spec.addr, source }));
                return;
            }
        }
    }
    let shard = Rc::new(RefCell::new(Shard::new(id, shard_count, limits, auth, Instant::now())));
    shard.borrow_mut().restore_retained(&persist_plan.retained);
    // Sessions go in before the mesh serves or a listener accepts: every shard knows every
    // restored subscription before any publish is taken. Shard 0 also writes the retained log.
    let writing = persist_plan.session_logs.clone().map(|sessions| {
        let mut shard_mut = shard.borrow_mut();
        shard_mut.enable_durability(persist_plan.sync);
        shard_mut.keep_session_log(sessions.epochs.clone());
        shard_mut.restore_sessions(&persist_plan.sessions, &sessions.ended, Instant::now());
        let retained = persist_plan.retained_log.clone().filter(|_| id.0 == 0);
        if retained.is_some() {
            shard_mut.keep_retained_journal();
        }
        drop(shard_mut);
        let finish = Rc::new(Latch::default());
        let plan = persistence::WriterPlan { index: id.0, sessions, retained, sync: persist_plan.sync };
        (glommio::spawn_local(persistence::write_logs(shard.clone(), plan, finish.clone())), finish)
    });
    drop(persist_plan);

    // After the restore: the gateway learns every restored filter when the shard attaches.
    if let Some(ends) = cluster {
        cluster::serve(&shard, ends);
    }
    joined.serve(&shard, shard_count);
    let stopping = Rc::new(Latch::default());
    if let Some(budget) = budget {
        shard.borrow_mut().set_connection_budget(budget);
    }
    let accepts_per_s = (connection_rate_max > 0).then(|| f64::from(connection_rate_max) / shard_count as f64);
    for (listener, spec) in bound {
        let stop_accepting = {
            let stopping = stopping.clone();
            async move { stopping.wait().await }
        };
        let tls = spec.transport.is_tls().then(|| TlsSource(tls_slot.clone()));
        let context = ListenerContext { transport: spec.transport, proxy_protocol: spec.proxy_protocol, tls };
        glommio::spawn_local(accept_loop(shard.clone(), listener, context, accepts_per_s, stop_accepting)).detach();
    }
    if shard.borrow().limits().memory_bytes_max.is_some() {
        shard.borrow_mut().set_memory_source(gauge.resident());
        glommio::spawn_local(follow_memory(shard.clone(), stop.clone())).detach();
    }
    let _ = ready.send(Ok(()));

    let mut auth_generation = auth_slot.generation();
    let mut limits_generation = limits_slot.generation();
    let take_snapshot = |shard: &Shard| {
        if let Some(board) = &metrics_board {
            board.store(id.0, crate::metrics::ShardSnapshot { counters: shard.counters.clone(), gauges: shard.gauges() });
        }
    };
    take_snapshot(&shard.borrow());
    let mut next_snapshot = Instant::now() + crate::metrics::SNAPSHOT_PERIOD;
    // Shard 0 publishes the broker-wide `$SYS/broker/...` totals from every shard's snapshot.
    let sys_interval = shard.borrow().limits().sys_interval.filter(|_| id.0 == 0);
    let mut broker_status = crate::metrics::sys::BrokerStatus::new(Instant::now());
    let mut next_status = sys_interval.map(|interval| Instant::now() + interval);
    while !stop.load(Ordering::Relaxed) {
        sleep(TICK).await;
        let now = Instant::now();
        if metrics_board.is_some() && now >= next_snapshot {
            next_snapshot += crate::metrics::SNAPSHOT_PERIOD;
            take_snapshot(&shard.borrow());
        }
        if let Some(desk) = &admin_desk {
            for (query, answer) in desk.take(id.0) {
                let _ = answer.send(shard.borrow_mut().admin(&query, now));
            }
        }
        if let (Some(due), Some(interval), Some(board)) = (next_status, sys_interval, &metrics_board)
            && now >= due
        {
            next_status = Some(now + interval);
            let topics = broker_status.report(&board.read(), now);
            shard.borrow_mut().publish_broker_status(&topics, now);
        }
        if auth_slot.generation() != auth_generation {
            auth_generation = auth_slot.generation();
            shard.borrow_mut().replace_authenticator(auth_slot.current());
        }
        if limits_slot.generation() != limits_generation {
            limits_generation = limits_slot.generation();
            shard.borrow_mut().take_live_limits(&limits_slot.current());
        }
        shard.borrow_mut().tick(Instant::now());
    }
    stopping.set();
    shard.borrow_mut().begin_shutdown();
    sleep(SHUTDOWN_GRACE).await;
    if let Some((writer, finish)) = writing {
        finish.set();
        writer.await;
    }
    let counters = shard.borrow().counters.clone();
    tracing::info!(shard = id.0, ?counters, "shard stopped");
}
