//! The admin API, on the `--metrics-listen` listener: JSON over HTTP to list and inspect
//! clients, disconnect one, and list and clear retained messages. Owns the routes and the
//! access rule (`--admin-token`, or loopback peers only without one); the shards answer
//! through the desk (`desk.rs`).
//!
//! - `GET /api/clients?prefix=P&user=U&address=A`: clients on every shard (no
//!   subscriptions listed).
//! - `GET /api/clients/<id>`: one client, with its subscriptions; 404 if unknown.
//! - `DELETE /api/clients/<id>?reason=152`: closes its connection (5.0 clients hear the
//!   reason code, 0x98 Administrative action by default); 404 if not connected.
//! - `GET /api/retained?filter=F`: retained topics matching F (default `#`).
//! - `DELETE /api/retained/<topic>`: clears a retained message; 404 if none.
//!
//! Client ids and topics in paths are percent-encoded (`/` as `%2F` in a client id).

pub mod ctl;
pub mod desk;

use std::net::SocketAddr;

use bytes::Bytes;
use percent_encoding::percent_decode_str;

use crate::protocol::ReasonCode;
use crate::shard::admin::{AdminAnswer, AdminQuery, ClientInfo, RetainedInfo};
pub use desk::AdminDesk;

/// An HTTP answer: status line and JSON body.
pub struct Reply {
    pub status: &'static str,
    pub body: String,
}

fn reply(status: &'static str, body: serde_json::Value) -> Reply {
    Reply { status, body: body.to_string() }
}

fn decode(text: &str) -> String {
    percent_decode_str(text).decode_utf8_lossy().into_owned()
}

fn query_value(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| decode(&value.replace('+', " ")))
}

/// Who may use the API: the bearer token when one is configured, loopback peers otherwise.
pub fn allowed(peer: SocketAddr, token: Option<&str>, authorization: Option<&[u8]>) -> bool {
    match token {
        Some(token) => authorization.and_then(|value| value.strip_prefix(b"Bearer ")).is_some_and(|given| given == token.as_bytes()),
        None => peer.ip().is_loopback(),
    }
}

/// Answers one API request (`path` after `/api`, with its query).
pub fn handle(desk: &AdminDesk, method: &str, path: &str) -> Reply {
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    let unavailable = || reply("503 Service Unavailable", serde_json::json!({"error": "a shard did not answer in time"}));
    match (method, path) {
        ("GET", "/clients") => {
            let listing = AdminQuery::Clients {
                prefix: query_value(query, "prefix").unwrap_or_default(),
                user: query_value(query, "user"),
                address: query_value(query, "address"),
            };
            let Some(answers) = desk.ask(&listing, None) else { return unavailable() };
            let mut clients: Vec<ClientInfo> = answers
                .into_iter()
                .flat_map(|answer| match answer {
                    AdminAnswer::Clients(clients) => clients,
                    _ => Vec::new(),
                })
                .collect();
            clients.sort_by(|a, b| a.client_id.cmp(&b.client_id));
            reply("200 OK", serde_json::json!(clients))
        }
        ("GET", "/retained") => {
            let filter = query_value(query, "filter").unwrap_or_else(|| "#".into());
            let Some(answers) = desk.ask(&AdminQuery::Retained { filter: Bytes::from(filter) }, Some(&[0])) else { return unavailable() };
            let found: Vec<RetainedInfo> = answers
                .into_iter()
                .flat_map(|answer| match answer {
                    AdminAnswer::Retained(found) => found,
                    _ => Vec::new(),
                })
                .collect();
            reply("200 OK", serde_json::json!(found))
        }
        (method, path) if path.starts_with("/clients/") => {
            let client_id = Bytes::from(decode(&path["/clients/".len()..]));
            match method {
                "GET" => {
                    let Some(answers) = desk.ask(&AdminQuery::Client { client_id }, None) else { return unavailable() };
                    let found = answers.into_iter().find_map(|answer| match answer {
                        AdminAnswer::Clients(mut clients) if !clients.is_empty() => Some(clients.remove(0)),
                        _ => None,
                    });
                    match found {
                        Some(client) => reply("200 OK", serde_json::json!(client)),
                        None => reply("404 Not Found", serde_json::json!({"error": "no such client"})),
                    }
                }
                "DELETE" => {
                    let reason = query_value(query, "reason")
                        .and_then(|code| code.parse::<u8>().ok())
                        .map_or(ReasonCode::ADMINISTRATIVE_ACTION, ReasonCode);
                    let Some(answers) = desk.ask(&AdminQuery::Disconnect { client_id, reason }, None) else { return unavailable() };
                    if answers.contains(&AdminAnswer::Done(true)) {
                        reply("200 OK", serde_json::json!({"disconnected": true, "reason": reason.0}))
                    } else {
                        reply("404 Not Found", serde_json::json!({"error": "no such connected client"}))
                    }
                }
                _ => reply("405 Method Not Allowed", serde_json::json!({"error": "GET or DELETE"})),
            }
        }
        ("DELETE", path) if path.starts_with("/retained/") => {
            let topic = Bytes::from(decode(&path["/retained/".len()..]));
            let Some(answers) = desk.ask(&AdminQuery::ClearRetained { topic }, Some(&[0])) else { return unavailable() };
            if answers.contains(&AdminAnswer::Done(true)) {
                reply("200 OK", serde_json::json!({"cleared": true}))
            } else {
                reply("404 Not Found", serde_json::json!({"error": "no retained message on that topic"}))
            }
        }
        _ => reply("404 Not Found", serde_json::json!({"error": "unknown API path"})),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_needs_the_token_or_loopback() {
        let local: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let remote: SocketAddr = "10.0.0.5:9".parse().unwrap();
        assert!(allowed(local, None, None));
        assert!(!allowed(remote, None, None));
        assert!(allowed(remote, Some("s3cret"), Some(b"Bearer s3cret")));
        assert!(!allowed(local, Some("s3cret"), None), "with a token, loopback needs it too");
        assert!(!allowed(remote, Some("s3cret"), Some(b"Bearer wrong")));
    }

    #[test]
    fn query_values_are_percent_decoded() {
        assert_eq!(query_value("prefix=a%2Fb&user=bob", "prefix").as_deref(), Some("a/b"));
        assert_eq!(query_value("prefix=a", "user"), None);
    }
}
