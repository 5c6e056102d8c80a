//! Sluice: an MQTT 3.1 / 3.1.1 / 5.0 broker for fleets of lightweight devices.
//!
//! # Layout
//! * [`config`]: the TOML file and `SLUICE__SECTION__KEY` overrides, validated up front.
//! * [`server`]: listeners, accept loops, graceful shutdown ([`Server`]); [`tls`] (rustls,
//!   certificate reload) and `ws` (MQTT over WebSockets) wrap a listener's sockets before MQTT.
//! * [`certgen`]: development certificates (`sluice gen-certs`).
//! * `connection`: the per-client task, the only owner of a socket and, while connected, of
//!   the client's [`session::Session`].
//! * [`protocol`] and `connect`: the MQTT state machine, sans IO (packets and a time in, packets
//!   and routing out), unit-tested without sockets.
//! * [`broker`]: shared state (session registry, subscription tree, retained store, ACL) and
//!   the session lifecycle (takeover, expiry, delayed wills). `router`: fan-out of one PUBLISH.
//! * [`subscriptions`], [`retain`], [`acl`], [`passwords`]: matching and policy.
//! * [`shared`]: shared subscriptions (member selection, group queues, hand-over, a group's
//!   lifetime).
//! * [`persist`]: the write-ahead log, its writer thread (group commit) and start-up recovery.
//! * [`ratelimit`]: per-connection ingress rate limits.
//! * The wire codec is its own crate, `sluice-codec` (`broker/codec`).
//!
//! # Life of a PUBLISH
//! 1. The publisher's connection task reads with `read_buf` (many packets per syscall); the
//!    decoder checks the declared size against `mqtt.max_packet_size` before buffering a body
//!    and copies topic and payload out once into a right-sized `Bytes`.
//! 2. [`protocol::ClientState`] validates (alias, ACL, packet id, receive quota) and builds one
//!    `Arc<Message>`: the only copy of the payload the broker makes.
//! 3. Still in the publisher's task, `Broker::publish` updates the retained store, matches the
//!    tree under a read lock, merges overlapping subscriptions per client, and pushes a small
//!    [`session::Delivery`] onto each subscriber's byte-bounded outbox. It never awaits; a full
//!    outbox drops the message for that subscriber and counts it. For persistent sessions the
//!    message and its queue entry are handed to the store's writer first (no I/O here).
//! 4. The publisher's PUBACK/PUBREC waits for the store's ticket: written and fsynced with
//!    everyone else's records of that moment (group commit) in `durable` mode.
//! 5. Each subscriber's task, woken by `Notify`, drains its outbox into the inflight window
//!    (bounded by the client's Receive Maximum), encodes into its write buffer and writes once.
//! 6. Acknowledgements release inflight slots, which lets the next queued messages go.

pub mod auth;
pub mod broker;
pub mod certgen;
pub mod config;
pub mod connection;
pub mod listener;
pub mod locks;
pub mod message;
pub mod persist;
pub mod protocol;
pub mod routing;
pub mod session;
pub mod stats;
pub mod topic;

pub use broker::Broker;
pub use config::{Config, ConfigError};
pub use listener::Server;

/// CONNECT negotiation and admission, for the protocol fuzz target and its corpus replay
/// (`fuzz/harness`), which drive [`protocol::ClientState`] without sockets through the same
/// steps as the connection task. Not a stable API.
#[doc(hidden)]
pub use protocol::connect::{admit, negotiate, refusal, Accepted, Admitted, Credentials, Refused};

/// The largest packet MQTT can express: 268,435,455 bytes of remaining length plus 5 bytes of
/// fixed header.
pub const MAX_PACKET_SIZE: u32 = 268_435_460;
