use super::*;
use crate::protocol::{Properties, RetainHandling};
use crate::session::QueueFullPolicy;
use crate::topics::Filter;

const LIMITS: SessionLimits = SessionLimits { inflight_max: 2, queued_messages_max: 100, queue_full_policy: QueueFullPolicy::DropNew };

fn message(n: u8, clock: Clock) -> Arc<Message> {
    let properties = Properties { content_type: Some(Bytes::from_static(b"text/plain")), ..Properties::default() };
    Arc::new(Message {
        topic: Bytes::from(format!("t/{n}")),
        payload: Bytes::from(vec![n; 3]),
        qos: QoS::ExactlyOnce,
        retain: n % 2 == 0,
        properties: properties.into(),
        publisher: None,
        expires_at: (n == 3).then(|| clock.now + Duration::from_secs(60)),
    })
}

fn header(online: bool) -> SessionHeader {
    let properties = Properties {
        will_delay_interval: Some(30),
        user_properties: vec![(Bytes::from_static(b"k"), Bytes::from_static(b"v"))],
        ..Properties::default()
    };
    let will =
        Will { topic: Bytes::from_static(b"gone"), payload: Bytes::from_static(b"bye"), qos: QoS::AtLeastOnce, retain: true, properties };
    SessionHeader {
        version: ProtocolVersion::V5,
        expiry_interval_s: 3600,
        online,
        ends_at_ms: 0,
        will: Some(LoggedWill { will, due_at_ms: 0 }),
    }
}

/// Clock values are whole milliseconds apart from `now`, so instants survive the trip.
fn clock() -> Clock {
    Clock { now: Instant::now(), unix_ms: 1_800_000_000_000 }
}

fn busy_session(clock: Clock) -> Session {
    let mut session = Session::new(Bytes::from_static(b"client"), LIMITS);
    session.enable_journal();
    let options = SubscriptionOptions {
        qos: QoS::ExactlyOnce,
        no_local: true,
        retain_as_published: true,
        retain_handling: RetainHandling::DoNotSend,
    };
    session.subscribe(Filter::parse(b"t/#").unwrap(), Subscription { options, identifier: Some(9) });
    session.subscribe(
        Filter::parse(b"$share/g/t/+").unwrap(),
        Subscription { options: SubscriptionOptions::with_qos(QoS::AtLeastOnce), identifier: None },
    );
    for n in 0..5 {
        let mut copy = CopyFor::at(if n == 1 { QoS::AtLeastOnce } else { QoS::ExactlyOnce });
        copy.set_subscription_ids(vec![9, u32::from(n)]);
        if n == 4 {
            copy.set_shared(SharedRoute { group: Bytes::from_static(b"g"), filter: Bytes::from_static(b"t/+") });
        }
        let _ = session.offer(&message(n, clock), copy, true);
    }
    let first = session.snapshot().iter().find_map(|event| if let SessionEvent::Sent(id) = event { Some(*id) } else { None }).unwrap();
    session.on_pubrec(first, false);
    session.receive_qos2(PacketId::new(77).unwrap());
    session
}

fn encode_open(
    encoder: &mut SessionEncoder,
    slot: u32,
    epoch: u64,
    session: &mut Session,
    header: &SessionHeader,
    clock: Clock,
    out: &mut Vec<u8>,
) {
    session.clear_journal();
    encoder.open(slot, epoch, session.client_id(), header, clock, out);
    encoder.events(slot, &session.snapshot(), clock, out);
}

fn replay(files: &[&[u8]], clock: Clock) -> Vec<LoggedSession> {
    let mut replay = SessionReplay::new(LIMITS, clock);
    for file in files {
        let scan = record::scan(file).expect("a log");
        replay.file(scan.records.iter().copied()).expect("replays");
        assert_eq!(replay.mismatches, 0);
    }
    replay.finish().sessions
}

#[test]
fn a_session_and_its_header_survive_the_round_trip() {
    let clock = clock();
    let mut session = busy_session(clock);
    let mut file = record::FILE_MAGIC.to_vec();
    let mut encoder = SessionEncoder::default();
    encode_open(&mut encoder, 3, 10, &mut session, &header(true), clock, &mut file);
    // Later changes, as the shard drains them.
    let id = PacketId::new(77).unwrap();
    session.release_qos2(id);
    session.unsubscribe(b"$share/g/t/+");
    let mut events = Vec::new();
    session.take_journal(&mut events);
    encoder.events(3, &events, clock, &mut file);
    let mut offline = header(false);
    offline.ends_at_ms = clock.unix_ms + 5_000;
    offline.will.as_mut().unwrap().due_at_ms = clock.unix_ms + 1_000;
    encoder.state(3, &offline, clock, &mut file);

    let restored = replay(&[&file], clock);
    assert_eq!(restored.len(), 1);
    assert_eq!((&restored[0].client_id[..], restored[0].epoch), (&b"client"[..], 10));
    assert_eq!(restored[0].header, offline);
    assert_eq!(restored[0].session.snapshot(), session.snapshot());
}

#[test]
fn a_message_fanned_out_to_many_sessions_is_written_once() {
    let clock = clock();
    let shared = message(1, clock);
    let mut encoder = SessionEncoder::default();
    let mut file = record::FILE_MAGIC.to_vec();
    for slot in 0..50u32 {
        let mut session = Session::new(Bytes::from(format!("c{slot}")), LIMITS);
        session.enable_journal();
        encoder.open(slot, u64::from(slot), session.client_id(), &header(false), clock, &mut file);
        let _ = session.offer(&shared, CopyFor::at(QoS::AtLeastOnce), false);
        let mut events = Vec::new();
        session.take_journal(&mut events);
        encoder.events(slot, &events, clock, &mut file);
    }
    let scan = record::scan(&file).unwrap();
    assert_eq!(scan.records.iter().filter(|(kind, _)| *kind == Kind::SessionMessage).count(), 1);
    let restored = replay(&[&file], clock);
    assert_eq!(restored.len(), 50);
    assert!(restored.iter().all(|logged| logged.session.queued_len() == 1));
}

#[test]
fn the_newest_epoch_wins_across_files_and_an_end_removes_older_instances() {
    let clock = clock();
    let mut encoder = SessionEncoder::default();
    let (mut old_file, mut new_file) = (record::FILE_MAGIC.to_vec(), record::FILE_MAGIC.to_vec());
    let mut older = busy_session(clock);
    encode_open(&mut encoder, 0, 5, &mut older, &header(false), clock, &mut old_file);
    let mut newer = Session::new(Bytes::from_static(b"client"), LIMITS);
    newer.enable_journal();
    let mut encoder_b = SessionEncoder::default();
    encode_open(&mut encoder_b, 8, 6, &mut newer, &header(false), clock, &mut new_file);
    // Either order of reading the files gives the newer instance.
    for files in [[&old_file[..], &new_file[..]], [&new_file[..], &old_file[..]]] {
        let restored = replay(&files, clock);
        assert_eq!((restored.len(), restored[0].epoch, restored[0].session.queued_len()), (1, 6, 0));
    }
    encoder_b.end(7, b"client", &mut new_file);
    assert!(replay(&[&old_file, &new_file], clock).is_empty(), "ended at epoch 7");
    // A later instance (a reconnect after the end) is back.
    let mut again = Session::new(Bytes::from_static(b"client"), LIMITS);
    encode_open(&mut encoder_b, 8, 9, &mut again, &header(false), clock, &mut new_file);
    assert_eq!(replay(&[&old_file, &new_file], clock)[0].epoch, 9);
}

#[test]
fn a_log_cut_at_any_byte_of_its_last_record_replays_what_came_before() {
    let clock = clock();
    let mut session = busy_session(clock);
    let mut encoder = SessionEncoder::default();
    let mut file = record::FILE_MAGIC.to_vec();
    encode_open(&mut encoder, 1, 1, &mut session, &header(false), clock, &mut file);
    let before = session.snapshot();
    let complete = file.len();
    let first = before.iter().find_map(|event| if let SessionEvent::Sent(id) = event { Some(*id) } else { None }).unwrap();
    session.on_pubcomp(first);
    let mut events = Vec::new();
    session.take_journal(&mut events);
    encoder.events(1, &events, clock, &mut file);
    for cut in complete..file.len() {
        let torn = &file[..cut];
        let scan = record::scan(torn).unwrap();
        assert_eq!(scan.valid_bytes, complete, "cut at {cut}");
        let restored = replay(&[torn], clock);
        assert_eq!(restored[0].session.snapshot(), before, "cut at {cut}");
    }
    assert_eq!(replay(&[&file], clock)[0].session.snapshot(), session.snapshot());
}

#[test]
fn a_flipped_byte_stops_replay_at_the_damaged_record() {
    let clock = clock();
    let mut session = busy_session(clock);
    let mut encoder = SessionEncoder::default();
    let mut file = record::FILE_MAGIC.to_vec();
    encode_open(&mut encoder, 1, 1, &mut session, &header(false), clock, &mut file);
    let good = file.len();
    encoder.end(2, b"client", &mut file);
    let mut damaged = file.clone();
    *damaged.last_mut().unwrap() ^= 0x40;
    let scan = record::scan(&damaged).unwrap();
    assert_eq!((scan.valid_bytes, scan.damage), (good, Some(record::Damage::Corrupt)));
    assert_eq!(replay(&[&damaged], clock).len(), 1, "the end record was damaged: not replayed");
    assert!(replay(&[&file], clock).is_empty());
}

#[test]
fn garbage_in_a_record_with_a_good_checksum_is_an_error_not_a_panic() {
    let mut replay = SessionReplay::new(LIMITS, clock());
    for body in [&[][..], &[1, 0, 0][..], &[0, 0, 0, 0, 99][..], &[0, 0, 0, 0, 3, 1, 0, 0, 0, 0, 0, 0, 0][..]] {
        assert!(replay.file([(Kind::SessionEvents, body)]).is_err() || body.len() < 5);
        assert!(replay.file([(Kind::SessionOpen, body)]).is_err());
    }
}
