use proptest::prelude::*;

use super::*;
use crate::topics::{filter_matches, validate_topic_filter, validate_topic_name};

const PREFIX: &str = "ringmq";

/// NATS's own matching rule, token by token: `*` one token, `>` one or more at the end.
fn nats_matches(filter: &str, subject: &str) -> bool {
    let mut filter_tokens = filter.split('.');
    let mut subject_tokens = subject.split('.');
    loop {
        match (filter_tokens.next(), subject_tokens.next()) {
            (Some(">"), Some(_)) => return filter_tokens.next().is_none(),
            (Some("*"), Some(_)) => continue,
            (Some(f), Some(s)) if f == s => continue,
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// What NATS accepts as a published subject: non-empty tokens, no white space, no
/// wildcard tokens.
fn is_valid_nats_subject(subject: &str) -> bool {
    // NATS's parser splits on ASCII white space only.
    subject.split('.').all(|token| !token.is_empty() && token != "*" && token != ">") && !subject.bytes().any(|b| b <= b' ' || b == 0x7F)
}

#[test]
fn awkward_topics_spelled_out() {
    let cases: [(&[u8], &str); 9] = [
        (b"a/b", "ringmq.t.a.b"),
        (b"/", "ringmq.t.~.~"),
        (b"a//b", "ringmq.t.a.~.b"),
        (b"v1.2/x y", "ringmq.t.v1~2E2.x~20y"),
        (b"*/>", "ringmq.t.~2A.~3E"),
        (b"~", "ringmq.t.~7E"),
        (b"$SYS/broker", "ringmq.s.$SYS.broker"),
        (b"a/$b", "ringmq.t.a.$b"),
        ("caf\u{e9}/\u{1F600}".as_bytes(), "ringmq.t.caf\u{e9}.\u{1F600}"),
    ];
    for (topic, subject) in cases {
        assert_eq!(topic_subject(PREFIX, topic), subject);
        assert_eq!(subject_topic(PREFIX, subject).as_deref(), Ok(topic), "{subject}");
    }
}

#[test]
fn filters_spelled_out() {
    assert_eq!(filter_subjects(PREFIX, b"#"), ["ringmq.t.>"]);
    assert_eq!(filter_subjects(PREFIX, b"+"), ["ringmq.t.*"]);
    assert_eq!(filter_subjects(PREFIX, b"a/#"), ["ringmq.t.a", "ringmq.t.a.>"]);
    assert_eq!(filter_subjects(PREFIX, b"+/b/#"), ["ringmq.t.*.b", "ringmq.t.*.b.>"]);
    assert_eq!(filter_subjects(PREFIX, b"$SYS/#"), ["ringmq.s.$SYS", "ringmq.s.$SYS.>"]);
    assert_eq!(filter_subjects(PREFIX, b"a.b/+"), ["ringmq.t.a~2Eb.*"]);
    assert_eq!(filter_subjects(PREFIX, b"/"), ["ringmq.t.~.~"]);
}

#[test]
fn subjects_that_are_not_ours_are_refused() {
    assert_eq!(subject_topic(PREFIX, "other.t.a"), Err(SubjectError::OtherPrefix));
    assert_eq!(subject_topic(PREFIX, "ringmq.x.a"), Err(SubjectError::OtherPrefix));
    assert_eq!(subject_topic(PREFIX, "ringmq.t"), Err(SubjectError::NoLevels));
    assert_eq!(subject_topic(PREFIX, "ringmq.t.a.*"), Err(SubjectError::Wildcard));
    assert_eq!(subject_topic(PREFIX, "ringmq.t.a~2"), Err(SubjectError::BadEscape));
    assert_eq!(subject_topic(PREFIX, "ringmq.t.a~41"), Err(SubjectError::BadEscape), "A needs no escape");
    assert_eq!(subject_topic(PREFIX, "ringmq.t.a~2e"), Err(SubjectError::BadEscape), "lower-case hex");
    assert_eq!(subject_topic(PREFIX, "ringmq.t.~+1"), Err(SubjectError::BadEscape), "a sign is not a hex digit");
    assert_eq!(subject_topic(PREFIX, "ringmq.t.a*"), Err(SubjectError::BadEscape));
    assert_eq!(subject_topic(PREFIX, "ringmq.t.a..b"), Err(SubjectError::BadEscape));
    assert_eq!(subject_topic(PREFIX, "ringmq.t.$SYS"), Err(SubjectError::WrongRoot));
    assert_eq!(subject_topic(PREFIX, "ringmq.s.a"), Err(SubjectError::WrongRoot));
    // One token that would read as two levels, or hold wildcards or NUL.
    assert_eq!(subject_topic(PREFIX, "ringmq.t.a/b"), Err(SubjectError::BadEscape));
    assert_eq!(subject_topic(PREFIX, "ringmq.t.a+b"), Err(SubjectError::BadEscape));
    assert_eq!(subject_topic(PREFIX, "ringmq.t.a#"), Err(SubjectError::BadEscape));
    assert_eq!(subject_topic(PREFIX, "ringmq.t.a~00"), Err(SubjectError::NotATopic));
    assert_eq!(subject_topic(PREFIX, "ringmq.t.~"), Err(SubjectError::NotATopic), "the empty topic");
}

/// Levels drawn to hit every special case: empty, separators and wildcards of the other
/// grammar, white space, the escape byte, `$`, multi-byte characters.
fn level() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("$SYS".to_string()),
        prop::sample::select(vec!["a", "b", "*", ">", ".", "~", "~2E", " ", "\t", "$", "é"]).prop_map(str::to_string),
        "[a-c.*>~ $\t\u{7f}é\u{1F600}-]{1,6}",
    ]
}

fn topic() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(level(), 1..5).prop_map(|levels| levels.join("/").into_bytes())
}

/// Filters over the same levels, with `+` levels and an optional trailing `#`.
fn filter() -> impl Strategy<Value = Vec<u8>> {
    let filter_level = prop_oneof![3 => level(), 1 => Just("+".to_string())];
    (prop::collection::vec(filter_level, 0..4), any::<bool>()).prop_filter_map("empty filter", |(mut levels, hash)| {
        if hash {
            levels.push("#".to_string());
        }
        (!levels.is_empty()).then(|| levels.join("/").into_bytes())
    })
}

/// A filter made from a topic: some levels turned into `+`, maybe cut short by `#`, so
/// that matching pairs are common.
fn topic_and_derived_filter() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
    prop::collection::vec(level(), 1..5)
        .prop_flat_map(|levels| {
            let count = levels.len();
            (Just(levels), prop::collection::vec(any::<bool>(), count), 0..=count + 1)
        })
        .prop_map(|(levels, plus, cut)| {
            let topic = levels.join("/").into_bytes();
            let mut filter: Vec<String> =
                levels.iter().zip(plus).map(|(level, plus)| if plus { "+".to_string() } else { level.clone() }).collect();
            if cut <= filter.len() {
                filter.truncate(cut);
                filter.push("#".to_string());
            }
            (topic, filter.join("/").into_bytes())
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn only_canonical_subjects_decode(subject in "ringmq\\.[ts]\\.[a-c.*>~0-9A-F/+#$ \u{0}é]{0,12}") {
        if let Ok(topic) = subject_topic(PREFIX, &subject) {
            prop_assert_eq!(topic_subject(PREFIX, &topic), subject);
        }
    }

    #[test]
    fn derived_filters_match_in_nats_as_in_mqtt((topic, filter) in topic_and_derived_filter()) {
        prop_assume!(validate_topic_filter(&filter).is_ok() && validate_topic_name(&topic).is_ok());
        let subject = topic_subject(PREFIX, &topic);
        let subjects = filter_subjects(PREFIX, &filter);
        let in_nats = subjects.iter().filter(|filter_subject| nats_matches(filter_subject, &subject)).count();
        prop_assert!(in_nats <= 1);
        prop_assert_eq!(in_nats == 1, filter_matches(&filter, &topic), "{:?} vs {}", subjects, subject);
    }

    #[test]
    fn every_topic_round_trips_through_a_valid_subject(topic in topic()) {
        prop_assume!(validate_topic_name(&topic).is_ok());
        let subject = topic_subject(PREFIX, &topic);
        prop_assert!(is_valid_nats_subject(&subject), "{subject:?}");
        let back = subject_topic(PREFIX, &subject);
        prop_assert_eq!(back.as_deref(), Ok(&topic[..]));
    }

    #[test]
    fn nats_matches_exactly_where_mqtt_matches(filter in filter(), topic in topic()) {
        prop_assume!(validate_topic_filter(&filter).is_ok() && validate_topic_name(&topic).is_ok());
        let subject = topic_subject(PREFIX, &topic);
        let subjects = filter_subjects(PREFIX, &filter);
        let in_nats = subjects.iter().filter(|filter_subject| nats_matches(filter_subject, &subject)).count();
        // At most one of a filter's subjects matches, so NATS delivers once per filter.
        prop_assert!(in_nats <= 1, "{subjects:?} vs {subject}");
        prop_assert_eq!(
            in_nats == 1,
            filter_matches(&filter, &topic),
            "filter {:?} topic {:?}: {:?} vs {}",
            String::from_utf8_lossy(&filter), String::from_utf8_lossy(&topic), subjects, subject
        );
    }
}
