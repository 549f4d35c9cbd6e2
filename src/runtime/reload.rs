//! What SIGHUP reloads without a restart: the password file and the ACL file (with the
//! deny patterns), rebuilt into a new `Authenticator` and handed to every shard; and the
//! TLS certificate, which is also reloaded when its files change (a certbot renewal). A
//! file that fails to load leaves the running configuration as it was, and says why.
//!
//! The authenticator's hand-over is a generation number and a slot: the signal thread
//! fills the slot and bumps the number; each shard compares the number at its tick (every
//! 100 ms) and takes the new authenticator when it changed. The certificate's slot is read
//! once per accepted TLS connection; live connections keep the configuration they began
//! with. Nothing on the delivery path is involved.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::auth::{Acl, AclError, Authenticator, PasswordFileError};
use crate::config::Config;
use crate::transport::tls::{TlsConfigs, TlsLoadError, TlsOptions};

/// How often the certificate files are checked for a change.
const TLS_FILES_CHECK_PERIOD: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum AuthLoadError {
    #[error("cannot read password file {path}")]
    PasswordFileRead { path: PathBuf, source: std::io::Error },
    #[error("password file {path}")]
    PasswordFile { path: PathBuf, source: PasswordFileError },
    #[error("cannot read ACL file {path}")]
    AclFileRead { path: PathBuf, source: std::io::Error },
    #[error("ACL file {path}")]
    AclFile { path: PathBuf, source: AclError },
}

/// Builds the authenticator from the files and flags `config` names.
pub fn load_authenticator(config: &Config) -> Result<Authenticator, AuthLoadError> {
    let mut auth = match &config.password_file {
        Some(path) => {
            let contents =
                std::fs::read_to_string(path).map_err(|source| AuthLoadError::PasswordFileRead { path: path.clone(), source })?;
            Authenticator::from_password_file(&contents, config.allow_anonymous)
                .map_err(|source| AuthLoadError::PasswordFile { path: path.clone(), source })?
        }
        None => Authenticator::anonymous(),
    };
    if let Some(path) = &config.acl_file {
        let contents = std::fs::read_to_string(path).map_err(|source| AuthLoadError::AclFileRead { path: path.clone(), source })?;
        let acl = Acl::parse(&contents).map_err(|source| AuthLoadError::AclFile { path: path.clone(), source })?;
        auth = auth.with_acl(acl);
    }
    Ok(auth.deny_subscriptions(config.deny_subscribe.iter().cloned()))
}

/// The authenticator the shards should be using, and its generation.
#[derive(Debug)]
pub struct AuthSlot {
    generation: AtomicU64,
    current: Mutex<Arc<Authenticator>>,
}

impl AuthSlot {
    pub fn new(auth: Arc<Authenticator>) -> Arc<AuthSlot> {
        Arc::new(AuthSlot { generation: AtomicU64::new(0), current: Mutex::new(auth) })
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The current authenticator (a shard calls this when the generation moved).
    pub fn current(&self) -> Arc<Authenticator> {
        self.current.lock().map(|auth| auth.clone()).unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    fn replace(&self, auth: Arc<Authenticator>) {
        match self.current.lock() {
            Ok(mut current) => *current = auth,
            Err(poisoned) => *poisoned.into_inner() = auth,
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// SIGHUP: reloads the files; on failure the running configuration stays.
    pub fn reload(&self, config: &Config) -> Result<(), AuthLoadError> {
        let auth = load_authenticator(config)?;
        self.replace(Arc::new(auth));
        Ok(())
    }
}

/// The TLS configurations new connections get, reloaded from `options`' files.
pub struct TlsSlot {
    options: Option<TlsOptions>,
    current: Mutex<Option<TlsConfigs>>,
    /// The files as they were when last loaded (or last failed to load).
    stamps: Mutex<Vec<FileStamp>>,
}

/// What tells that a file changed: a renewal replaces it (new inode, or a new symlink
/// target, which `metadata` follows) or rewrites it (new modification time or length).
#[derive(Debug, PartialEq, Eq)]
struct FileStamp(Option<(u64, SystemTime, u64)>);

impl FileStamp {
    fn of(path: &Path) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        FileStamp(std::fs::metadata(path).ok().and_then(|meta| Some((meta.ino(), meta.modified().ok()?, meta.len()))))
    }
}

impl TlsSlot {
    /// Loads the certificate at start: an error names the file, and the broker does not start.
    pub fn load(options: Option<TlsOptions>) -> Result<Arc<TlsSlot>, TlsLoadError> {
        let configs = options.as_ref().map(TlsOptions::load).transpose()?;
        let stamps = options.as_ref().map(|options| options.files().into_iter().map(FileStamp::of).collect()).unwrap_or_default();
        Ok(Arc::new(TlsSlot { options, current: Mutex::new(configs), stamps: Mutex::new(stamps) }))
    }

    /// What a new TLS connection starts with.
    pub fn current(&self) -> Option<TlsConfigs> {
        self.current.lock().map(|current| current.clone()).unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    /// Reads the files again. `Ok(false)`: no TLS configured.
    pub fn reload(&self) -> Result<bool, TlsLoadError> {
        let Some(options) = &self.options else { return Ok(false) };
        self.remember_stamps(options);
        let configs = options.load()?;
        match self.current.lock() {
            Ok(mut current) => *current = Some(configs),
            Err(poisoned) => *poisoned.into_inner() = Some(configs),
        }
        Ok(true)
    }

    fn remember_stamps(&self, options: &TlsOptions) -> bool {
        let now: Vec<FileStamp> = options.files().into_iter().map(FileStamp::of).collect();
        let mut stamps = self.stamps.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let changed = *stamps != now;
        *stamps = now;
        changed
    }

    /// Reloads when a file changed since it was last read, and says so in the log.
    fn reload_if_changed(&self) {
        let Some(options) = &self.options else { return };
        if !self.remember_stamps(options) {
            return;
        }
        // A renewal writes the certificate and the key one after the other: give the second
        // write a moment, and read again once both settle.
        std::thread::sleep(Duration::from_millis(200));
        match self.reload() {
            Ok(_) => tracing::info!(cert = %options.cert.display(), "TLS certificate files changed: reloaded; new connections use them"),
            Err(error) => {
                tracing::error!(%error, "TLS certificate files changed but do not load; connections keep the previous certificate")
            }
        }
    }

    /// Watches the files until `stop`, on a thread of its own (never a shard's).
    pub fn watch(self: Arc<Self>, stop: Arc<AtomicBool>) -> std::io::Result<Option<std::thread::JoinHandle<()>>> {
        if self.options.is_none() {
            return Ok(None);
        }
        std::thread::Builder::new()
            .name("ringmq-tls-watch".into())
            .spawn(move || {
                let mut waited = Duration::ZERO;
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                    waited += Duration::from_millis(100);
                    if waited >= TLS_FILES_CHECK_PERIOD {
                        waited = Duration::ZERO;
                        self.reload_if_changed();
                    }
                }
            })
            .map(Some)
    }
}

/// The limits SIGHUP may change while the broker runs (`ShardLimits::take_live`), handed
/// to the shards like the authenticator: a slot and a generation each shard checks at its
/// tick.
#[derive(Debug)]
pub struct LimitsSlot {
    generation: AtomicU64,
    current: Mutex<crate::shard::ShardLimits>,
}

impl LimitsSlot {
    pub fn new(limits: crate::shard::ShardLimits) -> Arc<LimitsSlot> {
        Arc::new(LimitsSlot { generation: AtomicU64::new(0), current: Mutex::new(limits) })
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn current(&self) -> crate::shard::ShardLimits {
        self.current.lock().map(|limits| limits.clone()).unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    pub fn replace(&self, limits: crate::shard::ShardLimits) {
        match self.current.lock() {
            Ok(mut current) => *current = limits,
            Err(poisoned) => *poisoned.into_inner() = limits,
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// Everything SIGHUP reloads.
#[derive(Clone)]
pub struct Reloadable {
    pub auth: Arc<AuthSlot>,
    pub tls: Arc<TlsSlot>,
    pub limits: Arc<LimitsSlot>,
}

impl Reloadable {
    /// SIGHUP: reloads each part, logging what changed and what failed (which keeps running
    /// as it was).
    pub fn reload(&self, config: &Config) {
        match self.auth.reload(config) {
            Ok(()) => tracing::info!(
                password_file = ?config.password_file,
                acl_file = ?config.acl_file,
                "SIGHUP: password file and ACL reloaded; new connections and deliveries use them"
            ),
            Err(error) => tracing::error!(error = %error_chain(&error), "SIGHUP: reload failed; the running configuration stays"),
        }
        match config.limits() {
            Ok(limits) => {
                self.limits.replace(limits);
                tracing::info!(
                    retained_messages_max = config.retained_messages_max,
                    retained_bytes_max = config.retained_bytes_max,
                    subscriptions_per_client_max = config.subscriptions_per_client_max,
                    slow_subscriber_timeout_s = config.slow_subscriber_timeout_s,
                    topic_levels_max = config.topic_levels_max,
                    topic_bytes_max = config.topic_bytes_max,
                    "SIGHUP: live limits applied"
                );
            }
            Err(error) => tracing::error!(%error, "SIGHUP: the limits do not check out; the running ones stay"),
        }
        match self.tls.reload() {
            Ok(false) => {}
            Ok(true) => tracing::info!(cert = ?config.tls_cert, "SIGHUP: TLS certificate reloaded; new connections use it"),
            Err(error) => tracing::error!(%error, "SIGHUP: TLS certificate reload failed; connections keep the previous certificate"),
        }
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
