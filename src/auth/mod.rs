//! Client authentication and authorization: who may connect, what each client may publish,
//! subscribe to and receive (the ACL file, `acl.rs`; `--deny-subscribe`). Owns the password file (the format
//! `mosquitto_passwd` writes: `user:$7$iterations$salt$hash`, PBKDF2-HMAC-SHA512, base64),
//! the anonymous rule, and the enhanced-authentication methods (MQTT 5.0 4.12): the
//! `AuthExchange` hook and the one method built in, SCRAM-SHA-512 (`scram.rs`). Pure: the
//! file is parsed once at start-up.

mod acl;
mod scram;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha2::Sha512;

pub use acl::{Acl, AclError, ClientAcl, ClientAuthorization};

use crate::protocol::ConnectRefusal;

const HASH_LEN_BYTES: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum PasswordFileError {
    #[error("line {line}: expected `user:$7$iterations$salt$hash`")]
    Format { line: usize },
    #[error("line {line}: unsupported hash type ($7$ PBKDF2-SHA512 and $6$ salted SHA-512 are)")]
    UnsupportedHash { line: usize },
    #[error("line {line}: bad base64 or iteration count")]
    Encoding { line: usize },
}

/// One enhanced-authentication exchange in progress: the broker's side of a
/// challenge/response under one Authentication Method, for one connection. The shard feeds
/// it the client's Authentication Data (from CONNECT, or from the AUTH 0x19 that starts a
/// re-authentication, then from each AUTH 0x18) and sends what it answers.
pub trait AuthExchange {
    fn step(&mut self, client_data: &[u8]) -> AuthStep;

    /// After `Success`: the user the exchange proved the client to be, if the method has
    /// users. The broker authorizes the client as that user (and refuses a CONNECT whose
    /// User Name says otherwise).
    fn identity(&self) -> Option<&str> {
        None
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthStep {
    /// Send AUTH 0x18 (Continue authentication) with this data and wait for the client's.
    Continue(Bytes),
    /// Authenticated; the CONNACK (or AUTH 0x00) carries this final data, if any.
    Success(Option<Bytes>),
    /// Refused with this reason.
    Fail(ConnectRefusal),
}

/// How a password-file entry was hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HashScheme {
    /// `$7$iterations$salt$hash`: PBKDF2-HMAC-SHA512 (mosquitto_passwd's default).
    Pbkdf2,
    /// `$6$salt$hash`: SHA-512 of the password then the salt (Mosquitto before 2.0, and
    /// `mosquitto_passwd -H sha512`). Weaker; accepted so existing files keep working.
    Sha512,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct PasswordHash {
    scheme: HashScheme,
    iterations: u32,
    salt: Vec<u8>,
    hash: Vec<u8>,
}

impl PasswordHash {
    fn verify(&self, password: &[u8]) -> bool {
        let mut computed = [0u8; HASH_LEN_BYTES];
        match self.scheme {
            HashScheme::Pbkdf2 => pbkdf2::pbkdf2_hmac::<Sha512>(password, &self.salt, self.iterations, &mut computed),
            HashScheme::Sha512 => {
                use sha2::Digest;
                let mut digest = Sha512::new();
                digest.update(password);
                digest.update(&self.salt);
                computed.copy_from_slice(&digest.finalize());
            }
        }
        // Compare without an early exit so timing does not reveal the matching prefix.
        self.hash.len() == HASH_LEN_BYTES && computed.iter().zip(&self.hash).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

/// Formats one password-file line for `username` (what `ringmq --hash-password` prints).
pub fn hash_password_line(username: &str, password: &[u8], salt: &[u8], iterations: u32) -> String {
    let mut hash = [0u8; HASH_LEN_BYTES];
    pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations, &mut hash);
    format!("{username}:$7${iterations}${}${}", BASE64.encode(salt), BASE64.encode(hash))
}

#[derive(Debug, Clone, Default)]
pub struct Authenticator {
    users: Option<Arc<HashMap<String, PasswordHash>>>,
    /// Verified in place of an unknown user's entry, with the file's highest iteration
    /// count, so that a wrong user name costs what a wrong password costs and the time
    /// taken does not tell which names exist.
    decoy: Option<PasswordHash>,
    allow_anonymous: bool,
    denied_filters: Vec<Vec<u8>>,
    /// `--acl-file`: with one, what it does not allow is denied.
    acl: Option<Arc<Acl>>,
}

impl Authenticator {
    /// Anyone may connect, with or without credentials.
    pub fn anonymous() -> Authenticator {
        Authenticator { users: None, decoy: None, allow_anonymous: true, denied_filters: Vec::new(), acl: None }
    }

    /// Authorizes every client by `acl` (see `acl.rs`).
    pub fn with_acl(mut self, acl: Acl) -> Authenticator {
        self.acl = Some(Arc::new(acl));
        self
    }

    /// The rules for one client, if there is an ACL file.
    pub fn authorization_for(&self, client_id: &[u8], username: Option<&[u8]>) -> Option<ClientAuthorization> {
        self.acl.as_ref().map(|acl| ClientAuthorization::new(acl.for_client(client_id, username)))
    }

    /// Refuses SUBSCRIBE to any filter a pattern here matches when the requested filter is
    /// read as a topic: `secret/#` denies `secret/x` and `secret/+` (not `#`).
    pub fn deny_subscriptions(mut self, patterns: impl IntoIterator<Item = String>) -> Authenticator {
        self.denied_filters.extend(patterns.into_iter().map(String::into_bytes));
        self
    }

    pub fn may_subscribe(&self, filter: &[u8]) -> bool {
        !self.denied_filters.iter().any(|pattern| crate::topics::filter_matches(pattern, filter))
    }

    /// Whether a message on `topic` may be delivered at all: a denied pattern covers it
    /// whichever filter matched it, so `#` or `+/x` cannot get around `secret/#`.
    pub fn may_receive(&self, topic: &[u8]) -> bool {
        self.denied_filters.is_empty() || self.may_subscribe(topic)
    }

    pub fn from_password_file(contents: &str, allow_anonymous: bool) -> Result<Authenticator, PasswordFileError> {
        let mut users = HashMap::new();
        for (index, raw) in contents.lines().enumerate() {
            let line = index + 1;
            let raw = raw.trim();
            if raw.is_empty() || raw.starts_with('#') {
                continue;
            }
            let (user, encoded) = raw.split_once(':').ok_or(PasswordFileError::Format { line })?;
            let parts: Vec<&str> = encoded.split('$').collect();
            let entry = match parts[..] {
                ["", "7", iterations, salt, hash] => {
                    let iterations: u32 = iterations.parse().map_err(|_| PasswordFileError::Encoding { line })?;
                    if iterations == 0 {
                        return Err(PasswordFileError::Encoding { line });
                    }
                    (HashScheme::Pbkdf2, iterations, salt, hash)
                }
                ["", "6", salt, hash] => (HashScheme::Sha512, 1, salt, hash),
                ["", _, ..] if parts.len() >= 4 => return Err(PasswordFileError::UnsupportedHash { line }),
                _ => return Err(PasswordFileError::Format { line }),
            };
            let (scheme, iterations, salt, hash) = entry;
            let salt = BASE64.decode(salt).map_err(|_| PasswordFileError::Encoding { line })?;
            let hash = BASE64.decode(hash).map_err(|_| PasswordFileError::Encoding { line })?;
            if hash.len() != HASH_LEN_BYTES {
                return Err(PasswordFileError::Encoding { line });
            }
            users.insert(user.to_string(), PasswordHash { scheme, iterations, salt, hash });
        }
        let iterations = users.values().filter(|hash| hash.scheme == HashScheme::Pbkdf2).map(|hash| hash.iterations).max().unwrap_or(1);
        let decoy = PasswordHash { scheme: HashScheme::Pbkdf2, iterations, salt: vec![0; 12], hash: vec![0; HASH_LEN_BYTES] };
        Ok(Authenticator { users: Some(Arc::new(users)), decoy: Some(decoy), allow_anonymous, denied_filters: Vec::new(), acl: None })
    }

    /// The Authentication Methods this broker offers: SCRAM-SHA-512 over the password
    /// file, when there is one.
    pub fn methods(&self) -> &'static [&'static str] {
        if self.users.is_some() { &[scram::METHOD] } else { &[] }
    }

    /// A new exchange for `method`, or `None` if it is not offered (CONNACK 0x8C).
    pub fn start_exchange(&self, method: &[u8]) -> Option<Box<dyn AuthExchange>> {
        match (&self.users, method) {
            (Some(users), method) if method == scram::METHOD.as_bytes() => Some(Box::new(scram::ScramExchange::new(users.clone()))),
            _ => None,
        }
    }

    /// Decides a CONNECT's credentials. `Err` carries the CONNACK refusal
    /// (4 / 0x86 for wrong credentials, 5 / 0x87 for a client not allowed in).
    pub fn check(&self, username: Option<&[u8]>, password: Option<&[u8]>) -> Result<(), ConnectRefusal> {
        let Some(users) = &self.users else { return Ok(()) };
        let Some(username) = username else {
            return if self.allow_anonymous { Ok(()) } else { Err(ConnectRefusal::NotAuthorized) };
        };
        let known = std::str::from_utf8(username).ok().and_then(|name| users.get(name));
        // Always one verification, against the decoy when the user is unknown.
        let hash = self.hash_to_verify(known);
        let matches = hash.verify(password.unwrap_or_default());
        match (known, password) {
            (Some(_), Some(_)) if matches => Ok(()),
            _ => Err(ConnectRefusal::BadUserNameOrPassword),
        }
    }

    fn hash_to_verify<'a>(&'a self, known: Option<&'a PasswordHash>) -> &'a PasswordHash {
        known.or(self.decoy.as_ref()).expect("a password file always has a decoy")
    }

    /// Whether CONNECTs carry a password check (which the IO layer runs off the shard).
    pub fn has_password_file(&self) -> bool {
        self.users.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_file_round_trip() {
        let file = format!("# users\n{}\n", hash_password_line("alice", b"secret", b"0123456789ab", 1000));
        let auth = Authenticator::from_password_file(&file, false).unwrap();
        assert_eq!(auth.check(Some(b"alice"), Some(b"secret")), Ok(()));
        assert_eq!(auth.check(Some(b"alice"), Some(b"wrong")), Err(ConnectRefusal::BadUserNameOrPassword));
        assert_eq!(auth.check(Some(b"bob"), Some(b"secret")), Err(ConnectRefusal::BadUserNameOrPassword));
        assert_eq!(auth.check(Some(b"alice"), None), Err(ConnectRefusal::BadUserNameOrPassword));
        assert_eq!(auth.check(None, None), Err(ConnectRefusal::NotAuthorized));
        let open = Authenticator::from_password_file(&file, true).unwrap();
        assert_eq!(open.check(None, None), Ok(()));
    }

    #[test]
    fn an_unknown_user_costs_as_many_iterations_as_the_dearest_known_one() {
        let file = format!(
            "{}\n{}\n",
            hash_password_line("cheap", b"a", b"0123456789ab", 10),
            hash_password_line("dear", b"b", b"0123456789ab", 2000)
        );
        let auth = Authenticator::from_password_file(&file, false).unwrap();
        assert_eq!(auth.hash_to_verify(None).iterations, 2000);
        assert_eq!(auth.check(Some(b"nobody"), Some(b"b")), Err(ConnectRefusal::BadUserNameOrPassword));
        assert_eq!(auth.check(Some(b"dear"), Some(b"b")), Ok(()));
    }

    #[test]
    fn denied_filters() {
        let auth = Authenticator::anonymous().deny_subscriptions(["test/nosubscribe".to_string(), "secret/#".to_string()]);
        assert!(!auth.may_subscribe(b"test/nosubscribe"));
        assert!(!auth.may_subscribe(b"secret/x"));
        assert!(!auth.may_subscribe(b"secret/+"));
        assert!(auth.may_subscribe(b"test/other"));
        assert!(auth.may_subscribe(b"#"), "subscribing is allowed; delivery is what is checked");
        assert!(!auth.may_receive(b"secret/x"));
        assert!(auth.may_receive(b"public/x"));
    }

    #[test]
    fn malformed_lines_are_reported_with_their_number() {
        assert!(matches!(Authenticator::from_password_file("alice", false), Err(PasswordFileError::Format { line: 1 })));
        assert!(matches!(Authenticator::from_password_file("\nalice:$6$abc", false), Err(PasswordFileError::Format { line: 2 })));
        assert!(matches!(Authenticator::from_password_file("alice:$6$abc$def", false), Err(PasswordFileError::Encoding { line: 1 })));
        assert!(matches!(
            Authenticator::from_password_file("alice:$5$1$abc$def", false),
            Err(PasswordFileError::UnsupportedHash { line: 1 })
        ));
    }

    #[test]
    fn salted_sha512_entries_from_older_mosquitto_files_are_accepted() {
        // Written by `mosquitto_passwd -c -H sha512 -b file carol s3cret` (Mosquitto 2.0.11).
        let file = "carol:$6$XIptSvLJCJhwBWlW$sQfjfh/Pq/U4pBynXZtcUeGMPr4qS3uqhZgeww/DJCZqvdlxZunMR8MURaYELs0+CnDvVyI/D96I+/0VlolTfg==";
        let auth = Authenticator::from_password_file(file, false).unwrap();
        assert_eq!(auth.check(Some(b"carol"), Some(b"s3cret")), Ok(()));
        assert_eq!(auth.check(Some(b"carol"), Some(b"s3cret!")), Err(ConnectRefusal::BadUserNameOrPassword));
    }
}
