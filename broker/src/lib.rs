//! Sluice: an MQTT 3.1 / 3.1.1 / 5.0 broker for fleets of lightweight devices.
//!
//! # Layout
//! Layers, each a folder or file; an arrow points down only (a module never imports one above
//! it: `tests/module_layers.rs` fails on any import cycle):
//!
//! ```text
//! listener     TCP / TLS / WebSocket accept loops, admission control, graceful shutdown
//!   -> metrics      reads the counters and the state: Prometheus text, the `$SYS` publisher
//!   -> bridge       `[[bridges]]`: one task per bridge, a client of a remote broker and of
//!                   its local session `$bridge/{name}` (served by the connection task in
//!                   process)
//!   -> cluster      cluster mode (`[cluster]`): the NATS connections, the task that sends
//!                   this node's messages and interest to NATS and routes what comes back,
//!                   the retained bucket (absent: never started)
//!   -> observe      the admin HTTP listener: API, /metrics, dashboard (beside the MQTT ones)
//!     -> metrics      Prometheus text of the broker's counters
//!   -> connection   the per-client task: socket, buffers, timers, one hand-polled loop
//!     -> protocol     sans-IO state machine: CONNECT negotiation and admission, PUBLISH and
//!                     ack flows, SUBSCRIBE, AUTH, outbound topic aliases (packets and a time
//!                     in, packets and routing out)
//!       -> broker       the session registry and lifecycle (open with takeover, park, expiry,
//!                       delayed wills, restore after a restart); wires the parts below
//!         -> routing      Router: subscription tree, retained store, shared-subscription
//!                         groups, `$delayed` messages (one timer), the fan-out of one PUBLISH
//!         -> session      Session (owned by one task), SessionHandle and its Outbox (shared),
//!                         the takeover slot, every connection's Keep Alive (one task)
//!           -> persist      the write-ahead log: Journal (event-named methods), writer
//!                           thread, group commit, recovery
//!             -> auth         AccessControl: ACL, passwords, SCRAM, failed-login delays
//!               -> shaping      egress token buckets and `[[shaping]]` rules (sans-IO)
//!               -> config, message, topic, stats, hot_topics, locks, certgen   (leaves; `stats` is the
//!                  one registry of counters, striped per thread, added to per batch)
//! ```
//! * [`config`]: the TOML file and `SLUICE__SECTION__KEY` overrides, validated up front.
//! * [`listener`]: listeners, accept loops, graceful shutdown ([`Server`]); TLS (rustls,
//!   certificate reload) and MQTT over WebSockets wrap a listener's sockets before MQTT.
//! * [`bridge`]: bridges to other MQTT brokers; the local side is an ordinary persistent
//!   session, so a bridge's queue is bounded, persisted and restored like any session's.
//! * [`cluster`]: cluster mode on NATS JetStream: topic-to-subject mapping, the wire format
//!   between nodes, interest propagation, the retained bucket, shared groups across nodes.
//! * [`observe`]: the admin HTTP listener (`[admin]`): `/metrics` ([`metrics`]), health,
//!   the JSON API (clients, sessions, subscriptions, shared groups, retained, publish) and
//!   the live dashboard; it reads the broker's registry and router and kicks clients through
//!   the same control slot as a takeover.
//! * [`connection`]: the per-client task, the only owner of a socket and, while connected, of
//!   the client's [`session::Session`]; per-connection ingress rate limits.
//! * [`protocol`]: the MQTT state machine, unit-tested without sockets; `protocol::connect`
//!   negotiates a CONNECT and admits the client (the one path the connection task and the fuzz
//!   harness share).
//! * [`broker`]: [`Broker`], the session registry and the session lifecycle.
//! * [`routing`]: [`routing::Router`], where a PUBLISH goes; its subscription tree, retained
//!   store and shared subscriptions (member selection, group queues, hand-over, a group's
//!   lifetime).
//! * [`session`]: session state and the byte-bounded, disk-backed outbox (one lane per
//!   `mqtt.priorities` priority); the slot through which a connection is asked to hand its
//!   session over; the Keep Alive deadlines of all connections, served by one task.
//! * [`persist`]: the write-ahead log, its writer thread (group commit) and start-up recovery.
//!   Other modules tell it what happened through the journal, one method per event
//!   (`message_stored`, `message_queued`, `delivery_sent`, `session_parked`...,
//!   `persist/journal.rs`); only `persist` names its record kinds (`persist::Record`), which
//!   `broker/tests/module_layers.rs` checks.
//! * [`auth`]: [`auth::AccessControl`] (ACL, password file, failed logins) and the AUTH exchange.
//! * [`metrics`]: `render_prometheus` and the `$SYS` topics, both read from [`stats`] (counted
//!   per read batch and per drain in plain integers, then added to per-thread stripes: no lock
//!   and no shared write per message).
//! * [`topic`]: what `$` topics mean to the broker ([MQTT-4.7.2-1], `$SYS`, `$share`).
//! * [`certgen`]: development certificates (`sluice gen-certs`).
//! * The wire codec is its own crate, `sluice-codec` (`broker/codec`).
//!
//! # Life of a PUBLISH
//! 1. The publisher's connection task ([`connection`]) reads with `read_buf` (many packets per
//!    syscall); the decoder checks the declared size against `mqtt.max_packet_size` before
//!    buffering a body and copies topic and payload out once into a right-sized `Bytes`.
//! 2. [`protocol::ClientState`] validates (alias, packet id, receive quota), asks
//!    [`auth::AccessControl`] whether the client may publish there, and builds one
//!    `Arc<Message>`: the only copy of the payload the broker makes.
//! 3. Still in the publisher's task, [`routing::Router`] updates the retained store, matches the
//!    tree under a read lock, merges overlapping subscriptions per client, checks each
//!    subscriber's read access, and pushes a small [`session::Delivery`] onto each subscriber's
//!    byte-bounded outbox (or a shared group's queue). It never awaits; a full outbox is a
//!    policy decision (`mqtt.queue_full_policy`), never a stall. For persistent sessions the
//!    message and its queue entries are handed to the store's writer first through the
//!    journal (`Store::message_stored`, `Store::message_queued`, inside the PUBLISH's
//!    `Store::batch`; no I/O here).
//!    In cluster mode the router also hands the message to the node's cluster task (a queue
//!    bounded in bytes, never awaited), which publishes it to NATS; the other nodes route it
//!    to their subscribers the same way ([`routing::Router::publish_remote`]).
//! 4. The publisher's PUBACK/PUBREC waits for the store's ticket ([`persist`]): written and
//!    fsynced with everyone else's records of that moment (group commit) in `durable` mode. In
//!    cluster mode the ticket is the cluster's: answered once JetStream has acknowledged the
//!    QoS 1/2 messages before it into the stream that persistent sessions moving between
//!    nodes replay from (`cluster/acks.rs`, `cluster/sessions.rs`).
//! 5. Each subscriber's task, woken by `Notify`, drains its outbox into the inflight window
//!    (bounded by the client's Receive Maximum, and by its `[[shaping]]` token bucket: an
//!    empty bucket leaves the rest queued and the task sleeps until the next token,
//!    [`shaping`], `protocol/shaping.rs`), encodes into its write buffer and writes once
//!    (journal: `Store::deliveries_sent`, one run per drain turn; its PUBACKs: `Store::delivery_acked`).
//!    A message going to many subscribers is encoded once per wire form (protocol level, QoS,
//!    RETAIN, DUP, remaining expiry) and kept on the message; the others copy those bytes and
//!    patch their packet id ([`message::EncodedForms`], `protocol/outbound.rs`).
//! 6. Acknowledgements release inflight slots, which lets the next queued messages go.

pub mod auth;
pub mod bridge;
pub mod broker;
pub mod certgen;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod hot_topics;
pub mod listener;
pub mod locks;
pub mod message;
pub mod metrics;
pub mod observe;
pub mod persist;
pub mod protocol;
pub mod routing;
pub mod session;
pub mod shaping;
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
