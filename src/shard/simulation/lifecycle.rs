//! Wills, shared groups and session expiry across shards, with deterministic time.

use super::*;

/// A will and a shared group across shards, over random interleavings: the will of a
/// connection that ends without DISCONNECT reaches a subscriber on another shard exactly
/// once, and each message to a `$share` group reaches exactly one member, wherever the
/// members and the publisher are.
fn run_will_and_shared_scenario(seed: u64) {
    let shard_count = 3;
    let mut sim = Sim::new(shard_count, seed);
    let pick = |sim: &mut Sim| sim.rng.below(shard_count);
    let watcher_shard = pick(&mut sim);
    let watcher = sim.connect(watcher_shard, "watcher", true);
    let member_shards: Vec<usize> = (0..3).map(|_| pick(&mut sim)).collect();
    let members: Vec<Rc<Link>> =
        member_shards.iter().enumerate().map(|(i, &shard)| sim.connect(shard, &format!("member-{i}"), true)).collect();
    sim.settle();
    sim.packet(watcher_shard, &watcher, subscribe_packet("wills/#"));
    for (link, &shard) in members.iter().zip(&member_shards) {
        sim.packet(shard, link, subscribe_packet("$share/g/jobs/+"));
    }
    sim.settle();
    for link in members.iter().chain(std::iter::once(&watcher)) {
        let _ = read_packets(link);
    }

    // A client with a will, on any shard, that goes away without DISCONNECT.
    let mortal_shard = pick(&mut sim);
    let link = sim.shards[mortal_shard].new_link();
    let will = crate::protocol::Will {
        topic: Bytes::from_static(b"wills/mortal"),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Default::default(),
    };
    let connect = Connect { will: Some(will), ..Connect::v311(Bytes::from_static(b"mortal")) };
    sim.shards[mortal_shard].begin_connect(&link, Box::new(connect), sim.now);
    sim.pump();
    sim.random_steps(5);
    sim.settle();
    sim.close(mortal_shard, &link);

    // Messages to the group from a publisher on any shard, interleaved with the will.
    let publisher_shard = pick(&mut sim);
    let publisher = sim.connect(publisher_shard, "jobs-publisher", true);
    sim.settle();
    let messages = 30u32;
    for n in 0..messages {
        let publish = Publish::at_most_once(Bytes::from_static(b"jobs/x"), Bytes::copy_from_slice(&n.to_be_bytes()));
        sim.packet(publisher_shard, &publisher, Packet::Publish(publish));
        sim.random_steps(3);
    }
    sim.settle();

    let wills = read_publishes(&watcher);
    assert!(
        matches!(&wills[..], [publish] if &publish.payload[..] == b"gone"),
        "seed {seed}: the will arrives once across shards: {wills:?}"
    );
    let mut seen = vec![0u32; messages as usize];
    for link in &members {
        for publish in read_publishes(link) {
            let n = u32::from_be_bytes(publish.payload[..4].try_into().expect("4 bytes"));
            seen[n as usize] += 1;
        }
    }
    assert!(seen.iter().all(|&count| count == 1), "seed {seed}: each message to exactly one member: {seen:?}");
}

#[test]
fn wills_and_shared_groups_across_shards_deliver_exactly_once() {
    let seeds = seeds_or(1..=200);
    for seed in seeds {
        run_will_and_shared_scenario(seed);
    }
}

/// A 5.0 client whose connection stays: Session Expiry Interval 10 s, a will delayed 5 s.
fn sleeper_connect(clean_start: bool, with_will: bool) -> Connect {
    let will = crate::protocol::Will {
        topic: Bytes::from_static(b"wills/sleeper"),
        payload: Bytes::from_static(b"asleep"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Properties { will_delay_interval: Some(5), ..Properties::default() },
    };
    let mut connect = Connect { clean_start, will: with_will.then_some(will), ..Connect::v5(Bytes::from_static(b"sleeper")) };
    connect.properties.session_expiry_interval = Some(10);
    connect
}

/// Moves the clock one second at a time, ticking every shard, with mesh traffic between.
fn advance(sim: &mut Sim, seconds: u64) {
    for _ in 0..seconds {
        sim.now += std::time::Duration::from_secs(1);
        for shard in 0..sim.shards.len() {
            sim.shards[shard].tick(sim.now);
            sim.pump();
            sim.random_steps(2);
        }
    }
    sim.settle();
}

/// Reads, acknowledging, until the session has nothing more to send; the QoS 1 payloads.
fn drain_acknowledging(sim: &mut Sim, shard: usize, link: &Link, seed: u64) -> (Option<bool>, Vec<u32>) {
    let (mut session_present, mut payloads) = (None, Vec::new());
    loop {
        sim.settle();
        let packets = read_packets_as(link, ProtocolVersion::V5);
        if packets.is_empty() {
            return (session_present, payloads);
        }
        for packet in packets {
            match packet {
                Packet::ConnAck(connack) => {
                    assert_eq!(connack.code, 0, "seed {seed}");
                    session_present = Some(connack.session_present);
                }
                Packet::Publish(publish) => {
                    payloads.push(u32::from_be_bytes(publish.payload[..4].try_into().expect("4 bytes")));
                    sim.packet(shard, link, Packet::PubAck(Ack::new(publish.packet_id.expect("qos 1"))));
                }
                _ => {}
            }
        }
    }
}

/// A 5.0 session with an expiry and a delayed will goes offline while QoS 1 messages queue
/// for it; the clock moves on in ticks on every shard; the client comes back on any shard
/// after 0 to 15 seconds. Before expiry the session is present and every queued message
/// arrives once, in order; after it, nothing is left. Either way the will went out exactly
/// once if its delay passed while offline, never otherwise.
fn run_session_expiry_scenario(seed: u64) {
    let shard_count = 3;
    let mut sim = Sim::new(shard_count, seed);
    let pick = |sim: &mut Sim| sim.rng.below(shard_count);
    let watcher_shard = pick(&mut sim);
    let watcher = sim.connect(watcher_shard, "watcher", true);
    sim.settle();
    sim.packet(watcher_shard, &watcher, subscribe_packet("wills/#"));

    let home = pick(&mut sim);
    let sleeper = sim.shards[home].new_link();
    sim.shards[home].begin_connect(&sleeper, Box::new(sleeper_connect(true, true)), sim.now);
    sim.pump();
    sim.settle();
    sim.packet(home, &sleeper, subscribe_packet_at("news/#", QoS::AtLeastOnce));
    sim.settle();
    let _ = read_packets_as(&sleeper, ProtocolVersion::V5);
    sim.random_steps(3);
    sim.close(home, &sleeper);

    let publisher_shard = pick(&mut sim);
    let publisher = sim.connect(publisher_shard, "news-publisher", true);
    sim.settle();
    let messages = 20u32;
    for n in 0..messages {
        let publish = Publish {
            qos: QoS::AtLeastOnce,
            packet_id: PacketId::new(n as u16 + 1),
            ..Publish::at_most_once(Bytes::from_static(b"news/today"), Bytes::copy_from_slice(&n.to_be_bytes()))
        };
        sim.packet(publisher_shard, &publisher, Packet::Publish(publish));
        sim.random_steps(3);
    }
    sim.settle();

    let away_s = sim.rng.below(16) as u64;
    advance(&mut sim, away_s);
    let back = pick(&mut sim);
    let returned = sim.shards[back].new_link();
    sim.shards[back].begin_connect(&returned, Box::new(sleeper_connect(false, false)), sim.now);
    sim.pump();
    let (session_present, payloads) = drain_acknowledging(&mut sim, back, &returned, seed);
    // Long after, nothing else may turn up (a will cancelled by the return stays cancelled).
    advance(&mut sim, 20);

    let expired = away_s >= 10;
    assert_eq!(session_present, Some(!expired), "seed {seed}: back after {away_s} s");
    let expected: Vec<u32> = if expired { Vec::new() } else { (0..messages).collect() };
    assert_eq!(payloads, expected, "seed {seed}: back after {away_s} s on shard {back} (home {home})");
    let wills = read_publishes(&watcher).len();
    assert_eq!(wills, usize::from(away_s >= 5), "seed {seed}: wills after {away_s} s away");
}

#[test]
fn session_expiry_and_will_delay_across_shards_follow_the_clock() {
    let seeds = seeds_or(1..=200);
    for seed in seeds {
        run_session_expiry_scenario(seed);
    }
}

/// Found by the `shard` fuzz target: a client returns (on another shard) to an offline
/// session just before it expires, and the expiry passes while the session is on its way
/// to the new shard. The client came back in time: the session must arrive, not expire in
/// transit (which also broke the "a moving session stays" invariant).
#[test]
fn a_session_claimed_in_time_does_not_expire_on_its_way_to_the_new_shard() {
    let mut sim = Sim::new(2, 7);
    // The session lives on shard 0 and expires 3 s after its connection goes.
    let first = sim.shards[0].new_link();
    let mut connect = Connect { clean_start: true, ..Connect::v5(Bytes::from_static(b"returning")) };
    connect.properties.session_expiry_interval = Some(3);
    sim.shards[0].begin_connect(&first, Box::new(connect.clone()), sim.now);
    sim.pump();
    sim.settle();
    sim.packet(0, &first, subscribe_packet("t"));
    sim.settle();
    sim.close(0, &first);
    sim.settle();
    // Back just before the expiry, on shard 1; the move is still in flight when it passes.
    sim.now += std::time::Duration::from_millis(2900);
    let back = sim.shards[1].new_link();
    let returning = Connect { clean_start: false, ..connect };
    sim.shards[1].begin_connect(&back, Box::new(returning), sim.now);
    sim.pump();
    for _ in 0..3 {
        // One hop at a time, ticking the old shard past the expiry in between.
        sim.step();
        sim.now += std::time::Duration::from_millis(200);
        sim.shards[0].tick(sim.now);
        sim.pump();
    }
    sim.settle();
    let connack = read_packets_as(&back, ProtocolVersion::V5).into_iter().find_map(|packet| match packet {
        Packet::ConnAck(connack) => Some(connack),
        _ => None,
    });
    assert!(connack.is_some_and(|connack| connack.code == 0 && connack.session_present), "the session arrived");
    assert_eq!(sim.shards.iter().map(Shard::sessions).sum::<usize>(), 1);
}
