//! Configuration: one TOML file, then `SLUICE__SECTION__KEY` environment variables on top.
//!
//! The file's shape is [`Config`] (serde, unknown keys refused). [`Config::load`] layers the
//! sources with the `config` crate, deserializes, then [`Config::validate`] checks every value
//! against its range. A bad value is reported as [`ConfigError`] with the key, the value and
//! the reason, and the binary exits 2 before it binds anything.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod bridges;
pub use bridges::{
    bridge_client_id, host_port, BridgeConfig, BridgeTlsConfig, BridgeTopic, Direction,
    BRIDGE_CLIENT_PREFIX,
};

/// Prefix of environment overrides: `SLUICE__MQTT__MAX_KEEPALIVE=30` sets `mqtt.max_keepalive`.
pub const ENV_PREFIX: &str = "SLUICE";
/// Separator between prefix, section and key in environment overrides.
pub const ENV_SEPARATOR: &str = "__";

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where clients connect. Default: one plain TCP listener on `0.0.0.0:1883`.
    pub listeners: Vec<ListenerConfig>,
    /// MQTT capabilities and per-session bounds.
    pub mqtt: MqttConfig,
    /// Who may connect and what they may do.
    pub auth: AuthConfig,
    /// Bounds on what one client (or all of them) can make the broker spend.
    pub limits: LimitsConfig,
    /// Where and how durably sessions, queued messages and retained messages are kept.
    pub persistence: PersistenceConfig,
    /// The broker's `$SYS` status topics.
    pub sys: SysConfig,
    /// The admin HTTP listener: API, `/metrics`, dashboard.
    pub admin: AdminConfig,
    /// `[[bridges]]`: other MQTT brokers Sluice connects to as a client (`crate::bridge`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bridges: Vec<BridgeConfig>,
    /// Cluster mode on NATS JetStream; absent (the default): a single node that never talks
    /// to NATS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterConfig>,
    /// Egress shaping: `[[shaping]]` rules, checked in order (first match wins), reloaded on
    /// SIGHUP. Each limits how fast messages leave the broker towards the clients (or the
    /// shared-subscription group) it matches; what is over the rate waits in the session's
    /// queue (`crate::shaping`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shaping: Vec<ShapingRule>,
}

/// The `[cluster]` section: this node's name and the NATS server it joins the cluster through
/// (see the README's "Cluster").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The NATS server, e.g. `nats://127.0.0.1:4222` (the client learns the other servers of a
    /// NATS cluster from it and fails over to them).
    pub nats: String,
    /// This node's name, unique in the cluster: it marks the messages this node publishes
    /// (so it ignores its own) and names the node in logs. Letters, digits, `-` and `_`.
    pub node: String,
    /// How long the JetStream stream `sluice_messages` keeps a QoS 1/2 message (seconds): a
    /// persistent session that moves to another node gets from it what was published since
    /// its last checkpoint, so a session away longer than this loses the older ones.
    #[serde(default = "default_messages_max_age")]
    pub messages_max_age_seconds: u64,
    /// The most bytes the stream `sluice_messages` holds (the oldest go first).
    #[serde(default = "default_messages_max_bytes")]
    pub messages_max_bytes: u64,
}

/// One day.
fn default_messages_max_age() -> u64 {
    86_400
}

/// 1 GiB.
fn default_messages_max_bytes() -> u64 {
    1 << 30
}

/// One `[[shaping]]` rule: whom it matches (exactly one of `client_id`, `username`, `group`)
/// and the rate of messages towards them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShapingRule {
    /// A glob on the client identifier: `*` any run of characters, `?` one character.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The client's username, exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// A shared-subscription group name (`sms` for `$share/sms/...`): the rate is the group's
    /// total, one bucket its members take from, spread by the group's strategy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Messages per second (0: unlimited).
    #[serde(default)]
    pub messages_per_second: f64,
    /// Topic + payload bytes per second (0: unlimited).
    #[serde(default)]
    pub bytes_per_second: f64,
    /// Messages that may pass at once after a quiet spell. Default: a twentieth of a
    /// second's worth of `messages_per_second`, at least 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// The overflow policy of the sessions this rule matches (for a `group` rule: of the
    /// group's queue), instead of `mqtt.queue_full_policy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overflow: Option<QueueFullPolicy>,
}

impl ShapingRule {
    /// The effective `burst`.
    pub fn burst(&self) -> u32 {
        self.burst
            .unwrap_or_else(|| ((self.messages_per_second / 20.0).ceil() as u32).max(1))
    }
}

/// The `[sys]` section: `$SYS/broker/...` status topics (README, Observe).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SysConfig {
    /// Seconds between two publications of the `$SYS` topics (retained, QoS 0); 0 turns them
    /// off. At most 86400.
    pub interval: u64,
}

/// Largest `sys.interval`: one day.
pub const MAX_SYS_INTERVAL: u64 = 86_400;

impl Default for SysConfig {
    fn default() -> SysConfig {
        SysConfig { interval: 10 }
    }
}

/// How durable acknowledged messages are (see the README's table of loss windows).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PersistenceMode {
    /// A QoS 1/2 PUBLISH is acknowledged only after it and its effects are fsynced (group
    /// commit: one fsync covers every connection's messages of that moment).
    #[default]
    Durable,
    /// Written to the OS before acknowledging (survives a crash of the process, not of the
    /// machine); fsynced every `sync_interval` milliseconds.
    Relaxed,
    /// Nothing on disk.
    Memory,
}

/// The `[persistence]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PersistenceConfig {
    /// `durable` (default), `relaxed` or `memory`.
    pub mode: PersistenceMode,
    /// The data directory (`--data-dir`); created if missing.
    pub dir: PathBuf,
    /// `relaxed` mode: milliseconds between fsyncs.
    pub sync_interval: u64,
    /// Milliseconds a record that no acknowledgement waits for (a delivery sent, a PUBACK
    /// received...) may be held back before it is written (durable: and fsynced); a group
    /// commit for a waiting acknowledgement takes it along sooner. Losing such a record in a
    /// crash only means a redelivery (with DUP).
    pub lazy_commit: u64,
    /// Most bytes the store may use on disk; past it, QoS 1/2 PUBLISHes that need storing are
    /// refused (5.0: 0x97 Quota Exceeded) and logged.
    pub max_disk_bytes: u64,
    /// Bytes of each persistent session's queued QoS 1/2 messages kept in memory; the rest of
    /// the queue stays in the log only and is read back as the queue drains.
    pub queue_memory_bytes: usize,
    /// The log is rewritten as its live data once it is larger than this and 4x the live data
    /// (and sooner near `max_disk_bytes`).
    pub compact_min_bytes: u64,
}

impl Default for PersistenceConfig {
    fn default() -> PersistenceConfig {
        PersistenceConfig {
            mode: PersistenceMode::Durable,
            dir: PathBuf::from("./data"),
            sync_interval: 1000,
            lazy_commit: 10,
            max_disk_bytes: 8 * 1024 * 1024 * 1024,
            queue_memory_bytes: 256 * 1024,
            compact_min_bytes: 64 * 1024 * 1024,
        }
    }
}

/// The `[limits]` section: every resource a client can make the broker spend has a bound here
/// (or in `[mqtt]` for per-session queues and packet size).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Seconds a new connection has to send CONNECT after the TCP accept.
    pub connect_timeout: u64,
    /// Most client connections at once, all listeners together. A connection over the limit
    /// is answered CONNACK 0x89 Server Busy (3.1.1: 3 Server unavailable) and closed; far over
    /// it (1,024 more), sockets are closed without reading.
    pub max_connections: usize,
    /// Longest client identifier in bytes; longer is CONNACK 0x85 (3.1.1: 2).
    pub max_client_id_length: usize,
    /// Longest topic name or filter in bytes (the protocol allows 65,535). PUBLISH: DISCONNECT
    /// 0x90 Topic Name Invalid; SUBSCRIBE: SUBACK 0x8F; will: CONNACK 0x90.
    pub max_topic_length: usize,
    /// Most levels in a topic name or filter, same reason codes as `max_topic_length`.
    pub max_topic_levels: usize,
    /// Most subscriptions one session may hold; further filters get SUBACK 0x97 Quota Exceeded
    /// (3.1.1: 0x80).
    pub max_subscriptions_per_client: usize,
    /// Sustained PUBLISH packets per second one connection may send (0: unlimited). Above it the
    /// broker stops reading from that socket until the budget refills, so TCP pushes back on the
    /// client and other clients keep their share.
    pub publish_rate: u32,
    /// Sustained PUBLISH bytes (whole packets) per second per connection (0: unlimited).
    pub publish_bytes_rate: u64,
    /// How far above the rates a connection may burst: this many seconds' worth of budget.
    pub publish_burst_seconds: u32,
    /// Instead of pushing back, disconnect a 5.0 client over the rate with DISCONNECT 0x96
    /// Message Rate Too High (3.1.1 clients are always pushed back).
    pub disconnect_over_rate: bool,
    /// New connections per second per listener (0: unlimited); over it: CONNACK 0x9F
    /// Connection Rate Exceeded (3.1.1: 3).
    pub max_connection_rate: u32,
    /// New connections per second from one source address (0: unlimited), same answer.
    pub max_connection_rate_per_address: u32,
    /// Most bytes queued for all sessions together (topic + payload + bookkeeping per queued
    /// message); past it new deliveries are dropped and counted like a full session queue.
    pub max_queued_bytes_total: u64,
    /// Most `$delayed` messages waiting for their time at once, all clients together; over it
    /// a delayed PUBLISH is refused: 5.0 PUBACK/PUBREC 0x97 Quota Exceeded, 3.1.1 disconnected
    /// (as for any refused QoS 1/2 PUBLISH). Each waiting message costs ~63 bytes of
    /// bookkeeping with a store (the message waits on disk), or its size plus that in `memory`
    /// mode (see `routing/delayed.rs`).
    pub max_delayed_messages: usize,
}

impl Default for LimitsConfig {
    fn default() -> LimitsConfig {
        LimitsConfig {
            connect_timeout: 10,
            max_connections: 100_000,
            max_client_id_length: 256,
            max_topic_length: 4096,
            max_topic_levels: 128,
            max_subscriptions_per_client: 1000,
            publish_rate: 0,
            publish_bytes_rate: 0,
            publish_burst_seconds: 1,
            disconnect_over_rate: false,
            max_connection_rate: 0,
            max_connection_rate_per_address: 0,
            max_queued_bytes_total: 1024 * 1024 * 1024,
            max_delayed_messages: 1_000_000,
        }
    }
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listeners: vec![ListenerConfig::plain("0.0.0.0:1883")],
            mqtt: MqttConfig::default(),
            auth: AuthConfig::default(),
            limits: LimitsConfig::default(),
            persistence: PersistenceConfig::default(),
            sys: SysConfig::default(),
            admin: AdminConfig::default(),
            bridges: Vec::new(),
            cluster: None,
            shaping: Vec::new(),
        }
    }
}

/// One `[[listeners]]` entry: plain TCP, TLS (`tls`), WebSockets (`websocket`) or both (WSS).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// `HOST:PORT` to listen on; port 0 picks a free port (logged at start-up).
    pub bind: String,
    /// TLS on this listener (MQTT over TLS, or WSS with `websocket`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// MQTT over WebSockets on this listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub websocket: Option<WebSocketConfig>,
    /// Most connections open on this listener at once (besides `limits.max_connections` for
    /// all of them); over it: CONNACK 0x89 Server Busy (3.1.1: 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
}

impl ListenerConfig {
    /// A plain TCP listener on `bind`.
    pub fn plain(bind: impl Into<String>) -> ListenerConfig {
        ListenerConfig {
            bind: bind.into(),
            tls: None,
            websocket: None,
            max_connections: None,
        }
    }
}

/// A listener's `tls` table. The files are read (and checked) at start-up, and again on SIGHUP
/// or when they change on disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, the server's certificate first.
    pub cert: PathBuf,
    /// PEM private key: PKCS#8 (`BEGIN PRIVATE KEY`), PKCS#1 (`BEGIN RSA PRIVATE KEY`) or SEC1
    /// (`BEGIN EC PRIVATE KEY`); not encrypted.
    pub key: PathBuf,
    /// PEM CA certificate(s) that client certificates must chain to (mutual TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
    /// Refuse clients without a valid certificate at the handshake. Default: true when
    /// `client_ca` is set (false: a certificate is verified if presented).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_client_cert: Option<bool>,
    /// Lowest TLS version: "1.2" (default) or "1.3".
    #[serde(default = "default_tls_min_version")]
    pub min_version: String,
    /// The client certificate's Common Name (else its first Subject Alternative Name) is the
    /// client's username, for the ACL; the CONNECT username and password are ignored.
    /// Needs `client_ca` and a required client certificate.
    #[serde(default)]
    pub use_identity_as_username: bool,
}

fn default_tls_min_version() -> String {
    "1.2".into()
}

impl TlsConfig {
    /// The effective `require_client_cert`.
    pub fn requires_client_cert(&self) -> bool {
        self.require_client_cert.unwrap_or(self.client_ca.is_some())
    }
}

/// A listener's `websocket` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebSocketConfig {
    /// The HTTP path of the upgrade request; other paths are answered 404.
    #[serde(default = "default_ws_path")]
    pub path: String,
}

fn default_ws_path() -> String {
    "/mqtt".into()
}

/// The `[mqtt]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// Largest Keep Alive (seconds) a client may use. A 5.0 client asking for more (or for 0)
    /// is told the lower value as Server Keep Alive [MQTT-3.2.2-21]; 3.1.1 has no way to say
    /// so, and its clients keep their own value.
    pub max_keepalive: u16,
    /// Largest packet, fixed header included, the broker accepts; larger is refused from the
    /// fixed header alone (5.0: DISCONNECT 0x95). Advertised to 5.0 clients.
    pub max_packet_size: u32,
    /// How many QoS 1/2 PUBLISHes a 5.0 client may have unacknowledged towards the broker
    /// (Receive Maximum, advertised in CONNACK); more is DISCONNECT 0x93 [MQTT-3.3.4-9].
    pub receive_maximum: u16,
    /// Most QoS 1/2 messages in flight to one client at once, lowered further by the client's
    /// own Receive Maximum. Each inflight entry costs ~80 bytes plus a shared message.
    pub max_inflight: u16,
    /// Most messages queued for one session (offline, or waiting for the inflight window), or
    /// in one shared subscription group's queue, on disk and in memory together. Unset: sized
    /// for where queues live ([`Config::max_queued_messages`]): 10,000,000 with a store
    /// (`durable`, `relaxed`: queues wait on disk), 100,000 in `memory` mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_queued_messages: Option<usize>,
    /// Most topic+payload bytes (plus bookkeeping) queued for one session or group, on disk
    /// and in memory together. Queued messages are shared between queues (one copy each), so
    /// this bounds what one queue can pin. Unset: 4 GiB with a store, 64 MiB in `memory` mode
    /// ([`Config::max_queued_bytes`]). With a store the log as a whole is bounded by
    /// `persistence.max_disk_bytes`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_queued_bytes: Option<usize>,
    /// Most bytes of one queue's messages held in memory. With a store, messages the log has
    /// (QoS 1/2 of persistent sessions, of group queues) stay in memory only up to
    /// `persistence.queue_memory_bytes` and wait on disk past it; this bounds the others (QoS 0,
    /// sessions with Session Expiry 0, shared messages handed to a member), so the disk-sized
    /// queue bounds never mean as much memory. Default 64 MiB.
    pub max_queued_memory_bytes: usize,
    /// Most Topic Aliases a 5.0 client may set towards the broker (0: none).
    pub topic_alias_maximum: u16,
    /// Most Topic Aliases the broker uses towards one 5.0 client (further capped by the
    /// client's Topic Alias Maximum; 0 turns outbound aliases off). Least recently used topics
    /// give up their alias; each alias costs ~40 bytes per connection.
    pub max_outbound_topic_aliases: u16,
    /// Highest QoS clients may use (0, 1 or 2). Below 2 it is advertised as Maximum QoS; a
    /// PUBLISH or will above it is refused (5.0: 0x9B [MQTT-3.2.2-11]) and subscriptions are
    /// granted at most this QoS.
    pub maximum_qos: u8,
    /// Whether retained messages are supported. Off: advertised as Retain Available 0, and a
    /// PUBLISH or will with RETAIN set is refused (5.0: 0x9A [MQTT-3.2.2-14]).
    pub retain_available: bool,
    /// Whether `+`/`#` filters may be subscribed to. Off: SUBACK 0xA2 for such filters.
    pub wildcard_subscription_available: bool,
    /// Whether 5.0 Subscription Identifiers are supported. Off: a SUBSCRIBE carrying one is
    /// DISCONNECT 0xA1.
    pub subscription_identifiers_available: bool,
    /// Whether `$share/{group}/{filter}` subscriptions are supported. Off: SUBACK 0x9E.
    pub shared_subscription_available: bool,
    /// Check that payloads flagged as UTF-8 (Payload Format Indicator 1) are valid UTF-8 and
    /// refuse those that are not with 0x99 (5.0, 3.3.2.3.2). Costs one scan of each such payload.
    pub validate_utf8_payloads: bool,
    /// Redirect 5.0 clients to another server (Server Reference, 4.11): new connections are
    /// refused with CONNACK 0x9C Use Another Server (0x9D Server Moved when
    /// `server_moved = true`) carrying this reference, and on shutdown connected 5.0 clients get
    /// DISCONNECT with the same code and reference instead of 0x8B. 3.1.1 clients cannot be
    /// redirected and are refused with return code 3 (Server unavailable). None: no redirection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_reference: Option<String>,
    /// With `server_reference`: the move is permanent (0x9D) rather than temporary (0x9C).
    pub server_moved: bool,
    /// How a shared subscription group (`$share/{group}/{filter}`) picks the one member that
    /// gets each message (see `routing/shared_subscriptions.rs`): `round_robin`, `random`, `hash_client_id`,
    /// `hash_topic`, `sticky` or `least_inflight`.
    pub shared_subscription_strategy: SharedStrategy,
    /// Per-group strategy overriding the broker-wide one, by group name:
    /// `[mqtt.shared_group_strategies]` `workers = "least_inflight"`.
    pub shared_group_strategies: BTreeMap<String, SharedStrategy>,
    /// What happens when a subscriber's queue is full (see the README's table):
    /// `drop_newest` (`drop`: the new message is not queued for that subscriber),
    /// `drop_oldest` (the oldest queued message of that session makes room), `reject` (a QoS
    /// 1/2 PUBLISH goes to nobody and the publisher is told: v5 PUBACK/PUBREC 0x97, 3.1.1
    /// disconnected) or `disconnect_slow_consumer` (as `drop_newest`, and a client whose queue
    /// stays full for `slow_consumer_seconds` is disconnected, v5 DISCONNECT 0x97, its session
    /// kept). Every drop is counted by reason and by client; the first and every 1000th of a
    /// client are logged. Overridable per `[[shaping]]` rule (`overflow`).
    pub queue_full_policy: QueueFullPolicy,
    /// With `disconnect_slow_consumer`: how long a queue may stay full (from the first message
    /// it refused until it is back under three quarters of its bounds) before its client is
    /// disconnected.
    pub slow_consumer_seconds: u32,
    /// What happens to a shared subscription group's messages when its last member's session
    /// ends (or the last member unsubscribes): the messages in the group's queue and those the
    /// departed member had queued or unacknowledged. `keep` (default): they wait in the group's
    /// queue (within its bounds, `max_queued_messages` / `max_queued_bytes`) for a new member,
    /// at most `shared_group_orphan_expiry_seconds`; `drop`: dropped at once. Either way the
    /// dropped ones are counted and logged.
    pub shared_group_orphan_policy: OrphanPolicy,
    /// With `shared_group_orphan_policy = "keep"`: how long a group without members keeps its
    /// messages, from its last member's departure (or from a restart). Default: one day.
    pub shared_group_orphan_expiry_seconds: u32,
    /// Longest delay a `$delayed/{seconds}/{topic}` PUBLISH may ask for, in seconds (at most
    /// 4,294,967, about 49.7 days, as EMQX); longer is refused with 0x90 Topic Name Invalid.
    pub max_delay_seconds: u32,
    /// Delivery priorities within a session's queue: `[[mqtt.priorities]]` `filter = "..."`,
    /// `priority = 0..255`. A message gets the highest priority of the filters its topic
    /// matches (0 when none does), decided once when it is published; queued messages of a
    /// higher priority are sent first, order within one priority is kept. Empty (default): one
    /// queue, today's order, no matching at all.
    pub priorities: Vec<PriorityRule>,
}

/// One `[[mqtt.priorities]]` rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriorityRule {
    /// A topic filter (wildcards allowed, no `$share/`).
    pub filter: String,
    /// 0 (the default of unmatched messages) to 255 (first).
    pub priority: u8,
}

/// The largest `mqtt.max_delay_seconds` (EMQX's bound: `u32::MAX` milliseconds).
pub const MAX_DELAY_SECONDS: u32 = 4_294_967;

/// `mqtt.shared_group_orphan_policy`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrphanPolicy {
    /// The group's messages wait for a new member, up to the expiry.
    #[default]
    Keep,
    /// The group's messages are dropped when its last member is gone.
    Drop,
}

/// `mqtt.max_queued_messages` by default in `memory` mode (queues in memory).
pub const MEMORY_MAX_QUEUED_MESSAGES: usize = 100_000;
/// `mqtt.max_queued_bytes` by default in `memory` mode, and `mqtt.max_queued_memory_bytes`.
pub const MEMORY_MAX_QUEUED_BYTES: usize = 64 * 1024 * 1024;
/// `mqtt.max_queued_messages` by default with a store (queues on disk): a peak of orders far
/// larger than any one memory could hold is absorbed, not dropped.
pub const DISK_MAX_QUEUED_MESSAGES: usize = 10_000_000;
/// `mqtt.max_queued_bytes` by default with a store (4 GiB).
pub const DISK_MAX_QUEUED_BYTES: u64 = 4 * 1024 * 1024 * 1024;

/// `mqtt.queue_full_policy` (and a `[[shaping]]` rule's `overflow`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueFullPolicy {
    /// The subscriber whose queue is full misses the new message (counted, logged); the
    /// others get it and the publisher's flow completes. `drop` is accepted for it.
    #[default]
    #[serde(alias = "drop")]
    DropNewest,
    /// The oldest queued message of the subscriber's session is dropped (counted, logged) to
    /// make room for the new one.
    DropOldest,
    /// The PUBLISH is refused for everybody: back-pressure on the publisher.
    Reject,
    /// As `DropNewest`, and a client whose queue stays full for `mqtt.slow_consumer_seconds`
    /// is disconnected (v5 DISCONNECT 0x97); its session stays.
    DisconnectSlowConsumer,
}

impl QueueFullPolicy {
    /// The name as written in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueFullPolicy::DropNewest => "drop_newest",
            QueueFullPolicy::DropOldest => "drop_oldest",
            QueueFullPolicy::Reject => "reject",
            QueueFullPolicy::DisconnectSlowConsumer => "disconnect_slow_consumer",
        }
    }
}

/// Member selection in a shared subscription group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SharedStrategy {
    /// Each member in turn.
    #[default]
    RoundRobin,
    /// A uniformly random member.
    Random,
    /// By a hash of the publisher's client id: one publisher's messages go to one member.
    HashClientId,
    /// By a hash of the topic: one topic's messages go to one member (per-topic order).
    HashTopic,
    /// The same member while it has room, then the next one.
    Sticky,
    /// The member with the most free receive window (spreads a burst over unequal workers).
    LeastInflight,
}

impl Default for MqttConfig {
    fn default() -> MqttConfig {
        MqttConfig {
            max_keepalive: 65_535,
            max_packet_size: 1024 * 1024,
            receive_maximum: 256,
            max_inflight: 256,
            max_queued_messages: None,
            max_queued_bytes: None,
            max_queued_memory_bytes: MEMORY_MAX_QUEUED_BYTES,
            topic_alias_maximum: 64,
            max_outbound_topic_aliases: 32,
            maximum_qos: 2,
            retain_available: true,
            wildcard_subscription_available: true,
            subscription_identifiers_available: true,
            shared_subscription_available: true,
            validate_utf8_payloads: false,
            server_reference: None,
            server_moved: false,
            shared_subscription_strategy: SharedStrategy::RoundRobin,
            queue_full_policy: QueueFullPolicy::DropNewest,
            slow_consumer_seconds: 30,
            shared_group_strategies: BTreeMap::new(),
            shared_group_orphan_policy: OrphanPolicy::Keep,
            shared_group_orphan_expiry_seconds: 86_400,
            max_delay_seconds: MAX_DELAY_SECONDS,
            priorities: Vec::new(),
        }
    }
}

/// The `[auth]` section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Whether clients without a username may connect. Unset: true without a password file,
    /// false with one (see [`AuthConfig::allows_anonymous`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_anonymous: Option<bool>,
    /// Password file (`username:hash` lines: Mosquitto's `$7$`/`$6$`, or argon2id from
    /// `sluice passwd`). Reloaded on SIGHUP. None: usernames are not checked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// Mosquitto-format ACL file, checked on PUBLISH, SUBSCRIBE and delivery. None: no ACL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acl_file: Option<PathBuf>,
}

impl AuthConfig {
    /// The effective `allow_anonymous`.
    pub fn allows_anonymous(&self) -> bool {
        self.allow_anonymous.unwrap_or(self.password_file.is_none())
    }
}

/// A configuration that cannot be used: which key, which value, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key (`mqtt.max_packet_size`), or the file for errors about the file itself.
    pub key: String,
    /// The offending value as written, when there is one.
    pub value: String,
    /// Why it was refused.
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.value.is_empty() {
            write!(f, "{}: {}", self.key, self.reason)
        } else {
            write!(f, "{} = {}: {}", self.key, self.value, self.reason)
        }
    }
}

impl std::error::Error for ConfigError {}

fn invalid(key: &str, value: impl fmt::Display, reason: &str) -> ConfigError {
    ConfigError {
        key: key.into(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

impl Config {
    /// Loads `file` (if any), applies `SLUICE__SECTION__KEY` overrides from the process
    /// environment, and validates the result.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Config::load_from(file, std::env::vars())
    }

    /// [`Config::load`] with an explicit environment (tests).
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(path) = file {
            if !path.is_file() {
                return Err(invalid(
                    "--config",
                    path.display(),
                    "no such file (or not a regular file)",
                ));
            }
            builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml));
        }
        let env: config::Map<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}{ENV_SEPARATOR}")))
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator(ENV_SEPARATOR)
                .separator(ENV_SEPARATOR)
                .try_parsing(true)
                .source(Some(env)),
        );
        let layered = builder.build().map_err(from_config_error)?;
        let config: Config = layered.clone().try_deserialize().map_err(|e| {
            let mut err = from_config_error(e);
            if err.value.is_empty() {
                // Unknown keys: the config crate does not say the value; look it up.
                if let Ok(v) = layered.get::<config::Value>(&err.key) {
                    err.value = v.to_string();
                }
            }
            err
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Whether queues can wait on disk (a store is configured: `durable` or `relaxed`).
    fn queues_on_disk(&self) -> bool {
        self.persistence.mode != PersistenceMode::Memory
    }

    /// The effective `mqtt.max_queued_messages`: as set, else sized for where queues live.
    pub fn max_queued_messages(&self) -> usize {
        self.mqtt
            .max_queued_messages
            .unwrap_or(if self.queues_on_disk() {
                DISK_MAX_QUEUED_MESSAGES
            } else {
                MEMORY_MAX_QUEUED_MESSAGES
            })
    }

    /// The effective `mqtt.max_queued_bytes`: as set, else sized for where queues live.
    pub fn max_queued_bytes(&self) -> usize {
        self.mqtt
            .max_queued_bytes
            .unwrap_or(if self.queues_on_disk() {
                usize::try_from(DISK_MAX_QUEUED_BYTES).unwrap_or(usize::MAX)
            } else {
                MEMORY_MAX_QUEUED_BYTES
            })
    }

    /// The effective configuration as TOML (for `--check-config`), defaults resolved.
    pub fn to_toml(&self) -> String {
        let mut effective = self.clone();
        effective.auth.allow_anonymous = Some(self.auth.allows_anonymous());
        effective.mqtt.max_queued_messages = Some(self.max_queued_messages());
        effective.mqtt.max_queued_bytes = Some(self.max_queued_bytes());
        if !effective.admin.token.is_empty() {
            // A secret: printed configurations end up in tickets and chat.
            effective.admin.token = "(set, not shown)".into();
        }
        toml::to_string_pretty(&effective).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

/// Turns the `config` crate's error into key / value / reason. Its messages read
/// "invalid type: string \"x\", expected u32 for key `mqtt.k` in FILE" or
/// "unknown field `k`, expected one of ... for key `mqtt`".
fn from_config_error(e: config::ConfigError) -> ConfigError {
    let text = e.to_string();
    let between = |start: &str, end: &str| {
        text.split(start)
            .nth(1)
            .and_then(|rest| rest.split(end).next())
            .map(str::to_owned)
    };
    let key = between("for key `", "`");
    if let Some(field) = between("unknown field `", "`") {
        let key = match key {
            Some(section) if !section.is_empty() => format!("{section}.{field}"),
            _ => field,
        };
        let expected = between(", expected ", " for key").unwrap_or_default();
        return ConfigError {
            key,
            value: String::new(),
            reason: format!("unknown key; expected {expected}"),
        };
    }
    let value = between("invalid type: ", ", expected")
        .or_else(|| between("invalid value: ", ", expected"))
        .unwrap_or_default();
    ConfigError {
        key: key.unwrap_or_else(|| "config".into()),
        value,
        reason: text,
    }
}

mod admin;
mod validate;

pub use admin::AdminConfig;

#[cfg(test)]
mod tests;
