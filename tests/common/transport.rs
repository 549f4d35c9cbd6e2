//! Client-side transports for the raw test client: TLS (rustls), WebSocket (tungstenite)
//! and both; and a small PKI (rcgen) written to a temporary directory: a CA, the broker's
//! certificate, client certificates good and bad.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use tungstenite::protocol::Message;

/// The test client's byte stream.
pub enum ClientStream {
    Tcp(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
    WebSocket(Box<WsStream>),
}

impl ClientStream {
    /// The TCP socket underneath (for timeouts and shutdown).
    pub fn socket(&self) -> &TcpStream {
        match self {
            ClientStream::Tcp(stream) => stream,
            ClientStream::Tls(stream) => stream.get_ref(),
            ClientStream::WebSocket(stream) => stream.socket(),
        }
    }
}

impl Read for ClientStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            ClientStream::Tcp(stream) => stream.read(buf),
            ClientStream::Tls(stream) => stream.read(buf),
            ClientStream::WebSocket(stream) => stream.read(buf),
        }
    }
}

impl Write for ClientStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            ClientStream::Tcp(stream) => stream.write(buf),
            ClientStream::Tls(stream) => stream.write(buf),
            ClientStream::WebSocket(stream) => stream.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            ClientStream::Tcp(stream) => stream.flush(),
            ClientStream::Tls(stream) => stream.flush(),
            ClientStream::WebSocket(stream) => stream.flush(),
        }
    }
}

/// What a WebSocket rides on: TCP or TLS.
pub enum Lower {
    Tcp(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Read for Lower {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Lower::Tcp(stream) => stream.read(buf),
            Lower::Tls(stream) => stream.read(buf),
        }
    }
}

impl Write for Lower {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Lower::Tcp(stream) => stream.write(buf),
            Lower::Tls(stream) => stream.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Lower::Tcp(stream) => stream.flush(),
            Lower::Tls(stream) => stream.flush(),
        }
    }
}

/// MQTT bytes over WebSocket binary messages: each write one message, reads the payloads
/// in order.
pub struct WsStream {
    socket: tungstenite::WebSocket<Lower>,
    unread: Vec<u8>,
}

impl WsStream {
    pub fn socket(&self) -> &TcpStream {
        match self.socket.get_ref() {
            Lower::Tcp(stream) => stream,
            Lower::Tls(stream) => stream.get_ref(),
        }
    }

    /// The WebSocket itself, for frames no MQTT client would send.
    pub fn websocket(&mut self) -> &mut tungstenite::WebSocket<Lower> {
        &mut self.socket
    }
}

impl Read for WsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.unread.is_empty() {
            match self.socket.read() {
                Ok(Message::Binary(payload)) => self.unread.extend_from_slice(&payload),
                Ok(Message::Close(_)) => return Ok(0),
                Ok(_) => {}
                Err(tungstenite::Error::Io(error)) => return Err(error),
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => return Ok(0),
                Err(error) => return Err(io::Error::other(error)),
            }
        }
        let count = buf.len().min(self.unread.len());
        buf[..count].copy_from_slice(&self.unread[..count]);
        self.unread.drain(..count);
        Ok(count)
    }
}

impl Write for WsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.socket.send(Message::binary(buf.to_vec())).map_err(io::Error::other)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.socket.flush().map_err(io::Error::other)
    }
}

/// A TLS connection to `addr`, handshake done (an `Err` is the handshake's failure).
pub fn tls_connect(addr: SocketAddr, config: Arc<ClientConfig>) -> io::Result<StreamOwned<ClientConnection, TcpStream>> {
    let tcp = TcpStream::connect(addr)?;
    tcp.set_nodelay(true)?;
    let name = ServerName::IpAddress(addr.ip().into());
    let connection = ClientConnection::new(config, name).map_err(io::Error::other)?;
    let mut stream = StreamOwned::new(connection, tcp);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    // TLS 1.3 reports a refused client certificate only after the client's handshake
    // ends: read once so it surfaces here (a broker that accepted sends a session ticket
    // or nothing, both fine).
    stream.sock.set_read_timeout(Some(std::time::Duration::from_millis(300)))?;
    match stream.conn.complete_io(&mut stream.sock) {
        Err(error) if !matches!(error.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => return Err(error),
        _ => {}
    }
    stream.sock.set_read_timeout(None)?;
    Ok(stream)
}

/// A WebSocket to `ws://addr/path` (or over `tls`), subprotocol `mqtt`.
pub fn ws_connect(addr: SocketAddr, path: &str, tls: Option<Arc<ClientConfig>>) -> io::Result<WsStream> {
    let lower = match tls {
        None => {
            let tcp = TcpStream::connect(addr)?;
            tcp.set_nodelay(true)?;
            Lower::Tcp(tcp)
        }
        Some(config) => Lower::Tls(Box::new(tls_connect(addr, config)?)),
    };
    let scheme = if matches!(lower, Lower::Tls(_)) { "wss" } else { "ws" };
    let request = tungstenite::http::Request::builder()
        .uri(format!("{scheme}://{addr}{path}"))
        .header("Host", addr.to_string())
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Version", "13")
        .header("Sec-WebSocket-Key", tungstenite::handshake::client::generate_key())
        .header("Sec-WebSocket-Protocol", "mqtt")
        .body(())
        .map_err(io::Error::other)?;
    let (socket, response) = tungstenite::client::client(request, lower).map_err(io::Error::other)?;
    let protocol = response.headers().get("Sec-WebSocket-Protocol").and_then(|value| value.to_str().ok());
    if protocol != Some("mqtt") {
        return Err(io::Error::other(format!("subprotocol {protocol:?}, expected mqtt")));
    }
    Ok(WsStream { socket, unread: Vec::new() })
}

/// A CA, the broker's certificate for 127.0.0.1 and client certificates, as PEM files.
pub struct Pki {
    pub dir: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
}

/// One certificate and its key, as files and as rustls values.
pub struct Identity {
    pub cert: PathBuf,
    pub key: PathBuf,
    chain: Vec<CertificateDer<'static>>,
    private_key: PrivateKeyDer<'static>,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("ringmq-pki-{name}-{}-{}", std::process::id(), super::rand_suffix()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let ca = Self::new_ca(&format!("ringmq test CA {name}"));
        std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write CA");
        Pki { dir, ca }
    }

    fn new_ca(common_name: &str) -> CertifiedIssuer<'static, KeyPair> {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA")
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The broker's certificate: 127.0.0.1 and localhost.
    pub fn server(&self, file_stem: &str) -> Identity {
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        params.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().expect("ip")));
        params.distinguished_name.push(DnType::CommonName, file_stem);
        self.issue(file_stem, params, &self.ca)
    }

    /// A client certificate with this Common Name and an e-mail SAN `<cn>@example.test`.
    pub fn client(&self, common_name: &str) -> Identity {
        self.issue(common_name, Self::client_params(common_name), &self.ca)
    }

    /// A client certificate that expired years ago.
    pub fn expired_client(&self, common_name: &str) -> Identity {
        let mut params = Self::client_params(common_name);
        params.not_before = rcgen::date_time_ymd(2001, 1, 1);
        params.not_after = rcgen::date_time_ymd(2002, 1, 1);
        self.issue(&format!("{common_name}-expired"), params, &self.ca)
    }

    /// A client certificate from a CA the broker does not trust.
    pub fn foreign_client(&self, common_name: &str) -> Identity {
        let foreign = Self::new_ca("someone else's CA");
        self.issue(&format!("{common_name}-foreign"), Self::client_params(common_name), &foreign)
    }

    fn client_params(common_name: &str) -> CertificateParams {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.subject_alt_names.push(SanType::Rfc822Name(format!("{common_name}@example.test").try_into().expect("ia5")));
        params
    }

    fn issue(&self, file_stem: &str, params: CertificateParams, issuer: &CertifiedIssuer<'_, KeyPair>) -> Identity {
        let key = KeyPair::generate().expect("key");
        let certificate = params.signed_by(&key, issuer).expect("sign");
        let (cert, key_path) = (self.dir.join(format!("{file_stem}.pem")), self.dir.join(format!("{file_stem}.key")));
        std::fs::write(&cert, certificate.pem()).expect("write cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        Identity {
            cert,
            key: key_path,
            chain: vec![certificate.der().clone()],
            private_key: PrivateKeyDer::try_from(key.serialize_der()).expect("key der"),
        }
    }

    /// A client configuration trusting this CA, presenting `identity` if given.
    pub fn client_config(&self, identity: Option<&Identity>) -> Arc<ClientConfig> {
        client_config_trusting(&self.ca_path(), identity, &[])
    }
}

/// A client configuration trusting the CA in `ca`, offering `alpn`.
pub fn client_config_trusting(ca: &Path, identity: Option<&Identity>, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = RootCertStore::empty();
    for certificate in CertificateDer::pem_file_iter(ca).expect("CA file") {
        roots.add(certificate.expect("CA certificate")).expect("add CA");
    }
    let builder = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let mut config = match identity {
        Some(identity) => builder.with_client_auth_cert(identity.chain.clone(), identity.private_key.clone_key()).expect("client auth"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    Arc::new(config)
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
