//! SCRAM-SHA-512 (RFC 5802 with SHA-512) as an MQTT 5.0 enhanced-authentication method.
//! A `$7$` password-file entry is exactly SCRAM's SaltedPassword (PBKDF2-HMAC-SHA512 of the
//! password under the entry's salt and iterations), so one file serves both plain CONNECT
//! passwords and SCRAM; with SCRAM the password never crosses the wire and the client
//! can check the server's signature. No channel binding (`n,,` or `y,,` only).

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha512};

use super::{AuthExchange, AuthStep, HashScheme, PasswordHash};
use crate::protocol::ConnectRefusal;

pub const METHOD: &str = "SCRAM-SHA-512";

/// Iterations announced for unknown users, so that a probe cannot tell them from known ones
/// by the challenge alone.
const DECOY_ITERATIONS: u32 = 101;

pub struct ScramExchange {
    users: Arc<HashMap<String, PasswordHash>>,
    state: State,
    /// The user whose proof checked out.
    proven: Option<String>,
}

enum State {
    AwaitingClientFirst,
    AwaitingClientFinal(Challenge),
    Finished,
}

struct Challenge {
    gs2_header: String,
    client_first_bare: String,
    server_first: String,
    nonce: String,
    /// `None` for an unknown user: the exchange runs to the end and then fails.
    salted_password: Option<Vec<u8>>,
    /// The user the client claims to be (`n=`), proven once its proof checks out.
    username: String,
}

fn hmac(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut mac = <Hmac<Sha512> as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

/// `saslname` decoding: `=2C` is a comma, `=3D` an equals sign; any other `=` is invalid.
fn decode_saslname(name: &str) -> Option<String> {
    let mut decoded = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(at) = rest.find('=') {
        decoded.push_str(&rest[..at]);
        match rest.get(at + 1..at + 3)? {
            "2C" => decoded.push(','),
            "3D" => decoded.push('='),
            _ => return None,
        }
        rest = &rest[at + 3..];
    }
    decoded.push_str(rest);
    Some(decoded)
}

/// The value of attribute `key` (`k=value`) in a comma-separated SCRAM message.
fn attribute(message: &str, key: char) -> Option<&str> {
    message.split(',').find_map(|part| part.strip_prefix(key)?.strip_prefix('='))
}

impl ScramExchange {
    pub(super) fn new(users: Arc<HashMap<String, PasswordHash>>) -> ScramExchange {
        ScramExchange { users, state: State::AwaitingClientFirst, proven: None }
    }

    fn client_first(&self, message: &str) -> Result<Challenge, ConnectRefusal> {
        // gs2-header: a channel-binding flag and an (empty) authorization identity.
        let mut parts = message.splitn(3, ',');
        let (flag, authzid, bare) = (parts.next(), parts.next(), parts.next());
        let (Some(flag @ ("n" | "y")), Some(""), Some(bare)) = (flag, authzid, bare) else {
            return Err(ConnectRefusal::NotAuthorized);
        };
        if bare.starts_with("m=") {
            return Err(ConnectRefusal::NotAuthorized);
        }
        let username = attribute(bare, 'n').and_then(decode_saslname).ok_or(ConnectRefusal::NotAuthorized)?;
        let client_nonce = attribute(bare, 'r').filter(|nonce| !nonce.is_empty()).ok_or(ConnectRefusal::NotAuthorized)?;
        let server_nonce = BASE64.encode(rand::random::<[u8; 18]>());
        let nonce = format!("{client_nonce}{server_nonce}");
        let (salt, iterations, salted_password) = match self.users.get(&username) {
            // SCRAM needs the PBKDF2 salted password ($7$); a $6$ entry cannot do it and is
            // refused like an unknown user.
            Some(entry) if entry.scheme == HashScheme::Pbkdf2 => (entry.salt.clone(), entry.iterations, Some(entry.hash.clone())),
            _ => (rand::random::<[u8; 12]>().to_vec(), DECOY_ITERATIONS, None),
        };
        let server_first = format!("r={nonce},s={},i={iterations}", BASE64.encode(salt));
        Ok(Challenge {
            gs2_header: format!("{flag},,"),
            client_first_bare: bare.to_string(),
            server_first,
            nonce,
            salted_password,
            username,
        })
    }

    fn client_final(challenge: &Challenge, message: &str) -> Result<Bytes, ConnectRefusal> {
        let refused = ConnectRefusal::BadUserNameOrPassword;
        let (without_proof, proof) = message.rsplit_once(",p=").ok_or(refused)?;
        let binding = attribute(without_proof, 'c').and_then(|c| BASE64.decode(c).ok()).ok_or(refused)?;
        if binding != challenge.gs2_header.as_bytes() || attribute(without_proof, 'r') != Some(challenge.nonce.as_str()) {
            return Err(refused);
        }
        let proof = BASE64.decode(proof).map_err(|_| refused)?;
        let salted_password = challenge.salted_password.as_deref().ok_or(refused)?;
        let auth_message = format!("{},{},{}", challenge.client_first_bare, challenge.server_first, without_proof);
        let stored_key = Sha512::digest(hmac(salted_password, b"Client Key"));
        let client_signature = hmac(&stored_key, auth_message.as_bytes());
        if proof.len() != client_signature.len() {
            return Err(refused);
        }
        let client_key: Vec<u8> = proof.iter().zip(&client_signature).map(|(p, s)| p ^ s).collect();
        // Compared without an early exit, as for plain passwords.
        let recomputed = Sha512::digest(&client_key);
        if recomputed.iter().zip(stored_key.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) != 0 {
            return Err(refused);
        }
        let server_signature = hmac(&hmac(salted_password, b"Server Key"), auth_message.as_bytes());
        Ok(Bytes::from(format!("v={}", BASE64.encode(server_signature))))
    }
}

impl AuthExchange for ScramExchange {
    fn step(&mut self, client_data: &[u8]) -> AuthStep {
        let Ok(message) = std::str::from_utf8(client_data) else {
            self.state = State::Finished;
            return AuthStep::Fail(ConnectRefusal::NotAuthorized);
        };
        match std::mem::replace(&mut self.state, State::Finished) {
            State::AwaitingClientFirst => match self.client_first(message) {
                Ok(challenge) => {
                    let reply = Bytes::from(challenge.server_first.clone());
                    self.state = State::AwaitingClientFinal(challenge);
                    AuthStep::Continue(reply)
                }
                Err(refusal) => AuthStep::Fail(refusal),
            },
            State::AwaitingClientFinal(challenge) => match Self::client_final(&challenge, message) {
                Ok(server_final) => {
                    self.proven = Some(challenge.username);
                    AuthStep::Success(Some(server_final))
                }
                Err(refusal) => AuthStep::Fail(refusal),
            },
            State::Finished => AuthStep::Fail(ConnectRefusal::NotAuthorized),
        }
    }

    fn identity(&self) -> Option<&str> {
        self.proven.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Authenticator, hash_password_line};

    /// The client's side of SCRAM-SHA-512, as a test would run it.
    fn client_final(password: &str, client_first_bare: &str, server_first: &str) -> (String, Vec<u8>) {
        let salt = BASE64.decode(attribute(server_first, 's').unwrap()).unwrap();
        let iterations: u32 = attribute(server_first, 'i').unwrap().parse().unwrap();
        let mut salted = [0u8; 64];
        pbkdf2::pbkdf2_hmac::<Sha512>(password.as_bytes(), &salt, iterations, &mut salted);
        let without_proof = format!("c=biws,r={}", attribute(server_first, 'r').unwrap());
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let client_key = hmac(&salted, b"Client Key");
        let signature = hmac(&Sha512::digest(&client_key), auth_message.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(&signature).map(|(k, s)| k ^ s).collect();
        let server_signature = hmac(&hmac(&salted, b"Server Key"), auth_message.as_bytes());
        (format!("{without_proof},p={}", BASE64.encode(proof)), server_signature)
    }

    fn authenticator() -> Authenticator {
        let file = hash_password_line("al,ice", b"s3cret", b"0123456789ab", 1000);
        Authenticator::from_password_file(&file, false).unwrap()
    }

    fn run(password: &str, user: &str) -> (AuthStep, Vec<u8>) {
        let mut exchange = authenticator().start_exchange(METHOD.as_bytes()).expect("offered");
        let bare = format!("n={user},r=fyko+d2lbbFgONRv9qkxdawL");
        let AuthStep::Continue(server_first) = exchange.step(format!("n,,{bare}").as_bytes()) else { panic!("challenge") };
        let server_first = std::str::from_utf8(&server_first).unwrap().to_string();
        assert!(server_first.starts_with("r=fyko+d2lbbFgONRv9qkxdawL"), "the server extends the client's nonce");
        let (client_final, expected_signature) = client_final(password, &bare, &server_first);
        (exchange.step(client_final.as_bytes()), expected_signature)
    }

    #[test]
    fn right_password_succeeds_and_the_server_proves_it_knows_it_too() {
        let (step, expected) = run("s3cret", "al=2Cice");
        let AuthStep::Success(Some(server_final)) = step else { panic!("{step:?}") };
        assert_eq!(server_final, Bytes::from(format!("v={}", BASE64.encode(expected))));
    }

    #[test]
    fn wrong_password_and_unknown_user_fail_alike() {
        assert_eq!(run("wrong", "al=2Cice").0, AuthStep::Fail(ConnectRefusal::BadUserNameOrPassword));
        assert_eq!(run("s3cret", "mallory").0, AuthStep::Fail(ConnectRefusal::BadUserNameOrPassword));
    }

    #[test]
    fn malformed_messages_are_refused() {
        let auth = authenticator();
        for first in ["", "p=tls-unique,,n=a,r=x", "n,a=bob,n=a,r=x", "n,,m=ext,n=a,r=x", "n,,n=a", "n,,n=a=zz,r=x"] {
            let mut exchange = auth.start_exchange(METHOD.as_bytes()).unwrap();
            assert!(matches!(exchange.step(first.as_bytes()), AuthStep::Fail(_)), "{first:?}");
        }
        let mut exchange = auth.start_exchange(METHOD.as_bytes()).unwrap();
        assert!(matches!(exchange.step(b"n,,n=al=2Cice,r=abc"), AuthStep::Continue(_)));
        assert!(matches!(exchange.step(b"c=biws,r=not-the-nonce,p=AAAA"), AuthStep::Fail(_)));
        assert!(matches!(exchange.step(b"anything"), AuthStep::Fail(_)), "a finished exchange stays finished");
        assert!(auth.start_exchange(b"SCRAM-SHA-1").is_none());
        assert!(Authenticator::anonymous().start_exchange(METHOD.as_bytes()).is_none(), "no password file, no SCRAM");
    }
}
