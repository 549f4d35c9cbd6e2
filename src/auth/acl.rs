//! Authorization from an ACL file in Mosquitto's format, so existing files work as they are:
//!
//! ```text
//! # topic lines before any `user` line apply to anonymous clients
//! topic read public/#
//! user alice
//! topic readwrite alice/#
//! topic deny alice/secret
//! # patterns apply to every client: %c is its client id, %u its user name
//! pattern write devices/%c/status
//! ```
//!
//! Access is `read` (subscribe, and receive), `write` (publish), `readwrite` (both; the
//! default when none is named) or `deny` (neither, and it wins over any allow). With an ACL
//! file, what no rule allows is denied. A subscription is allowed when a read rule's filter
//! covers the requested filter read as a topic (`sensors/#` allows `sensors/+`); each
//! message is checked again on delivery, so a wide subscription never reads a denied topic.
//! Pure: parsed once; `ClientAcl` is one client's rules with `%c` and `%u` filled in.

use std::collections::HashMap;
use std::sync::Arc;

use crate::topics::{filter_matches, validate_topic_filter};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AclError {
    #[error(
        "line {line}: expected `user NAME`, `topic [read|write|readwrite|deny] FILTER` or `pattern [read|write|readwrite|deny] FILTER`"
    )]
    Syntax { line: usize },
    #[error("line {line}: {filter:?} is not a valid topic filter")]
    Filter { line: usize, filter: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
    ReadWrite,
    Deny,
}

impl Access {
    fn allows_read(self) -> bool {
        matches!(self, Access::Read | Access::ReadWrite)
    }

    fn allows_write(self) -> bool {
        matches!(self, Access::Write | Access::ReadWrite)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    access: Access,
    filter: String,
}

/// A parsed ACL file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acl {
    anonymous: Vec<Rule>,
    users: HashMap<String, Vec<Rule>>,
    patterns: Vec<Rule>,
}

impl Acl {
    pub fn parse(contents: &str) -> Result<Acl, AclError> {
        let mut acl = Acl::default();
        let mut user: Option<String> = None;
        for (index, raw) in contents.lines().enumerate() {
            let line = index + 1;
            let text = raw.trim();
            if text.is_empty() || text.starts_with('#') {
                continue;
            }
            let (keyword, rest) = text.split_once(char::is_whitespace).ok_or(AclError::Syntax { line })?;
            let rest = rest.trim();
            match keyword {
                "user" if !rest.is_empty() => user = Some(rest.to_string()),
                "topic" | "pattern" => {
                    let rule = parse_rule(rest, line)?;
                    match (keyword, &user) {
                        ("pattern", _) => acl.patterns.push(rule),
                        (_, Some(user)) => acl.users.entry(user.clone()).or_default().push(rule),
                        (_, None) => acl.anonymous.push(rule),
                    }
                }
                _ => return Err(AclError::Syntax { line }),
            }
        }
        Ok(acl)
    }

    /// The rules that apply to one client, `%c` and `%u` filled in (a pattern naming `%u`
    /// does not apply to a client without a user name).
    pub fn for_client(&self, client_id: &[u8], username: Option<&[u8]>) -> ClientAcl {
        let client_id = String::from_utf8_lossy(client_id);
        let username = username.map(String::from_utf8_lossy);
        let mut rules: Vec<Rule> = match &username {
            Some(name) => self.users.get(name.as_ref()).cloned().unwrap_or_default(),
            None => self.anonymous.clone(),
        };
        // A client id or user name with a wildcard would widen a pattern (`devices/#/status`
        // for the client id `#`): patterns naming it do not apply to that client.
        let wild = |name: &str| name.contains(['+', '#']);
        let client_id_wild = wild(&client_id);
        let username_wild = username.as_deref().is_some_and(wild);
        for pattern in &self.patterns {
            if pattern.filter.contains("%u") && (username.is_none() || username_wild) {
                continue;
            }
            if pattern.filter.contains("%c") && client_id_wild {
                continue;
            }
            let mut filter = pattern.filter.replace("%c", &client_id);
            if let Some(name) = &username {
                filter = filter.replace("%u", name);
            }
            rules.push(Rule { access: pattern.access, filter });
        }
        ClientAcl { rules: rules.into_iter().map(|rule| (rule.access, rule.filter.into_bytes())).collect::<Vec<_>>().into() }
    }
}

fn parse_rule(rest: &str, line: usize) -> Result<Rule, AclError> {
    let (access, filter) = match rest.split_once(char::is_whitespace) {
        Some(("read", filter)) => (Access::Read, filter),
        Some(("write", filter)) => (Access::Write, filter),
        Some(("readwrite", filter)) => (Access::ReadWrite, filter),
        Some(("deny", filter)) => (Access::Deny, filter),
        // No access word: the whole rest is the filter, read and write (as Mosquitto).
        _ => (Access::ReadWrite, rest),
    };
    let filter = filter.trim();
    // Placeholders stand for one level's worth of characters; check the filter around them.
    let checked = filter.replace("%c", "c").replace("%u", "u");
    if filter.is_empty() || validate_topic_filter(checked.as_bytes()).is_err() {
        return Err(AclError::Filter { line, filter: filter.to_string() });
    }
    Ok(Rule { access, filter: filter.to_string() })
}

/// One client's rules (shared by its connections' checks; cheap to clone).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientAcl {
    rules: Arc<[(Access, Vec<u8>)]>,
}

impl ClientAcl {
    fn decide(&self, topic: &[u8], allows: fn(Access) -> bool) -> bool {
        let mut allowed = false;
        for (access, filter) in self.rules.iter() {
            if filter_matches(filter, topic) {
                if *access == Access::Deny {
                    return false;
                }
                allowed |= allows(*access);
            }
        }
        allowed
    }

    pub fn may_publish(&self, topic: &[u8]) -> bool {
        self.decide(topic, Access::allows_write)
    }

    /// A message on `topic` may be delivered to this client.
    pub fn may_read(&self, topic: &[u8]) -> bool {
        self.decide(topic, Access::allows_read)
    }

    /// SUBSCRIBE to `filter`: read as a topic, some read rule must cover it and no deny
    /// rule may.
    pub fn may_subscribe(&self, filter: &[u8]) -> bool {
        self.decide(filter, Access::allows_read)
    }
}

/// Decisions remembered per client and direction before the memo is cleared (a client
/// using more distinct topics than this pays the rule scan again, never unbounded memory).
const READ_MEMO_TOPICS_MAX: usize = 4096;

/// One client's rules and a memo of its decisions by topic, for reading and for writing:
/// with a file of a thousand rules, a delivery or a PUBLISH costs one hash lookup, not a
/// thousand filter matches.
#[derive(Debug, Clone, Default)]
pub struct ClientAuthorization {
    acl: ClientAcl,
    /// The last delivery's topic and decision: a client fed one topic over and over (the
    /// fan-out case) is answered by one comparison, before any hashing.
    last_read: Option<(bytes::Bytes, bool)>,
    readable: HashMap<bytes::Bytes, bool>,
    writable: HashMap<bytes::Bytes, bool>,
}

fn remembered(memo: &mut HashMap<bytes::Bytes, bool>, topic: &bytes::Bytes, decide: impl FnOnce() -> bool) -> bool {
    if let Some(&allowed) = memo.get(topic) {
        return allowed;
    }
    let allowed = decide();
    if memo.len() >= READ_MEMO_TOPICS_MAX {
        memo.clear();
    }
    memo.insert(crate::session::detach(topic), allowed);
    allowed
}

impl ClientAuthorization {
    pub fn new(acl: ClientAcl) -> ClientAuthorization {
        ClientAuthorization { acl, last_read: None, readable: HashMap::new(), writable: HashMap::new() }
    }

    /// Whether this client may PUBLISH to `topic`, remembered per topic.
    pub fn may_publish(&mut self, topic: &bytes::Bytes) -> bool {
        let acl = &self.acl;
        remembered(&mut self.writable, topic, || acl.may_publish(topic))
    }

    pub fn may_subscribe(&self, filter: &[u8]) -> bool {
        self.acl.may_subscribe(filter)
    }

    /// Whether a message on `topic` may be delivered, remembered per topic.
    pub fn may_read(&mut self, topic: &bytes::Bytes) -> bool {
        if let Some((last, allowed)) = &self.last_read
            && last == topic
        {
            return *allowed;
        }
        let acl = &self.acl;
        let allowed = remembered(&mut self.readable, topic, || acl.may_read(topic));
        // The memo's own copy of the topic, not the message's: that one may be a slice of
        // a publisher's whole read block, which this must not keep alive.
        self.last_read = self.readable.get_key_value(topic).map(|(topic, &allowed)| (topic.clone(), allowed));
        allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "\
# anonymous
topic read public/#

user alice
topic readwrite alice/#
topic deny alice/secret
topic sensors/#

user bob
topic write inbox/alice

pattern write devices/%c/status
pattern read users/%u/#
";

    #[test]
    fn anonymous_clients_get_the_rules_before_any_user_line_and_the_patterns_without_a_user() {
        let acl = Acl::parse(FILE).unwrap();
        let anonymous = acl.for_client(b"dev1", None);
        assert!(anonymous.may_read(b"public/news"));
        assert!(!anonymous.may_publish(b"public/news"), "read only");
        assert!(anonymous.may_publish(b"devices/dev1/status"), "%c");
        assert!(!anonymous.may_publish(b"devices/dev2/status"));
        assert!(!anonymous.may_read(b"users/alice/x"), "a %u pattern does not apply without a user name");
        assert!(!anonymous.may_read(b"alice/x"));
    }

    #[test]
    fn a_users_section_allows_by_access_and_deny_wins() {
        let acl = Acl::parse(FILE).unwrap();
        let alice = acl.for_client(b"phone", Some(b"alice"));
        assert!(alice.may_read(b"alice/x") && alice.may_publish(b"alice/x"));
        assert!(!alice.may_read(b"alice/secret") && !alice.may_publish(b"alice/secret"), "deny wins over readwrite");
        assert!(alice.may_publish(b"sensors/t") && alice.may_read(b"sensors/t"), "no access word: readwrite");
        assert!(alice.may_read(b"users/alice/inbox"), "%u");
        assert!(!alice.may_read(b"users/bob/inbox"));
        assert!(!alice.may_read(b"public/news"), "the anonymous section is not hers");
        let bob = acl.for_client(b"laptop", Some(b"bob"));
        assert!(bob.may_publish(b"inbox/alice") && !bob.may_read(b"inbox/alice"));
        let stranger = acl.for_client(b"x", Some(b"mallory"));
        assert!(!stranger.may_read(b"alice/x") && !stranger.may_publish(b"public/x"), "what nothing allows is denied");
    }

    #[test]
    fn a_client_id_or_user_name_with_a_wildcard_does_not_widen_a_pattern() {
        let acl = Acl::parse(FILE).unwrap();
        for id in [&b"#"[..], b"+", b"a+b"] {
            let client = acl.for_client(id, None);
            assert!(!client.may_publish(b"devices/dev1/status"), "{id:?}");
        }
        let wild_user = acl.for_client(b"phone", Some(b"#"));
        assert!(!wild_user.may_read(b"users/alice/inbox"));
    }

    #[test]
    fn subscriptions_are_allowed_when_a_read_rule_covers_the_whole_filter() {
        let acl = Acl::parse(FILE).unwrap();
        let alice = acl.for_client(b"phone", Some(b"alice"));
        assert!(alice.may_subscribe(b"alice/#"));
        assert!(alice.may_subscribe(b"alice/+"));
        assert!(!alice.may_subscribe(b"#"), "wider than anything she may read");
        assert!(!alice.may_subscribe(b"alice/secret"));
    }

    #[test]
    fn bad_lines_are_reported_with_their_number() {
        assert_eq!(Acl::parse("topic read a\nuser\n"), Err(AclError::Syntax { line: 2 }));
        assert_eq!(Acl::parse("\n\nfrobnicate x"), Err(AclError::Syntax { line: 3 }));
        assert_eq!(Acl::parse("topic read a/#/b"), Err(AclError::Filter { line: 1, filter: "a/#/b".into() }));
        assert!(Acl::parse("pattern readwrite a/%c/%u/#").is_ok());
    }
}
