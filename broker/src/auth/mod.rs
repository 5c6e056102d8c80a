//! Who may connect and what they may do: `auth.password_file` ([`passwords`]), the MQTT 5.0
//! AUTH exchange ([`enhanced`]), and topic access from a Mosquitto-style `acl_file` ([`acl`]).

pub mod acl;
pub mod enhanced;
mod filter_algebra;
pub mod passwords;

use std::path::Path;
use std::sync::{Arc, RwLock};

use crate::locks::{read, write};
use acl::{Access, Acl, AclLoadError};
use passwords::{PasswordFile, PasswordFileError};

/// The ACL and password file in force, each replaced whole on reload (SIGHUP); readers clone
/// the `Arc` under a short read lock, so a reload never waits for a check and never drops a
/// connection. Shared by the connection tasks (credentials, PUBLISH and SUBSCRIBE checks) and
/// the router (the read check of every delivery).
#[derive(Debug, Default)]
pub struct AccessControl {
    /// `auth.acl_file`, if configured.
    acl: RwLock<Option<Arc<Acl>>>,
    /// `auth.password_file`, if configured.
    passwords: RwLock<Option<Arc<PasswordFile>>>,
    /// Recent failed logins per source address, to slow password guessing.
    pub failed_logins: FailedLogins,
}

impl AccessControl {
    /// Access control with an ACL and a password file, both already loaded by the caller.
    pub fn new(acl: Option<Acl>, passwords: Option<PasswordFile>) -> AccessControl {
        AccessControl {
            acl: RwLock::new(acl.map(Arc::new)),
            passwords: RwLock::new(passwords.map(Arc::new)),
            failed_logins: FailedLogins::default(),
        }
    }

    /// The ACL in force (None: no `auth.acl_file`).
    pub fn acl(&self) -> Option<Arc<Acl>> {
        read(&self.acl).clone()
    }

    /// The password file in force (None: no `auth.password_file`).
    pub fn passwords(&self) -> Option<Arc<PasswordFile>> {
        read(&self.passwords).clone()
    }

    /// Re-reads the ACL from `path` (SIGHUP). On error the old rules stay in force and the
    /// error is returned for the log.
    pub fn reload_acl(&self, path: &Path) -> Result<(), AclLoadError> {
        let acl = Acl::load(path)?;
        *write(&self.acl) = Some(Arc::new(acl));
        Ok(())
    }

    /// Re-reads the password file from `path` (SIGHUP), like [`AccessControl::reload_acl`].
    pub fn reload_passwords(&self, path: &Path) -> Result<(), PasswordFileError> {
        let file = PasswordFile::load(path)?;
        *write(&self.passwords) = Some(Arc::new(file));
        Ok(())
    }

    /// ACL read check (subscribe-time for retained, delivery-time for live messages).
    pub fn may_read(&self, username: Option<&str>, client_id: &str, topic: &str) -> bool {
        self.acl()
            .is_none_or(|acl| acl.check_topic(username, client_id, topic, Access::Read))
    }

    /// ACL write check for a PUBLISH (or a will).
    pub fn may_publish(&self, username: Option<&str>, client_id: &str, topic: &str) -> bool {
        self.acl()
            .is_none_or(|acl| acl.check_topic(username, client_id, topic, Access::Write))
    }

    /// ACL check for a SUBSCRIBE filter.
    pub fn may_subscribe(&self, username: Option<&str>, client_id: &str, filter: &str) -> bool {
        self.acl()
            .is_none_or(|acl| acl.check_subscribe(username, client_id, filter))
    }
}

/// Failed logins per source address: each failure doubles the delay before that address's
/// next refusal is answered (100 ms up to 5 s), forgotten a minute after the last failure.
/// Bounded: past 10,000 addresses the table is cleared (an attacker with that many addresses
/// is not slowed by per-address delays anyway).
#[derive(Debug, Default)]
pub struct FailedLogins {
    /// address -> (recent failures, time of the last one). Short lock, never across an await.
    recent:
        std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, (u32, std::time::Instant)>>,
}

impl FailedLogins {
    const MAX_ADDRESSES: usize = 10_000;
    const FORGET_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

    /// Records a failure from `ip` at `now`; returns how long to wait before answering.
    pub fn failed(&self, ip: std::net::IpAddr, now: std::time::Instant) -> std::time::Duration {
        let mut map = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= Self::MAX_ADDRESSES && !map.contains_key(&ip) {
            map.clear();
        }
        let e = map.entry(ip).or_insert((0, now));
        if now.saturating_duration_since(e.1) > Self::FORGET_AFTER {
            e.0 = 0;
        }
        e.0 = e.0.saturating_add(1);
        e.1 = now;
        let ms = 100u64.saturating_mul(1 << (e.0 - 1).min(6));
        std::time::Duration::from_millis(ms.min(5_000))
    }
}
