//! The `[admin]` section: the admin HTTP listener (API, `/metrics`, the dashboard; see
//! [`crate::observe`]).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::{invalid, ConfigError};

/// The `[admin]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// `IP:PORT` of the admin HTTP listener; `""` turns it off. Default `127.0.0.1:18083`
    /// (loopback: reachable from this machine only).
    pub bind: String,
    /// Bearer token for every `/api/` call (`Authorization: Bearer <token>`). Required when
    /// `bind` is not a loopback address; once set it is always required. `""`: none.
    pub token: String,
}

impl Default for AdminConfig {
    fn default() -> AdminConfig {
        AdminConfig {
            bind: "127.0.0.1:18083".into(),
            token: String::new(),
        }
    }
}

impl AdminConfig {
    /// The address to listen on; None when the listener is off (`bind = ""`). Call after
    /// [`AdminConfig::validate`].
    pub fn addr(&self) -> Option<SocketAddr> {
        self.bind.parse().ok()
    }

    /// Whether `/api/` calls need the token: whenever one is set (a non-loopback `bind`
    /// without one is refused at start-up).
    pub fn token_required(&self) -> bool {
        !self.token.is_empty()
    }

    /// `bind` is `""` or `IP:PORT`; a non-loopback address needs a `token`.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.bind.is_empty() {
            return Ok(());
        }
        let addr: SocketAddr = self.bind.parse().map_err(|_| {
            invalid(
                "admin.bind",
                &self.bind,
                "expected IP:PORT, e.g. 127.0.0.1:18083, or \"\" to turn the admin listener off",
            )
        })?;
        if !addr.ip().is_loopback() && self.token.is_empty() {
            return Err(invalid(
                "admin.bind",
                &self.bind,
                "not a loopback address: set admin.token (every /api/ call then needs \
                 Authorization: Bearer <token>), or bind to 127.0.0.1",
            ));
        }
        if self
            .token
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(invalid(
                "admin.token",
                "(hidden)",
                "must not contain whitespace or control characters (it is sent in an HTTP header)",
            ));
        }
        Ok(())
    }
}
