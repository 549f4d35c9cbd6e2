//! TLS on a connection, sans-IO: rustls's `ServerConnection` fed the bytes the socket read
//! and drained of the bytes to write. Also the certificate set-up (`TlsOptions` to rustls
//! configurations) and the client identity a certificate proves.
//!
//! Why not futures-rustls: it wraps one stream that one task both reads and writes, and
//! our connections have a reader task and a writer task on the socket's two halves. Fed by
//! both tasks through one sans-IO state, neither task waits on the other's readiness.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::BytesMut;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::TransportError;

/// Plaintext drained from rustls per step.
const PLAINTEXT_CHUNK_BYTES: usize = 16 * 1024;

/// The certificate files and options: what `--tls-*` say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsOptions {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Client certificates are verified against these CAs (mTLS).
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: a client without a certificate is still let in (and then
    /// authenticates as any other client would).
    pub client_certificate_optional: bool,
    pub username_from: UsernameFrom,
}

/// Which part of a verified client certificate becomes the MQTT user name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UsernameFrom {
    /// The certificate proves nothing about the user: the CONNECT's credentials count.
    Off,
    /// The subject's Common Name (Mosquitto's `use_identity_as_username`).
    Cn,
    /// The first DNS name, e-mail address or URI in the Subject Alternative Name.
    San,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsLoadError {
    #[error("cannot read TLS certificate file {path}: {source}")]
    Certificate { path: PathBuf, source: rustls_pki_types::pem::Error },
    #[error("TLS certificate file {path} holds no certificate")]
    NoCertificate { path: PathBuf },
    #[error("cannot read TLS key file {path}: {source}")]
    Key { path: PathBuf, source: rustls_pki_types::pem::Error },
    #[error("TLS client CA file {path}: {why}")]
    ClientCa { path: PathBuf, why: String },
    #[error("TLS certificate {cert} with key {key}: {source}")]
    Mismatch { cert: PathBuf, key: PathBuf, source: rustls::Error },
}

/// What one certificate set-up serves: the two listener kinds differ only in ALPN.
#[derive(Clone)]
pub struct TlsConfigs {
    /// `mqtts://`: ALPN `mqtt` (a client offering other protocols only is refused).
    pub mqtt: Arc<ServerConfig>,
    /// `wss://`: ALPN `http/1.1`, what browsers offer.
    pub websocket: Arc<ServerConfig>,
    pub username_from: UsernameFrom,
}

impl std::fmt::Debug for TlsConfigs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfigs").field("username_from", &self.username_from).finish_non_exhaustive()
    }
}

impl TlsOptions {
    /// Reads the files and builds the configurations. Every error names its file.
    pub fn load(&self) -> Result<TlsConfigs, TlsLoadError> {
        let chain = read_chain(&self.cert)?;
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(|source| TlsLoadError::Key { path: self.key.clone(), source })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = match &self.client_ca {
            None => WebPkiClientVerifier::no_client_auth(),
            Some(path) => {
                let client_ca = |why: String| TlsLoadError::ClientCa { path: path.clone(), why };
                let mut roots = RootCertStore::empty();
                for certificate in read_chain(path).map_err(|error| client_ca(error.to_string()))? {
                    roots.add(certificate).map_err(|error| client_ca(error.to_string()))?;
                }
                let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
                let builder = if self.client_certificate_optional { builder.allow_unauthenticated() } else { builder };
                builder.build().map_err(|error| client_ca(error.to_string()))?
            }
        };
        let build = |alpn: &[u8]| -> Result<Arc<ServerConfig>, TlsLoadError> {
            let mut config = ServerConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                .map_err(|source| TlsLoadError::Mismatch { cert: self.cert.clone(), key: self.key.clone(), source })?
                .with_client_cert_verifier(verifier.clone())
                .with_single_cert(chain.clone(), key.clone_key())
                .map_err(|source| TlsLoadError::Mismatch { cert: self.cert.clone(), key: self.key.clone(), source })?;
            config.alpn_protocols = vec![alpn.to_vec()];
            Ok(Arc::new(config))
        };
        Ok(TlsConfigs { mqtt: build(b"mqtt")?, websocket: build(b"http/1.1")?, username_from: self.username_from })
    }

    /// The files a change of which means "reload".
    pub fn files(&self) -> Vec<&Path> {
        [Some(self.cert.as_path()), Some(self.key.as_path()), self.client_ca.as_deref()].into_iter().flatten().collect()
    }
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsLoadError> {
    let chain = CertificateDer::pem_file_iter(path)
        .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsLoadError::Certificate { path: path.to_path_buf(), source })?;
    if chain.is_empty() {
        return Err(TlsLoadError::NoCertificate { path: path.to_path_buf() });
    }
    Ok(chain)
}

/// One TLS connection's state.
pub struct TlsLayer {
    connection: ServerConnection,
    username_from: UsernameFrom,
}

impl TlsLayer {
    pub fn new(config: Arc<ServerConfig>, username_from: UsernameFrom) -> Result<TlsLayer, TransportError> {
        let mut connection = ServerConnection::new(config).map_err(TransportError::Tls)?;
        // What we are handed to send is already bounded by the connection's output bound.
        connection.set_buffer_limit(None);
        Ok(TlsLayer { connection, username_from })
    }

    pub fn is_handshaking(&self) -> bool {
        self.connection.is_handshaking()
    }

    /// Ciphertext from the socket; plaintext to `plain`, records to send back (handshake,
    /// alerts) to `output`. `Ok(false)`: the peer closed the TLS session.
    pub fn receive(&mut self, mut ciphertext: &[u8], plain: &mut BytesMut, output: &mut Vec<u8>) -> Result<bool, TransportError> {
        let mut open = true;
        while !ciphertext.is_empty() {
            let processed = self
                .connection
                .read_tls(&mut ciphertext)
                .map_err(|error| TransportError::Tls(rustls::Error::General(error.to_string())))
                .and_then(|_| self.connection.process_new_packets().map_err(TransportError::Tls));
            if let Err(error) = processed {
                // The alert saying why goes out before we close.
                self.write_records(output);
                return Err(error);
            }
            open &= self.drain_plaintext(plain)?;
        }
        self.write_records(output);
        Ok(open)
    }

    fn drain_plaintext(&mut self, plain: &mut BytesMut) -> Result<bool, TransportError> {
        let mut chunk = [0u8; PLAINTEXT_CHUNK_BYTES];
        loop {
            match self.connection.reader().read(&mut chunk) {
                Ok(0) => return Ok(false),
                Ok(count) => plain.extend_from_slice(&chunk[..count]),
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => return Ok(true),
                Err(_) => return Ok(false),
            }
        }
    }

    /// Plaintext to send, encrypted into `output`.
    pub fn send(&mut self, plain: &[u8], output: &mut Vec<u8>) -> Result<(), TransportError> {
        self.connection.writer().write_all(plain).map_err(|error| TransportError::Tls(rustls::Error::General(error.to_string())))?;
        self.write_records(output);
        Ok(())
    }

    /// Our side ends: close_notify into `output`.
    pub fn close(&mut self, output: &mut Vec<u8>) {
        self.connection.send_close_notify();
        self.write_records(output);
    }

    fn write_records(&mut self, output: &mut Vec<u8>) {
        while self.connection.wants_write() {
            if self.connection.write_tls(output).is_err() {
                break;
            }
        }
    }

    /// The user name the client's verified certificate gives (`--tls-username-from`).
    pub fn certificate_username(&self) -> Option<String> {
        if self.username_from == UsernameFrom::Off {
            return None;
        }
        let leaf = self.connection.peer_certificates()?.first()?;
        username_in_certificate(leaf, self.username_from)
    }
}

/// The user name a DER certificate carries, by `from`.
pub fn username_in_certificate(der: &[u8], from: UsernameFrom) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    let (_, certificate) = x509_parser::parse_x509_certificate(der).ok()?;
    match from {
        UsernameFrom::Off => None,
        UsernameFrom::Cn => certificate.subject().iter_common_name().next()?.as_str().ok().map(str::to_string),
        UsernameFrom::San => certificate.subject_alternative_name().ok()??.value.general_names.iter().find_map(|name| match name {
            GeneralName::DNSName(name) | GeneralName::RFC822Name(name) | GeneralName::URI(name) => Some(name.to_string()),
            _ => None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair, SanType};
    use rustls::ClientConnection;
    use rustls::pki_types::ServerName;

    fn certificate(common_name: &str, sans: Vec<SanType>) -> (rcgen::Certificate, KeyPair) {
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.subject_alt_names = sans;
        let key = KeyPair::generate().unwrap();
        (params.self_signed(&key).unwrap(), key)
    }

    /// The broker's layer and a rustls client exchanging bytes in memory.
    fn pair() -> (TlsLayer, ClientConnection) {
        let (cert, key) = certificate("server", vec![SanType::DnsName("localhost".try_into().unwrap())]);
        let dir = std::env::temp_dir().join(format!("ringmq-tls-unit-{}-{}", std::process::id(), rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
        let options = TlsOptions {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            client_ca: None,
            client_certificate_optional: false,
            username_from: UsernameFrom::Off,
        };
        let configs = options.load().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let mut roots = RootCertStore::empty();
        roots.add(cert.der().clone()).unwrap();
        let client_config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let client = ClientConnection::new(Arc::new(client_config), ServerName::try_from("localhost").unwrap()).unwrap();
        (TlsLayer::new(configs.mqtt, UsernameFrom::Off).unwrap(), client)
    }

    /// Client records to the layer, one byte at a time (records split anywhere).
    fn to_server(client: &mut ClientConnection, server: &mut TlsLayer, plain: &mut BytesMut, output: &mut Vec<u8>) {
        let mut records = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut records).unwrap();
        }
        for byte in records {
            assert!(server.receive(&[byte], plain, output).unwrap());
        }
    }

    #[test]
    fn handshake_and_data_both_ways_with_records_split_anywhere() {
        let (mut server, mut client) = pair();
        let (mut plain, mut output) = (BytesMut::new(), Vec::new());
        while client.is_handshaking() {
            to_server(&mut client, &mut server, &mut plain, &mut output);
            client.read_tls(&mut &output[..]).unwrap();
            client.process_new_packets().unwrap();
            output.clear();
        }
        client.writer().write_all(b"CONNECT bytes").unwrap();
        to_server(&mut client, &mut server, &mut plain, &mut output);
        assert_eq!(&plain[..], b"CONNECT bytes");
        assert!(!server.is_handshaking());
        // What the server sent meanwhile (TLS 1.3 session tickets) comes first.
        server.send(b"CONNACK bytes", &mut output).unwrap();
        client.read_tls(&mut &output[..]).unwrap();
        client.process_new_packets().unwrap();
        let mut received = [0u8; 64];
        let count = client.reader().read(&mut received).unwrap();
        assert_eq!(&received[..count], b"CONNACK bytes");
        // Our close_notify ends the client's stream cleanly.
        output.clear();
        server.close(&mut output);
        client.read_tls(&mut &output[..]).unwrap();
        client.process_new_packets().unwrap();
        assert_eq!(client.reader().read(&mut received).unwrap(), 0);
    }

    #[test]
    fn garbage_fails_with_an_alert_to_send() {
        let (mut server, _) = pair();
        let (mut plain, mut output) = (BytesMut::new(), Vec::new());
        assert!(server.receive(b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00", &mut plain, &mut output).is_err());
        assert_eq!(output.first(), Some(&0x15), "an alert record");
        assert!(plain.is_empty());
    }

    #[test]
    fn user_names_come_from_the_common_name_or_the_first_usable_alternative_name() {
        let sans = vec![SanType::IpAddress("127.0.0.1".parse().unwrap()), SanType::Rfc822Name("alice@example.test".try_into().unwrap())];
        let (cert, _) = certificate("alice-cn", sans);
        assert_eq!(username_in_certificate(cert.der(), UsernameFrom::Cn).as_deref(), Some("alice-cn"));
        assert_eq!(username_in_certificate(cert.der(), UsernameFrom::San).as_deref(), Some("alice@example.test"));
        assert_eq!(username_in_certificate(cert.der(), UsernameFrom::Off), None);
        let (bare, _) = certificate("only-cn", vec![]);
        assert_eq!(username_in_certificate(bare.der(), UsernameFrom::San), None, "no SAN: no name, not the CN");
        assert_eq!(username_in_certificate(b"not DER", UsernameFrom::Cn), None);
    }
}
