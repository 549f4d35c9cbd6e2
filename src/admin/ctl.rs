//! `ringmq ctl`: the admin API from the command line, printing its JSON answers.
//! A blocking HTTP/1.1 request per command (the API is on loopback or behind a token).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use clap::{Parser, Subcommand};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};

#[derive(Debug, Parser)]
#[command(name = "ringmq ctl", about = "Ask a running ringmq (its --metrics-listen address) about clients and retained messages")]
pub struct Ctl {
    /// The broker's --metrics-listen address.
    #[arg(long, default_value = "127.0.0.1:9883", env = "RINGMQ_METRICS_LISTEN")]
    pub api: String,
    /// The broker's --admin-token, if it has one.
    #[arg(long, env = "RINGMQ_ADMIN_TOKEN")]
    pub token: Option<String>,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// List clients (filters combine).
    Clients {
        #[arg(long)]
        prefix: Option<String>,
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        address: Option<String>,
    },
    /// Show one client and its subscriptions.
    Client { client_id: String },
    /// Disconnect a client (5.0 clients hear the reason code; 152 = 0x98 Administrative action).
    Kick {
        client_id: String,
        #[arg(long, default_value_t = 152)]
        reason: u8,
    },
    /// List retained messages whose topic the filter matches.
    Retained {
        #[arg(long, default_value = "#")]
        filter: String,
    },
    /// Clear the retained message of a topic.
    ClearRetained { topic: String },
}

fn encode(text: &str) -> String {
    utf8_percent_encode(text, NON_ALPHANUMERIC).to_string()
}

impl Ctl {
    /// The method and path the command asks for.
    pub fn request(&self) -> (&'static str, String) {
        match &self.command {
            CtlCommand::Clients { prefix, user, address } => {
                let query: Vec<String> = [("prefix", prefix), ("user", user), ("address", address)]
                    .iter()
                    .filter_map(|(name, value)| value.as_ref().map(|value| format!("{name}={}", encode(value))))
                    .collect();
                ("GET", format!("/api/clients?{}", query.join("&")))
            }
            CtlCommand::Client { client_id } => ("GET", format!("/api/clients/{}", encode(client_id))),
            CtlCommand::Kick { client_id, reason } => ("DELETE", format!("/api/clients/{}?reason={reason}", encode(client_id))),
            CtlCommand::Retained { filter } => ("GET", format!("/api/retained?filter={}", encode(filter))),
            CtlCommand::ClearRetained { topic } => ("DELETE", format!("/api/retained/{}", encode(topic))),
        }
    }

    /// Runs the command: the status code and the JSON body, pretty-printed.
    pub fn run(&self) -> anyhow::Result<(u16, String)> {
        use anyhow::Context;
        let (method, path) = self.request();
        let addr =
            self.api.to_socket_addrs().with_context(|| format!("--api {}", self.api))?.next().context("--api resolves to nothing")?;
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).with_context(|| format!("connecting to {addr}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let authorization = self.token.as_ref().map(|token| format!("Authorization: Bearer {token}\r\n")).unwrap_or_default();
        write!(stream, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{authorization}Connection: close\r\n\r\n")?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response)?;
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut parsed = httparse::Response::new(&mut headers);
        let httparse::Status::Complete(length) = parsed.parse(&response)? else { anyhow::bail!("an incomplete answer from {addr}") };
        let status = parsed.code.unwrap_or(0);
        let body: serde_json::Value = serde_json::from_slice(&response[length..]).unwrap_or(serde_json::Value::Null);
        Ok((status, serde_json::to_string_pretty(&body)?))
    }
}
