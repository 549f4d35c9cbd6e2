//! Sessions moving between shards: a takeover loses nothing and keeps order, and racing
//! connects leave one open link.

use super::*;

fn run_takeover_scenario(seed: u64) {
    // Three shards, or four so that a moving session's hold is answered by two others.
    let shard_count = 3 + (seed % 2) as usize;
    let mut sim = Sim::new(shard_count, seed);
    let messages = 60u32;
    let publisher_shard = 0;
    let publisher = sim.connect(publisher_shard, "publisher", true);
    sim.settle();
    // Old messages on the subscription's topic, from every shard, before anyone subscribes:
    // they sit in the recent-publish logs, and no replay may hand them to the subscriber.
    for shard in 0..shard_count {
        let old_publisher = sim.connect(shard, &format!("old-{shard}"), true);
        sim.settle();
        for n in 0..3u32 {
            let payload = Bytes::copy_from_slice(&(OLD_MESSAGES_FROM + n).to_be_bytes());
            let publish = Publish::at_most_once(Bytes::from_static(b"t/x"), payload);
            sim.packet(shard, &old_publisher, Packet::Publish(publish));
        }
    }
    sim.settle();
    // The clock moves on: the old messages were taken well before the subscription.
    sim.now += std::time::Duration::from_millis(10);
    let mut sub_shard = sim.rng.below(shard_count);
    let mut sub = sim.connect(sub_shard, "subscriber", false);
    let mut all_links = vec![(sub_shard, sub.clone())];
    sim.settle();
    sim.packet(sub_shard, &sub, subscribe_packet_at("t/#", QoS::AtLeastOnce));
    // Like a real client, publish only once the SUBACK is in: only then does every shard
    // route by the subscription.
    sim.settle();
    assert!(matches!(read_packets(&sub)[..], [Packet::ConnAck(_), Packet::SubAck(_)]), "seed {seed}: SUBACK after settling");
    let mut received = Received::default();
    let mut next_id = 1u16;
    for n in 0..messages {
        let packet_id = PacketId::new(next_id).expect("ids skip 0");
        let publish =
            Publish::acknowledged(Bytes::from_static(b"t/x"), Bytes::copy_from_slice(&n.to_be_bytes()), QoS::AtLeastOnce, packet_id);
        next_id = next_id.wrapping_add(1).max(1);
        sim.packet(publisher_shard, &publisher, Packet::Publish(publish));
        let _ = publisher.take_output();
        sim.random_steps(4);
        drain_subscriber(&mut sim, sub_shard, &sub, &mut received, seed);
        let choice = sim.rng.below(6);
        if std::env::var("SIM_TRACE").is_ok() && choice < 2 {
            eprintln!("after message {n}: {}", if choice == 0 { "reconnect" } else { "takeover" });
        }
        match choice {
            0 => {
                // Reconnect elsewhere after a clean break. Like a real client, wait for the
                // CONNACK before giving up on a connection (see README: an abandoned,
                // unsettled CONNECT can still take the session over).
                if sub.state() == LinkState::Connecting {
                    sim.settle();
                }
                drain_subscriber(&mut sim, sub_shard, &sub, &mut received, seed);
                sim.close(sub_shard, &sub);
                sim.random_steps(3);
                sub_shard = sim.rng.below(shard_count);
                sub = sim.connect(sub_shard, "subscriber", false);
                all_links.push((sub_shard, sub.clone()));
            }
            1 => {
                // Takeover: a new connection while the old one is still open.
                let old = (sub_shard, sub.clone());
                sub_shard = sim.rng.below(shard_count);
                sub = sim.connect(sub_shard, "subscriber", false);
                all_links.push((sub_shard, sub.clone()));
                sim.random_steps(6);
                drain_subscriber(&mut sim, old.0, &old.1, &mut received, seed);
            }
            _ => {}
        }
    }
    sim.settle();
    // Claims racing through home may be settled in another order than they were made:
    // whichever connection won, it must be the only one.
    for (shard, link) in &all_links {
        drain_subscriber(&mut sim, *shard, link, &mut received, seed);
    }
    let open: Vec<&(usize, Rc<Link>)> = all_links.iter().filter(|(_, l)| l.state() == LinkState::Open).collect();
    if std::env::var("SIM_TRACE").is_ok() {
        for (shard, link) in &all_links {
            eprintln!("link {:?} on {shard}: {:?}", link.conn_id, link.state());
        }
    }
    assert_eq!(open.len(), 1, "seed {seed}: exactly one connection owns the session");
    let (sub_shard, sub) = open[0].clone();
    // Each round of acknowledgements opens the window for the next batch.
    loop {
        let before = received.any.len() + received.fresh.len();
        drain_subscriber(&mut sim, sub_shard, &sub, &mut received, seed);
        sim.settle();
        if received.any.len() + received.fresh.len() == before && sub.buffered_bytes() == 0 {
            break;
        }
    }
    if std::env::var("SIM_TRACE").is_ok() {
        for shard in &sim.shards {
            for (_, client) in shard.clients.iter() {
                eprintln!(
                    "shard {:?}: client {:?} conn {:?} inflight {} queued {} skip {:?} seen {:?} link {:?}",
                    shard.id,
                    client.session.client_id(),
                    client.conn_id,
                    client.session.inflight_len(),
                    client.session.queued_len(),
                    client.skip_until,
                    shard.streams.seen,
                    client.link.as_ref().map(|l| l.state())
                );
            }
        }
    }
    let missing: Vec<u32> = (0..messages).filter(|n| !received.any.contains(n)).collect();
    assert!(missing.is_empty(), "seed {seed}: never delivered: {missing:?}");
    let gaps: u64 = sim.shards.iter().map(|s| s.counters.takeover_replay_gaps).sum();
    assert_eq!(gaps, 0, "seed {seed}");
}

#[test]
fn session_takeover_across_shards_loses_nothing_and_keeps_order() {
    let seeds = seeds_or(1..=500);
    for seed in seeds {
        run_takeover_scenario(seed);
    }
}

#[test]
fn racing_connects_leave_exactly_one_open_link() {
    for seed in 1..=200 {
        let mut sim = Sim::new(3, seed);
        let links: Vec<(usize, Rc<Link>)> = (0..4)
            .map(|_| {
                let shard = sim.rng.below(3);
                let clean_start = sim.rng.below(2) == 0;
                let link = sim.connect(shard, "racer", clean_start);
                sim.random_steps(2);
                (shard, link)
            })
            .collect();
        sim.settle();
        // Home answers claims in arrival order, which need not be the order of the CONNECTs.
        let open = links.iter().filter(|(_, l)| l.state() == LinkState::Open).count();
        assert_eq!(open, 1, "seed {seed}: exactly one connection owns the client id");
        let clients: usize = sim.shards.iter().map(|s| s.clients.len()).sum();
        assert_eq!(clients, 1, "seed {seed}: one session for the racer and none left over");
        let registered: usize = sim.shards.iter().map(|s| s.registry.owners.len()).sum();
        assert_eq!(registered, 1, "seed {seed}: one registry entry");
    }
}

/// A connection remembers the client slot it was found in (`Shard::client_of`). Once that
/// slot holds another connection, the same client taken over or another client in the
/// reused slot, the old connection's packets must reach nobody.
#[test]
fn a_replaced_connections_packets_reach_neither_its_successor_nor_the_slots_next_client() {
    let subscriptions =
        |sim: &Sim| -> usize { sim.shards[0].clients.iter().map(|(_, client)| client.session.subscriptions().count()).sum() };
    let mut sim = Sim::new(1, 1);
    let first = sim.connect(0, "alpha", true);
    sim.packet(0, &first, subscribe_packet("first/#"));
    assert_eq!(read_packets(&first).len(), 2, "CONNACK and SUBACK");

    // Taken over (a clean start: the session starts empty): the first connection's
    // SUBSCRIBE goes nowhere.
    let second = sim.connect(0, "alpha", true);
    sim.settle();
    assert_eq!(read_packets(&second).len(), 1, "CONNACK");
    assert_eq!(subscriptions(&sim), 0);
    sim.packet(0, &first, subscribe_packet("stale/#"));
    assert_eq!(subscriptions(&sim), 0, "the successor's session got no subscription from the old connection");
    assert!(read_packets(&second).is_empty(), "no SUBACK for a packet the successor did not send");
    sim.packet(0, &second, subscribe_packet("second/#"));
    assert_eq!(read_packets(&second).len(), 1, "the successor's own SUBACK");
    assert_eq!(subscriptions(&sim), 1);

    // The session ends with its connection and other clients take the free slot: the old
    // connections' packets still go nowhere.
    sim.close(0, &second);
    sim.settle();
    assert_eq!(subscriptions(&sim), 0);
    let others: Vec<Rc<Link>> = ["beta", "gamma"]
        .iter()
        .map(|id| {
            let link = sim.connect(0, id, true);
            sim.settle();
            assert_eq!(read_packets(&link).len(), 1, "CONNACK");
            link
        })
        .collect();
    sim.packet(0, &second, subscribe_packet("stale/#"));
    sim.packet(0, &first, subscribe_packet("stale/#"));
    for link in &others {
        assert!(read_packets(link).is_empty(), "no SUBACK on another client's connection");
    }
    assert_eq!(subscriptions(&sim), 0, "no client subscribed to anything");
}
