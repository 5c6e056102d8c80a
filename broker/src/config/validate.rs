//! [`Config::validate`]: every value checked against its range before anything binds; a bad
//! value is reported with its key, the value and the reason.

use std::net::SocketAddr;

use super::{invalid, Config, ConfigError, PersistenceMode, ShapingRule};

/// Checks `[[shaping]]` rules (also those of a file re-read on SIGHUP).
pub fn validate_shaping(rules: &[ShapingRule]) -> Result<(), ConfigError> {
    for (i, r) in rules.iter().enumerate() {
        let key = |k: &str| format!("shaping[{i}].{k}");
        let selectors = [
            ("client_id", &r.client_id),
            ("username", &r.username),
            ("group", &r.group),
        ];
        let set: Vec<&str> = selectors
            .iter()
            .filter(|(_, v)| v.is_some())
            .map(|(k, _)| *k)
            .collect();
        if set.len() != 1 {
            return Err(invalid(
                &format!("shaping[{i}]"),
                if set.is_empty() {
                    "(none)".to_string()
                } else {
                    set.join(", ")
                },
                "a rule needs exactly one of client_id, username or group",
            ));
        }
        for (k, v) in selectors {
            if let Some(v) = v {
                if v.is_empty() {
                    return Err(invalid(&key(k), "\"\"", "must not be empty"));
                }
            }
        }
        if let Some(g) = &r.group {
            if g.contains(['/', '+', '#']) {
                return Err(invalid(
                    &key("group"),
                    g,
                    "a shared-subscription group name cannot contain '/', '+' or '#' [MQTT-4.8.2-2]",
                ));
            }
        }
        for (k, v) in [
            ("messages_per_second", r.messages_per_second),
            ("bytes_per_second", r.bytes_per_second),
        ] {
            if !v.is_finite() || v < 0.0 {
                return Err(invalid(
                    &key(k),
                    v,
                    "must be a finite number >= 0 (0: unlimited)",
                ));
            }
        }
        if r.burst == Some(0) {
            return Err(invalid(&key("burst"), 0, "must be at least 1"));
        }
    }
    Ok(())
}

impl Config {
    /// Checks every value against its allowed range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.listeners.is_empty() {
            return Err(invalid(
                "listeners",
                "[]",
                "at least one listener is needed",
            ));
        }
        for (i, l) in self.listeners.iter().enumerate() {
            if l.bind.parse::<SocketAddr>().is_err() {
                return Err(invalid(
                    &format!("listeners[{i}].bind"),
                    &l.bind,
                    "expected IP:PORT, e.g. 0.0.0.0:1883 or [::]:1883",
                ));
            }
            if let Some(t) = &l.tls {
                let key = |k: &str| format!("listeners[{i}].tls.{k}");
                for (k, path) in [
                    ("cert", Some(&t.cert)),
                    ("key", Some(&t.key)),
                    ("client_ca", t.client_ca.as_ref()),
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
                if t.min_version != "1.2" && t.min_version != "1.3" {
                    return Err(invalid(
                        &key("min_version"),
                        &t.min_version,
                        "must be \"1.2\" or \"1.3\"",
                    ));
                }
                if t.require_client_cert == Some(true) && t.client_ca.is_none() {
                    return Err(invalid(
                        &key("require_client_cert"),
                        true,
                        "needs listeners[].tls.client_ca to verify client certificates against",
                    ));
                }
                if t.use_identity_as_username
                    && !(t.client_ca.is_some() && t.requires_client_cert())
                {
                    return Err(invalid(&key("use_identity_as_username"), true, "needs client_ca and require_client_cert = true (every client must then have a certificate to take its identity from)"));
                }
            }
            if let Some(w) = &l.websocket {
                if !w.path.starts_with('/') || w.path.contains(char::is_whitespace) {
                    return Err(invalid(
                        &format!("listeners[{i}].websocket.path"),
                        &w.path,
                        "must be an absolute HTTP path such as /mqtt",
                    ));
                }
            }
        }
        let m = &self.mqtt;
        if !(16..=crate::MAX_PACKET_SIZE).contains(&m.max_packet_size) {
            return Err(invalid(
                "mqtt.max_packet_size",
                m.max_packet_size,
                "must be between 16 and 268435460 bytes (the protocol's limit)",
            ));
        }
        if m.receive_maximum == 0 {
            return Err(invalid(
                "mqtt.receive_maximum",
                0,
                "must be 1 to 65535 [MQTT-3.2.2.3.3]",
            ));
        }
        if m.max_inflight == 0 {
            return Err(invalid("mqtt.max_inflight", 0, "must be 1 to 65535"));
        }
        if m.max_queued_messages == Some(0) {
            return Err(invalid("mqtt.max_queued_messages", 0, "must be at least 1"));
        }
        if self.max_queued_bytes() < m.max_packet_size as usize {
            return Err(invalid(
                "mqtt.max_queued_bytes",
                self.max_queued_bytes(),
                "must be at least mqtt.max_packet_size, or no large message could ever be queued",
            ));
        }
        if m.max_queued_memory_bytes < m.max_packet_size as usize {
            return Err(invalid(
                "mqtt.max_queued_memory_bytes",
                m.max_queued_memory_bytes,
                "must be at least mqtt.max_packet_size, or no large message could ever be queued",
            ));
        }
        if m.maximum_qos > 2 {
            return Err(invalid(
                "mqtt.maximum_qos",
                m.maximum_qos,
                "must be 0, 1 or 2",
            ));
        }
        if m.shared_group_orphan_expiry_seconds == 0 {
            return Err(invalid(
                "mqtt.shared_group_orphan_expiry_seconds",
                0,
                "must be at least 1 (use shared_group_orphan_policy = \"drop\" to keep nothing)",
            ));
        }
        if let Some(r) = &m.server_reference {
            if r.is_empty() || r.len() > 65_535 {
                return Err(invalid(
                    "mqtt.server_reference",
                    r,
                    "must be a non-empty string of at most 65535 bytes",
                ));
            }
        }
        if !(1..=super::MAX_DELAY_SECONDS).contains(&m.max_delay_seconds) {
            return Err(invalid(
                "mqtt.max_delay_seconds",
                m.max_delay_seconds,
                "must be 1 to 4294967",
            ));
        }
        for (i, rule) in m.priorities.iter().enumerate() {
            let key = format!("mqtt.priorities[{i}].filter");
            match sluice_codec::TopicFilter::try_from(rule.filter.as_str()) {
                Err(e) => return Err(invalid(&key, &rule.filter, &e.to_string())),
                Ok(f) if f.shared().is_some() => {
                    return Err(invalid(
                        &key,
                        &rule.filter,
                        "a priority applies to topics: no $share/ prefix",
                    ))
                }
                Ok(_) => {}
            }
            if m.priorities[..i].iter().any(|r| r.filter == rule.filter) {
                return Err(invalid(&key, &rule.filter, "filter listed twice"));
            }
        }
        if m.slow_consumer_seconds == 0 {
            return Err(invalid(
                "mqtt.slow_consumer_seconds",
                0,
                "must be at least 1",
            ));
        }
        validate_shaping(&self.shaping)?;
        let l = &self.limits;
        if l.max_delayed_messages == 0 {
            return Err(invalid(
                "limits.max_delayed_messages",
                0,
                "must be at least 1",
            ));
        }
        if !(1..=3600).contains(&l.connect_timeout) {
            return Err(invalid(
                "limits.connect_timeout",
                l.connect_timeout,
                "must be 1 to 3600 seconds",
            ));
        }
        if l.max_connections == 0 {
            return Err(invalid("limits.max_connections", 0, "must be at least 1"));
        }
        if !(1..=65_535).contains(&l.max_client_id_length) {
            return Err(invalid(
                "limits.max_client_id_length",
                l.max_client_id_length,
                "must be 1 to 65535 bytes",
            ));
        }
        if !(1..=65_535).contains(&l.max_topic_length) {
            return Err(invalid(
                "limits.max_topic_length",
                l.max_topic_length,
                "must be 1 to 65535 bytes",
            ));
        }
        if l.max_topic_levels == 0 {
            return Err(invalid("limits.max_topic_levels", 0, "must be at least 1"));
        }
        if l.max_subscriptions_per_client == 0 {
            return Err(invalid(
                "limits.max_subscriptions_per_client",
                0,
                "must be at least 1",
            ));
        }
        if l.publish_burst_seconds == 0 {
            return Err(invalid(
                "limits.publish_burst_seconds",
                0,
                "must be at least 1",
            ));
        }
        if l.publish_bytes_rate != 0
            && l.publish_bytes_rate * u64::from(l.publish_burst_seconds)
                < u64::from(m.max_packet_size)
        {
            return Err(invalid(
                "limits.publish_bytes_rate",
                l.publish_bytes_rate,
                "times limits.publish_burst_seconds must be at least mqtt.max_packet_size, or a large PUBLISH could never pass",
            ));
        }
        if self.sys.interval > super::MAX_SYS_INTERVAL {
            return Err(invalid(
                "sys.interval",
                self.sys.interval,
                "must be 0 (off) to 86400 seconds",
            ));
        }
        let p = &self.persistence;
        if p.sync_interval == 0 || p.sync_interval > 60_000 {
            return Err(invalid(
                "persistence.sync_interval",
                p.sync_interval,
                "must be 1 to 60000 milliseconds",
            ));
        }
        if p.lazy_commit == 0 || p.lazy_commit > 1000 {
            return Err(invalid(
                "persistence.lazy_commit",
                p.lazy_commit,
                "must be 1 to 1000 milliseconds",
            ));
        }
        if p.max_disk_bytes < 1024 * 1024 {
            return Err(invalid(
                "persistence.max_disk_bytes",
                p.max_disk_bytes,
                "must be at least 1 MiB",
            ));
        }
        if p.compact_min_bytes < 64 * 1024 {
            return Err(invalid(
                "persistence.compact_min_bytes",
                p.compact_min_bytes,
                "must be at least 65536",
            ));
        }
        if p.queue_memory_bytes < 1024 {
            return Err(invalid(
                "persistence.queue_memory_bytes",
                p.queue_memory_bytes,
                "must be at least 1024",
            ));
        }
        if p.mode != PersistenceMode::Memory && p.dir.as_os_str().is_empty() {
            return Err(invalid(
                "persistence.dir",
                "\"\"",
                "needs a directory (or mode = \"memory\")",
            ));
        }
        if let Some(path) = &self.auth.password_file {
            if !path.is_file() {
                return Err(invalid(
                    "auth.password_file",
                    path.display(),
                    "no such file",
                ));
            }
        }
        if let Some(path) = &self.auth.acl_file {
            if !path.is_file() {
                return Err(invalid("auth.acl_file", path.display(), "no such file"));
            }
        }
        super::bridges::validate(&self.bridges)?;
        if let Some(c) = &self.cluster {
            let rest = c.nats.strip_prefix("nats://").unwrap_or("");
            if rest.is_empty() || rest.contains(char::is_whitespace) {
                return Err(invalid(
                    "cluster.nats",
                    &c.nats,
                    "expected nats://HOST:PORT, e.g. nats://127.0.0.1:4222",
                ));
            }
            let name_ok = !c.node.is_empty()
                && c.node.len() <= 64
                && c.node
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !name_ok {
                return Err(invalid(
                    "cluster.node",
                    &c.node,
                    "1 to 64 letters, digits, '-' or '_' (it is sent in a NATS header and must be unique in the cluster)",
                ));
            }
            if c.messages_max_age_seconds == 0 {
                return Err(invalid(
                    "cluster.messages_max_age_seconds",
                    c.messages_max_age_seconds,
                    "must be at least 1 (how long sluice_messages keeps a message)",
                ));
            }
            if c.messages_max_bytes < 1 << 20 {
                return Err(invalid(
                    "cluster.messages_max_bytes",
                    c.messages_max_bytes,
                    "must be at least 1048576 (1 MiB)",
                ));
            }
        }
        self.admin.validate()?;
        Ok(())
    }
}
