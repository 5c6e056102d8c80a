//! `[[bridges]]`: connections from Sluice, as a client, to other MQTT brokers
//! (`crate::bridge` runs them). The shape here, the checks in [`validate`].

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sluice_codec::{Str, TopicFilter};

use super::{invalid, ConfigError};

/// One `[[bridges]]` entry. Every field has a default so that a missing one is reported by
/// [`validate`] with its key, rather than as a bare serde error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BridgeConfig {
    /// Unique among the bridges; names the local session `$bridge/{name}` and the log lines.
    pub name: String,
    /// The remote broker, `HOST:PORT` (required).
    pub address: String,
    /// `"5"` or `"3.1.1"` (default `"5"`).
    pub protocol: String,
    /// TLS to the remote (rustls): the CA to verify it against, and a client certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<BridgeTlsConfig>,
    /// The client identifier at the remote (default `sluice-bridge-{name}`).
    pub client_id: String,
    /// Username and password at the remote; empty: none sent. The password is left out of
    /// the effective configuration `--check-config` prints.
    pub username: String,
    #[serde(skip_serializing)]
    pub password: String,
    /// Keep Alive towards the remote, in seconds (default 60; 0: none).
    pub keep_alive: u16,
    /// Reconnect backoff: the delay doubles from 1 s up to this many seconds, with jitter
    /// (default 60).
    pub max_backoff_seconds: u64,
    /// What goes where.
    pub topics: Vec<BridgeTopic>,
}

impl Default for BridgeConfig {
    fn default() -> BridgeConfig {
        BridgeConfig {
            name: String::new(),
            address: String::new(),
            protocol: "5".into(),
            tls: None,
            client_id: String::new(),
            username: String::new(),
            password: String::new(),
            keep_alive: 60,
            max_backoff_seconds: 60,
            topics: Vec::new(),
        }
    }
}

impl BridgeConfig {
    /// The client identifier used at the remote.
    pub fn remote_client_id(&self) -> String {
        if self.client_id.is_empty() {
            format!("sluice-bridge-{}", self.name)
        } else {
            self.client_id.clone()
        }
    }

    /// Whether the remote speaks MQTT 5.0 (else 3.1.1).
    pub fn is_v5(&self) -> bool {
        self.protocol == "5"
    }
}

/// `[bridges.tls]`: the remote's CA, and optionally a client certificate and its key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeTlsConfig {
    /// PEM CA certificate(s) the remote's certificate must chain to.
    pub ca: PathBuf,
    /// PEM client certificate chain, with `key` (both or neither).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
}

/// Which way messages matching a bridge topic go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Local messages to the remote.
    Out,
    /// Remote messages into the local broker.
    In,
    /// Both ways (loops prevented: `crate::bridge`).
    Both,
}

impl Direction {
    pub fn parse(s: &str) -> Option<Direction> {
        match s {
            "out" => Some(Direction::Out),
            "in" => Some(Direction::In),
            "both" => Some(Direction::Both),
            _ => None,
        }
    }

    pub fn outgoing(self) -> bool {
        matches!(self, Direction::Out | Direction::Both)
    }

    pub fn incoming(self) -> bool {
        matches!(self, Direction::In | Direction::Both)
    }
}

/// One entry of `topics`: as Mosquitto's `topic` line, the local topic is `local_prefix` +
/// the part matching `filter`, the remote one `remote_prefix` + the same part.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BridgeTopic {
    pub filter: String,
    /// `"in"`, `"out"` or `"both"` (default `"out"`).
    pub direction: String,
    /// The QoS of the subscriptions (local ones for `out`, remote ones for `in`); default 1.
    pub qos: u8,
    pub local_prefix: String,
    pub remote_prefix: String,
}

impl Default for BridgeTopic {
    fn default() -> BridgeTopic {
        BridgeTopic {
            filter: String::new(),
            direction: "out".into(),
            qos: 1,
            local_prefix: String::new(),
            remote_prefix: String::new(),
        }
    }
}

impl BridgeTopic {
    /// The direction (checked by [`validate`]).
    pub fn direction(&self) -> Direction {
        Direction::parse(&self.direction).unwrap_or(Direction::Out)
    }

    /// The filter as subscribed locally.
    pub fn local_filter(&self) -> String {
        format!("{}{}", self.local_prefix, self.filter)
    }

    /// The filter as subscribed at the remote.
    pub fn remote_filter(&self) -> String {
        format!("{}{}", self.remote_prefix, self.filter)
    }
}

/// The client identifier (and local username) of bridge `name`'s local session. Network
/// clients cannot use it (`connection/handshake.rs`).
pub fn bridge_client_id(name: &str) -> String {
    format!("{BRIDGE_CLIENT_PREFIX}{name}")
}

/// The prefix of the client identifiers reserved for bridges' local sessions.
pub const BRIDGE_CLIENT_PREFIX: &str = "$bridge/";

/// Checks every bridge: names unique and usable in a client id, an address, a known protocol,
/// TLS files present, and topics whose filters, directions, QoS and prefixes make sense.
pub fn validate(bridges: &[BridgeConfig]) -> Result<(), ConfigError> {
    for (i, b) in bridges.iter().enumerate() {
        let key = |k: &str| format!("bridges[{i}].{k}");
        if b.name.is_empty() {
            return Err(invalid(&key("name"), "\"\"", "every bridge needs a name"));
        }
        if !b
            .name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'.')
        {
            return Err(invalid(
                &key("name"),
                &b.name,
                "only letters, digits, '-', '_' and '.' (it names the session $bridge/NAME)",
            ));
        }
        if bridges[..i].iter().any(|o| o.name == b.name) {
            return Err(invalid(
                &key("name"),
                &b.name,
                "duplicate bridge name (each names its own session)",
            ));
        }
        if b.address.is_empty() {
            return Err(invalid(
                &key("address"),
                "\"\"",
                "missing: the remote broker as HOST:PORT",
            ));
        }
        if host_port(&b.address).is_none() {
            return Err(invalid(
                &key("address"),
                &b.address,
                "expected HOST:PORT, e.g. mqtt.example.com:8883 or 127.0.0.1:1883",
            ));
        }
        if b.protocol != "5" && b.protocol != "3.1.1" {
            return Err(invalid(
                &key("protocol"),
                &b.protocol,
                "must be \"5\" or \"3.1.1\"",
            ));
        }
        if let Some(t) = &b.tls {
            for (k, path) in [
                ("tls.ca", Some(&t.ca)),
                ("tls.cert", t.cert.as_ref()),
                ("tls.key", t.key.as_ref()),
            ] {
                if let Some(path) = path {
                    if !path.is_file() {
                        return Err(invalid(
                            &key(k),
                            path.display(),
                            "no such file (or not a regular file)",
                        ));
                    }
                }
            }
            if t.cert.is_some() != t.key.is_some() {
                return Err(invalid(
                    &key(if t.cert.is_some() {
                        "tls.key"
                    } else {
                        "tls.cert"
                    }),
                    "(none)",
                    "a client certificate needs both cert and key",
                ));
            }
        }
        let client_id = b.remote_client_id();
        if client_id.len() > 65535 || Str::try_from(client_id.as_str()).is_err() {
            return Err(invalid(
                &key("client_id"),
                &client_id,
                "not a valid MQTT string",
            ));
        }
        if b.max_backoff_seconds == 0 || b.max_backoff_seconds > 3600 {
            return Err(invalid(
                &key("max_backoff_seconds"),
                b.max_backoff_seconds,
                "must be 1 to 3600",
            ));
        }
        if b.topics.is_empty() {
            return Err(invalid(
                &key("topics"),
                "[]",
                "a bridge needs at least one topic",
            ));
        }
        for (j, t) in b.topics.iter().enumerate() {
            let key = |k: &str| format!("bridges[{i}].topics[{j}].{k}");
            if Direction::parse(&t.direction).is_none() {
                return Err(invalid(
                    &key("direction"),
                    &t.direction,
                    "must be \"in\", \"out\" or \"both\"",
                ));
            }
            if t.qos > 2 {
                return Err(invalid(&key("qos"), t.qos, "must be 0, 1 or 2"));
            }
            filter_ok(&t.filter).map_err(|why| invalid(&key("filter"), &t.filter, why))?;
            for (k, prefix) in [
                ("local_prefix", &t.local_prefix),
                ("remote_prefix", &t.remote_prefix),
            ] {
                if prefix.contains(['+', '#']) || prefix.contains('\0') {
                    return Err(invalid(
                        &key(k),
                        prefix,
                        "a prefix cannot hold wildcards ('+', '#') or NUL",
                    ));
                }
            }
            for (k, full) in [
                ("local_prefix", t.local_filter()),
                ("remote_prefix", t.remote_filter()),
            ] {
                filter_ok(&full).map_err(|why| {
                    invalid(
                        &key(k),
                        &full,
                        &format!("prefix + filter is not a topic filter: {why}"),
                    )
                })?;
            }
        }
    }
    Ok(())
}

/// Why `filter` is not a usable bridge filter, if it is not.
fn filter_ok(filter: &str) -> Result<(), &'static str> {
    if filter.is_empty() {
        return Err("a topic filter cannot be empty [MQTT-4.7.3-1]");
    }
    let s = Str::try_from(filter).map_err(|_| "not a valid MQTT string")?;
    let f = TopicFilter::new(s).map_err(|_| {
        "'#' only as the last level and '+' only as a whole level [MQTT-4.7.1-1] [MQTT-4.7.1-2]"
    })?;
    if f.shared().is_some() {
        return Err("a bridge cannot subscribe to a shared subscription ($share/...)");
    }
    Ok(())
}

/// `HOST:PORT` split, the host without IPv6 brackets; None if malformed.
pub fn host_port(address: &str) -> Option<(&str, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    (!host.is_empty() && !host.contains(char::is_whitespace)).then_some((host, port))
}
