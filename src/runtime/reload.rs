//! What SIGHUP reloads without a restart: the password file and the ACL file (with the
//! deny patterns), rebuilt into a new `Authenticator` and handed to every shard. A file
//! that fails to load leaves the running configuration as it was, and says why.
//!
//! The hand-over is a generation number and a slot: the signal thread fills the slot and
//! bumps the number; each shard compares the number at its tick (every 100 ms) and takes
//! the new authenticator when it changed. Nothing on the delivery path is involved.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::auth::{Acl, AclError, Authenticator, PasswordFileError};
use crate::config::Config;

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
