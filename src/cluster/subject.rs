//! MQTT topics and filters as NATS subjects: total (every valid topic and filter has one),
//! reversible (a subject gives back exactly its topic), and faithful (a filter's subjects
//! match a topic's subject in NATS exactly when the filter matches the topic in MQTT).
//!
//! The two grammars differ: an MQTT level may be empty and may hold `.`, spaces, `*`, `>`
//! or anything else but `/`, `+`, `#` and NUL; a NATS token must be non-empty, has `.` as
//! its separator, no white space, and `*` and `>` as whole tokens are wildcards. So:
//! - each level becomes one token, in which every byte that NATS treats specially (`.`,
//!   `*`, `>`, white space and other control bytes, DEL) and the escape byte `~` itself
//!   are written `~XX` (two upper-case hex digits); an empty level is the token `~` alone,
//!   which no non-empty level can produce;
//! - a topic whose first level starts with `$` lives under its own root (`<prefix>.s`),
//!   all others under `<prefix>.t`, because a filter starting with a wildcard must not match
//!   `$` topics (MQTT 4.7.2) while NATS's `*` and `>` match any token;
//! - `+` is `*`; a trailing `#` is `>` plus the parent itself (`a/#` matches `a`), so a filter
//!   maps to one subject, or two when it ends in `#` after at least one level.
//!
//! Decoding accepts only what encoding produces (canonical escapes, a valid topic), so a
//! subject from another NATS client cannot smuggle in a topic MQTT forbids. Not handled
//! here: NATS refuses control lines past `max_control_line` (4 KiB by default) while a
//! topic may be 64 KiB and escaping can triple it; the gateway must refuse such topics.

use std::fmt::Write;

use bytes::Bytes;

/// Roots under the prefix: ordinary topics and `$` topics.
const ORDINARY_ROOT: &str = "t";
const DOLLAR_ROOT: &str = "s";
const ESCAPE: u8 = b'~';

/// Why a subject is not one this mapping produced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    #[error("subject is not under the cluster prefix")]
    OtherPrefix,
    #[error("subject has no topic levels")]
    NoLevels,
    #[error("malformed escape in a subject token")]
    BadEscape,
    #[error("subject token is a wildcard")]
    Wildcard,
    #[error("subject's root does not fit its first level")]
    WrongRoot,
    #[error("subject does not spell a valid MQTT topic")]
    NotATopic,
}

/// True for the bytes a level's token cannot carry as they are.
fn needs_escape(byte: u8) -> bool {
    matches!(byte, b'.' | b'*' | b'>' | ESCAPE) || byte <= b' ' || byte == 0x7F
}

fn push_level(subject: &mut String, level: &[u8]) {
    subject.push('.');
    if level.is_empty() {
        subject.push(ESCAPE as char);
        return;
    }
    // Bytes of multi-byte UTF-8 characters are >= 0x80 and pass through whole, so runs of
    // unescaped bytes are valid UTF-8 whenever the level is.
    let mut run_start = 0;
    for (index, &byte) in level.iter().enumerate() {
        if needs_escape(byte) {
            subject.push_str(&String::from_utf8_lossy(&level[run_start..index]));
            let _ = write!(subject, "~{byte:02X}");
            run_start = index + 1;
        }
    }
    subject.push_str(&String::from_utf8_lossy(&level[run_start..]));
}

fn root_for(first_level: &[u8]) -> &'static str {
    if first_level.first() == Some(&b'$') { DOLLAR_ROOT } else { ORDINARY_ROOT }
}

/// The subject a publish to `topic` (a valid topic name) goes to.
pub fn topic_subject(prefix: &str, topic: &[u8]) -> String {
    let mut subject = String::with_capacity(prefix.len() + 2 + topic.len() + topic.len() / 4 + 2);
    subject.push_str(prefix);
    subject.push('.');
    let first = topic.split(|&b| b == b'/').next().unwrap_or_default();
    subject.push_str(root_for(first));
    for level in topic.split(|&b| b == b'/') {
        push_level(&mut subject, level);
    }
    subject
}

/// The topic a subject from `topic_subject` stands for.
pub fn subject_topic(prefix: &str, subject: &str) -> Result<Bytes, SubjectError> {
    let rest = subject.strip_prefix(prefix).and_then(|rest| rest.strip_prefix('.')).ok_or(SubjectError::OtherPrefix)?;
    let (root, levels) = rest.split_once('.').ok_or(SubjectError::NoLevels)?;
    if root != ORDINARY_ROOT && root != DOLLAR_ROOT {
        return Err(SubjectError::OtherPrefix);
    }
    let mut topic = Vec::with_capacity(levels.len());
    for (index, token) in levels.split('.').enumerate() {
        if index > 0 {
            topic.push(b'/');
        }
        if token == "*" || token == ">" {
            return Err(SubjectError::Wildcard);
        }
        if token == "~" {
            continue;
        }
        let bytes = token.as_bytes();
        if bytes.is_empty() {
            return Err(SubjectError::BadEscape);
        }
        let mut at = 0;
        while at < bytes.len() {
            if bytes[at] == ESCAPE {
                let hex = bytes.get(at + 1..at + 3).ok_or(SubjectError::BadEscape)?;
                // Two hex digits exactly (`from_str_radix` alone also takes a sign: `~+1`).
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return Err(SubjectError::BadEscape);
                }
                let text = std::str::from_utf8(hex).map_err(|_| SubjectError::BadEscape)?;
                let byte = u8::from_str_radix(text, 16).map_err(|_| SubjectError::BadEscape)?;
                if !needs_escape(byte) || text.bytes().any(|digit| digit.is_ascii_lowercase()) {
                    return Err(SubjectError::BadEscape);
                }
                topic.push(byte);
                at += 3;
            } else if needs_escape(bytes[at]) || matches!(bytes[at], b'/' | b'+' | b'#') {
                // Only `~XX` spells the first; the others cannot be in a topic level. Either
                // way a foreign subject, not one of ours.
                return Err(SubjectError::BadEscape);
            } else {
                topic.push(bytes[at]);
                at += 1;
            }
        }
    }
    if crate::topics::validate_topic_name(&topic).is_err() || !crate::protocol::primitives::is_mqtt_utf8(&topic) {
        return Err(SubjectError::NotATopic);
    }
    let first = topic.split(|&b| b == b'/').next().unwrap_or_default();
    if root_for(first) != root {
        return Err(SubjectError::WrongRoot);
    }
    Ok(Bytes::from(topic))
}

/// The subjects a node subscribes to for `filter` (a valid topic filter, without any
/// `$share/group/` prefix): one, or two when a trailing `#` must also match its parent.
pub fn filter_subjects(prefix: &str, filter: &[u8]) -> Vec<String> {
    let levels: Vec<&[u8]> = filter.split(|&b| b == b'/').collect();
    let root = match levels[0] {
        b"+" | b"#" => ORDINARY_ROOT,
        first => root_for(first),
    };
    let mut subject = format!("{prefix}.{root}");
    let mut parent = None;
    for (index, level) in levels.iter().enumerate() {
        match *level {
            b"#" => {
                if index > 0 {
                    parent = Some(subject.clone());
                }
                subject.push_str(".>");
            }
            b"+" => subject.push_str(".*"),
            literal => push_level(&mut subject, literal),
        }
    }
    parent.into_iter().chain(std::iter::once(subject)).collect()
}

#[cfg(test)]
#[path = "subject_tests.rs"]
mod tests;
