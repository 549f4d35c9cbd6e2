//! Topic semantics, pure: what a valid topic name and filter are, which filters match a
//! topic (the subscription trie), and which retained topics a new filter matches.
//!
//! Everything works on the raw UTF-8 bytes the codec validated; levels are split on b'/'.
//! Owns no IO and no notion of sessions: subscribers are opaque keys.

mod retained;
mod trie;

use bytes::Bytes;

pub use retained::RetainedTree;
pub use trie::SubscriptionTree;

/// The hasher of the maps keyed by bytes clients choose (topic levels in both trees,
/// client ids): ahash, keyed at random per map, so colliding keys cannot be picked from
/// outside, and several times cheaper than std's SipHash on short keys (criterion `match_*`).
pub type KeyedHasher = ahash::RandomState;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic is empty")]
    Empty,
    #[error("topic name contains a wildcard")]
    WildcardInName,
    #[error("'#' must be the last level and stand alone in it")]
    MisplacedMultiLevelWildcard,
    #[error("'+' must stand alone in its level")]
    MisplacedSingleLevelWildcard,
    #[error("more levels than --topic-levels-max")]
    TooManyLevels,
    #[error("longer than --topic-bytes-max")]
    TooLong,
}

/// A topic a message is published to: non-empty, no wildcards (MQTT 4.7.3).
pub fn validate_topic_name(topic: &[u8]) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.iter().any(|&b| b == b'+' || b == b'#') {
        return Err(TopicError::WildcardInName);
    }
    Ok(())
}

/// A subscription filter: non-empty; `#` only as the whole last level; `+` only as a
/// whole level (MQTT 4.7.1).
pub fn validate_topic_filter(filter: &[u8]) -> Result<(), TopicError> {
    if filter.is_empty() {
        return Err(TopicError::Empty);
    }
    let mut levels = filter.split(|&b| b == b'/').peekable();
    while let Some(level) = levels.next() {
        let is_last = levels.peek().is_none();
        if level.contains(&b'#') && (level != b"#" || !is_last) {
            return Err(TopicError::MisplacedMultiLevelWildcard);
        }
        if level.contains(&b'+') && level != b"+" {
            return Err(TopicError::MisplacedSingleLevelWildcard);
        }
    }
    Ok(())
}

/// How many levels a topic name or filter has (`a/b` two, `/` two, `#` one).
pub fn level_count(topic: &[u8]) -> usize {
    topic.iter().filter(|&&b| b == b'/').count() + 1
}

/// Topics under `$SYS/` are the broker's own; clients may not publish there.
pub fn is_broker_topic(topic: &[u8]) -> bool {
    topic.starts_with(b"$SYS/") || topic == b"$SYS"
}

/// A shared subscription's group name and the filter it shares.
pub type SharedFilter<'a> = (&'a [u8], &'a [u8]);

/// `$share/GROUP/FILTER` split into group and filter; `None` for an ordinary filter.
/// The group name must be non-empty and hold no `/`, `+` or `#` (MQTT 5.0 4.8.2).
pub fn parse_shared(filter: &[u8]) -> Option<Result<SharedFilter<'_>, TopicError>> {
    let rest = filter.strip_prefix(b"$share/")?;
    let Some(slash) = rest.iter().position(|&b| b == b'/') else { return Some(Err(TopicError::Empty)) };
    let (group, inner) = (&rest[..slash], &rest[slash + 1..]);
    if group.is_empty() || group.iter().any(|&b| b == b'+' || b == b'#') {
        return Some(Err(TopicError::MisplacedSingleLevelWildcard));
    }
    Some(validate_topic_filter(inner).map(|()| (group, inner)))
}

/// A subscription's filter, parsed once at SUBSCRIBE: a plain one, matched through the
/// shard's trie, or a shared one (`$share/GROUP/FILTER`), whose group's members take
/// turns (see `shard/shared.rs`). Owns its bytes (copied out of the read buffer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    Plain(Bytes),
    Shared { group: Bytes, filter: Bytes },
}

impl Filter {
    /// Parses and validates a filter as a client sent it.
    pub fn parse(text: &[u8]) -> Result<Filter, TopicError> {
        match parse_shared(text) {
            None => validate_topic_filter(text).map(|()| Filter::Plain(Bytes::copy_from_slice(text))),
            Some(parsed) => {
                let (group, filter) = parsed?;
                Ok(Filter::Shared { group: Bytes::copy_from_slice(group), filter: Bytes::copy_from_slice(filter) })
            }
        }
    }

    /// The filter topics are matched against (a shared filter's inner one).
    pub fn matched(&self) -> &Bytes {
        match self {
            Filter::Plain(filter) | Filter::Shared { filter, .. } => filter,
        }
    }

    pub fn is_shared(&self) -> bool {
        matches!(self, Filter::Shared { .. })
    }

    /// The filter as the client wrote it (`$share/GROUP/FILTER` rebuilt for a shared one).
    pub fn text(&self) -> Bytes {
        match self {
            Filter::Plain(filter) => filter.clone(),
            Filter::Shared { group, filter } => {
                let mut text = Vec::with_capacity(8 + group.len() + filter.len());
                text.extend_from_slice(b"$share/");
                text.extend_from_slice(group);
                text.push(b'/');
                text.extend_from_slice(filter);
                Bytes::from(text)
            }
        }
    }
}

/// Topics beginning with `$` are not matched by a filter starting with a wildcard (4.7.2).
pub fn is_system_topic(topic: &[u8]) -> bool {
    topic.first() == Some(&b'$')
}

/// Reference matcher: does `filter` match `topic`? Slow and obviously right; the trie is
/// tested against it.
pub fn filter_matches(filter: &[u8], topic: &[u8]) -> bool {
    if is_system_topic(topic) && matches!(filter.first(), Some(b'+') | Some(b'#')) {
        return false;
    }
    let mut filter_levels = filter.split(|&b| b == b'/');
    let mut topic_levels = topic.split(|&b| b == b'/');
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            (Some(b"#"), _) => return true,
            (Some(f), Some(t)) if f == b"+" || f == t => continue,
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(validate_topic_name(b"a/b"), Ok(()));
        assert_eq!(validate_topic_name(b"/"), Ok(()));
        assert_eq!(validate_topic_name(b""), Err(TopicError::Empty));
        assert_eq!(validate_topic_name(b"a/+"), Err(TopicError::WildcardInName));
        assert_eq!(validate_topic_name(b"a#"), Err(TopicError::WildcardInName));
    }

    #[test]
    fn filters() {
        for ok in [&b"#"[..], b"+", b"a/#", b"+/+", b"/+", b"a//b", b"$SYS/#", b"+/a/#"] {
            assert_eq!(validate_topic_filter(ok), Ok(()), "{}", String::from_utf8_lossy(ok));
        }
        assert_eq!(validate_topic_filter(b""), Err(TopicError::Empty));
        assert_eq!(validate_topic_filter(b"a/#/b"), Err(TopicError::MisplacedMultiLevelWildcard));
        assert_eq!(validate_topic_filter(b"a#"), Err(TopicError::MisplacedMultiLevelWildcard));
        assert_eq!(validate_topic_filter(b"a/b+"), Err(TopicError::MisplacedSingleLevelWildcard));
    }

    #[test]
    fn shared_filters() {
        assert_eq!(parse_shared(b"a/b"), None);
        assert_eq!(parse_shared(b"$share/g/a/+"), Some(Ok((&b"g"[..], &b"a/+"[..]))));
        assert!(matches!(parse_shared(b"$share/g"), Some(Err(_))));
        assert!(matches!(parse_shared(b"$share//a"), Some(Err(_))));
        assert!(matches!(parse_shared(b"$share/g+/a"), Some(Err(_))));
        assert!(matches!(parse_shared(b"$share/g/a/#/b"), Some(Err(_))));
    }

    #[test]
    fn a_filter_is_parsed_once_into_plain_or_shared_and_written_back_as_sent() {
        for text in [&b"a/+/#"[..], b"$share/g/a/+", b"$share/g/#", b"$SYS/#"] {
            let filter = Filter::parse(text).unwrap();
            assert_eq!(&filter.text()[..], text);
            assert_eq!(filter.is_shared(), text.starts_with(b"$share/"));
        }
        assert_eq!(Filter::parse(b"$share/g/a/+").unwrap().matched(), &Bytes::from_static(b"a/+"));
        assert_eq!(Filter::parse(b"a/#/b"), Err(TopicError::MisplacedMultiLevelWildcard));
        assert!(Filter::parse(b"$share/g").is_err());
        assert!(Filter::parse(b"$share/g/a/#/b").is_err());
    }

    #[test]
    fn reference_matcher_spec_examples() {
        assert!(filter_matches(b"sport/tennis/player1/#", b"sport/tennis/player1"));
        assert!(filter_matches(b"sport/tennis/player1/#", b"sport/tennis/player1/ranking"));
        assert!(filter_matches(b"sport/#", b"sport"));
        assert!(filter_matches(b"sport/tennis/+", b"sport/tennis/player1"));
        assert!(!filter_matches(b"sport/tennis/+", b"sport/tennis/player1/ranking"));
        assert!(!filter_matches(b"sport/+", b"sport"));
        assert!(filter_matches(b"sport/+", b"sport/"));
        assert!(filter_matches(b"+/+", b"/finance"));
        assert!(filter_matches(b"/+", b"/finance"));
        assert!(!filter_matches(b"+", b"/finance"));
        assert!(!filter_matches(b"#", b"$SYS/x"));
        assert!(!filter_matches(b"+/monitor/Clients", b"$SYS/monitor/Clients"));
        assert!(filter_matches(b"$SYS/#", b"$SYS/monitor/Clients"));
        assert!(filter_matches(b"$SYS/monitor/+", b"$SYS/monitor/Clients"));
    }
}
