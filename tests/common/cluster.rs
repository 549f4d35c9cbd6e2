//! The cluster harness: real `nats-server` processes routed into one NATS cluster, one per
//! loopback address (127.0.0.1, .2, .3), and a ringmq node beside each, connected to its
//! own server. Without `nats-server` (on PATH, or named by RINGMQ_NATS_SERVER) the tests
//! say SKIPPED, and fail under CI, which installs it (.ci/run).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{Broker, RawClient, rand_suffix};
use ringmq::protocol::{Packet, QoS};

pub struct NatsServer {
    child: Child,
    pub client_addr: SocketAddr,
    /// Its JetStream store, removed with it.
    store_dir: PathBuf,
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.store_dir);
    }
}

/// Dropped nodes first: a node that outlives its NATS server only logs reconnects.
pub struct Cluster {
    pub nodes: Vec<Broker>,
    pub nats: Vec<NatsServer>,
}

/// `nats-server`, or `None` after saying SKIPPED (a failure under CI).
pub fn nats_server() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("RINGMQ_NATS_SERVER") {
        return Some(path.into());
    }
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("nats-server"))
        .find(|path| path.is_file());
    if found.is_none() {
        eprintln!("SKIPPED: nats-server not found (apt-get install nats-server, or set RINGMQ_NATS_SERVER)");
        assert!(std::env::var_os("CI").is_none(), "CI must have nats-server");
    }
    found
}

fn free_port(ip: &str) -> u16 {
    TcpListener::bind((ip, 0)).expect("a free port").local_addr().expect("its address").port()
}

fn wait_until_accepting(addr: SocketAddr, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return;
        }
        assert!(child.try_wait().expect("try_wait").is_none(), "nats-server on {addr} exited at start");
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("nats-server on {addr} did not start");
}

impl Cluster {
    /// `count` NATS servers routed together and a ringmq node (`extra` flags) beside each.
    /// `None`: nats-server is missing (the test is skipped).
    pub fn start(count: usize, extra: &[&str]) -> Option<Cluster> {
        Self::start_with_nodes(count, count, extra)
    }

    /// `servers` NATS servers (JetStream on, one cluster) and ringmq nodes beside the first
    /// `nodes` of them; `add_node` starts the others later.
    pub fn start_with_nodes(count: usize, nodes: usize, extra: &[&str]) -> Option<Cluster> {
        let binary = nats_server()?;
        let ips: Vec<String> = (1..=count).map(|i| format!("127.0.0.{i}")).collect();
        let route_ports: Vec<u16> = ips.iter().map(|ip| free_port(ip)).collect();
        let routes: Vec<String> = ips.iter().zip(&route_ports).map(|(ip, port)| format!("nats-route://{ip}:{port}")).collect();
        let nats_cluster_name = format!("ringmq-test-{}", rand_suffix());
        let mut nats = Vec::new();
        for (index, ip) in ips.iter().enumerate() {
            let port = free_port(ip);
            let store_dir = std::env::temp_dir().join(format!("ringmq-nats-{}-{}", std::process::id(), rand_suffix()));
            let mut child = Command::new(&binary)
                .args(["--jetstream", "--store_dir"])
                .arg(&store_dir)
                .args(["--addr", ip, "--port", &port.to_string()])
                .args(["--server_name", &format!("n{}", index + 1)])
                .args(["--cluster_name", &nats_cluster_name])
                .args(["--cluster", &format!("nats://{ip}:{}", route_ports[index])])
                .args(["--routes", &routes.join(",")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start nats-server");
            let client_addr: SocketAddr = format!("{ip}:{port}").parse().expect("an address");
            wait_until_accepting(client_addr, &mut child);
            nats.push(NatsServer { child, client_addr, store_dir });
        }
        let mut cluster = Cluster { nodes: Vec::new(), nats };
        for index in 0..nodes {
            cluster.add_node(index, extra);
        }
        Some(cluster)
    }

    /// Starts a ringmq node beside NATS server `server` (its index among the nodes is the
    /// one returned), given every server's URL as a production node would be: one that
    /// loses its server before the NATS cluster told it of the others still finds them.
    pub fn add_node(&mut self, server: usize, extra: &[&str]) -> usize {
        let addr = self.nats[server].client_addr;
        let listen = format!("{}:0", addr.ip());
        let urls: Vec<String> = self.nats.iter().map(|nats| format!("nats://{}", nats.client_addr)).collect();
        let node_id = format!("node{}", self.nodes.len() + 1);
        let mut args = vec!["--listen", &listen, "--node-id", &node_id];
        for url in &urls {
            args.extend(["--cluster", url.as_str()]);
        }
        args.extend_from_slice(extra);
        self.nodes.push(Broker::start(&args));
        self.nodes.len() - 1
    }

    /// Reads the wills bucket (as a NATS client of the first server) until it holds a will
    /// for each client id in `present` and none for those in `absent`, or panics after a
    /// while: a node writes wills a little after the CONNECT (and deletes them a little
    /// after the connection ends).
    pub fn wait_for_wills(&self, present: &[&str], absent: &[&str]) {
        self.wait_for_client_keys("ringmq_wills", present, absent);
    }

    /// The same for the session records bucket: a node writes a persistent session's
    /// record within a tick of its CONNECT or SUBSCRIBE.
    pub fn wait_for_session_records(&self, present: &[&str], absent: &[&str]) {
        self.wait_for_client_keys("ringmq_sessions", present, absent);
    }

    /// Reads `bucket`, whose keys end in a client id's key, until it holds keys for each
    /// of `present` and none for `absent`.
    fn wait_for_client_keys(&self, bucket: &str, present: &[&str], absent: &[&str]) {
        let suffix = |client_id: &str| format!(".{}", ringmq::cluster::bucket::key_of(client_id.as_bytes()).expect("a short id"));
        let (present, absent): (Vec<String>, Vec<String>) =
            (present.iter().map(|id| suffix(id)).collect(), absent.iter().map(|id| suffix(id)).collect());
        let url = format!("nats://{}", self.nats[0].client_addr);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
        runtime.block_on(async {
            let jetstream = async_nats::jetstream::new(async_nats::connect(url).await.expect("connect to NATS"));
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let mut keys = Vec::new();
                if let Ok(store) = jetstream.get_key_value(bucket).await
                    && let Some(listing) = list_keys(&store).await
                {
                    keys = listing;
                }
                let holds = |wanted: &String| keys.iter().any(|key| key.ends_with(wanted.as_str()));
                if present.iter().all(holds) && !absent.iter().any(holds) {
                    return;
                }
                assert!(Instant::now() < deadline, "{bucket} never held {present:?} without {absent:?}: {keys:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }

    /// The keys (`<origin hex>.<client key>`) of every session record `client_id` has.
    pub fn record_keys(&self, client_id: &str) -> Vec<String> {
        let suffix = format!(".{}", ringmq::cluster::bucket::key_of(client_id.as_bytes()).expect("a short id"));
        let url = format!("nats://{}", self.nats[0].client_addr);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
        runtime.block_on(async {
            let jetstream = async_nats::jetstream::new(async_nats::connect(url).await.expect("connect to NATS"));
            let store = jetstream.get_key_value("ringmq_sessions").await.expect("the records bucket");
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Some(keys) = list_keys(&store).await {
                    return keys.into_iter().filter(|key| key.ends_with(&suffix)).collect();
                }
                assert!(Instant::now() < deadline, "the records bucket's keys could not be listed");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    }

    /// Waits until the records bucket holds nothing under any of `keys`, not even a delete
    /// marker (the sweep purges a gone process's records with their history), or panics
    /// after a while.
    pub fn wait_for_records_swept(&self, keys: &[String]) {
        let url = format!("nats://{}", self.nats[0].client_addr);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
        runtime.block_on(async {
            let jetstream = async_nats::jetstream::new(async_nats::connect(url).await.expect("connect to NATS"));
            let store = jetstream.get_key_value("ringmq_sessions").await.expect("the records bucket");
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let mut left = Vec::new();
                for key in keys {
                    if !matches!(store.entry(key.clone()).await, Ok(None)) {
                        left.push(key.clone());
                    }
                }
                if left.is_empty() {
                    return;
                }
                assert!(Instant::now() < deadline, "records never swept: {left:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
    }

    /// Waits until `client_id`'s session record carries a checkpoint (its first 8 bytes,
    /// Unix ms) past `after_ms`, and returns it (or panics after a while).
    pub fn wait_for_record_checkpoint(&self, client_id: &str, after_ms: u64) -> u64 {
        let suffix = format!(".{}", ringmq::cluster::bucket::key_of(client_id.as_bytes()).expect("a short id"));
        let url = format!("nats://{}", self.nats[0].client_addr);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
        runtime.block_on(async {
            let jetstream = async_nats::jetstream::new(async_nats::connect(url).await.expect("connect to NATS"));
            let deadline = Instant::now() + Duration::from_secs(40);
            loop {
                assert!(Instant::now() < deadline, "{client_id}'s record never had a checkpoint past {after_ms}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                let Ok(store) = jetstream.get_key_value("ringmq_sessions").await else { continue };
                let Some(keys) = list_keys(&store).await else { continue };
                for key in keys.iter().filter(|key| key.ends_with(&suffix)) {
                    if let Ok(Some(value)) = store.get(key).await
                        && let Some(checkpoint) = value.get(..8)
                    {
                        let checkpoint_ms = u64::from_le_bytes(checkpoint.try_into().expect("8 bytes"));
                        if checkpoint_ms > after_ms {
                            return checkpoint_ms;
                        }
                    }
                }
            }
        })
    }

    /// How many messages the JetStream stream `stream` holds, if it exists.
    pub fn stream_messages(&self, stream: &str) -> Option<u64> {
        let url = format!("nats://{}", self.nats[0].client_addr);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
        runtime.block_on(async {
            let jetstream = async_nats::jetstream::new(async_nats::connect(url).await.expect("connect to NATS"));
            let mut handle = jetstream.get_stream(stream).await.ok()?;
            handle.info().await.ok().map(|info| info.state.messages)
        })
    }

    /// Waits until the stream `stream` holds at least `count` messages (or panics after
    /// a while): `--cluster-durable` stores each QoS 1/2 publish there.
    pub fn wait_for_stream_messages(&self, stream: &str, count: u64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let held = self.stream_messages(stream);
            if held.is_some_and(|held| held >= count) {
                return;
            }
            assert!(Instant::now() < deadline, "{stream} never held {count} messages (holds {held:?})");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Publishes QoS 1 probes (to a topic of their own) on node `node` until one lands in
    /// the stream `stream`: a stream just made takes messages from a node only once NATS
    /// has told that node's server where the stream listens (before, they are counted in
    /// `durable_store_failures`). Returns how many messages the stream then holds.
    pub fn wait_for_durable_store(&self, node: usize, stream: &str) -> u64 {
        let mut publisher = self.nodes[node].client(&format!("durable-probe-{}", rand_suffix()), true);
        let deadline = Instant::now() + Duration::from_secs(30);
        for id in 1u16.. {
            assert!(Instant::now() < deadline, "node {node}'s messages never reached {stream}");
            let before = self.stream_messages(stream).unwrap_or(0);
            publisher.publish("ringmq-test/durable-probe", b"probe", QoS::AtLeastOnce, false, id);
            let landed_by = Instant::now() + Duration::from_secs(1);
            while Instant::now() < landed_by {
                if let Some(held) = self.stream_messages(stream).filter(|&held| held > before) {
                    publisher.disconnect();
                    return held;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        unreachable!("the deadline ends the loop")
    }

    /// Publishes `probe_topic` from node `from` until `subscriber` (on another node, its
    /// subscription covering the topic) receives one, then drains the probes: the route
    /// from `from` to the subscriber's node exists. Cross-node routes are eventual (NATS
    /// propagates a new subscription to every server), so tests wait for them this way.
    pub fn wait_for_route(&self, from: usize, probe_topic: &str, subscriber: &mut RawClient) {
        let mut publisher = self.nodes[from].client(&format!("probe-{}", rand_suffix()), true);
        // Generous: a node whose NATS server went reconnects with a growing back-off.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(Instant::now() < deadline, "no route from node {from} for {probe_topic}");
            publisher.publish(probe_topic, b"probe", QoS::AtMostOnce, false, 0);
            if let Some(Packet::Publish(publish)) = subscriber.try_recv(Duration::from_millis(50)) {
                assert_eq!(&publish.topic[..], probe_topic.as_bytes(), "only probes so far");
                subscriber.ack(&publish);
                break;
            }
        }
        // Probes still on their way.
        while let Some(Packet::Publish(publish)) = subscriber.try_recv(Duration::from_millis(300)) {
            assert_eq!(&publish.topic[..], probe_topic.as_bytes(), "only probes so far");
            subscriber.ack(&publish);
        }
        publisher.disconnect();
    }
}

/// Every key `store` holds, or None if the listing failed or did not end within 5 s (a
/// listing is a JetStream consumer, which was seen to wait forever under CI load; callers
/// list again until their own deadline).
async fn list_keys(store: &async_nats::jetstream::kv::Store) -> Option<Vec<String>> {
    use futures_util::StreamExt;
    let listing = async {
        let keys = store.keys().await.ok()?;
        Some(keys.filter_map(|key| async move { key.ok() }).collect::<Vec<String>>().await)
    };
    tokio::time::timeout(Duration::from_secs(5), listing).await.ok().flatten()
}
