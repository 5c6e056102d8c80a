//! The journal: what the rest of the broker tells the store, one method per event.
//!
//! Code outside `persist/` never builds a [`Record`]: it calls the method named for what
//! happened (`message_queued`, `delivery_sent`, `session_parked`...), and the record kinds, their
//! fields and their encoding stay this module's business. Each method appends exactly the
//! record it names, without waiting ([`Store::append`]): what waits for the disk is the packet
//! that asks for a ticket afterwards ([`Store::ticket`]), as the table "What waits for the disk"
//! in `persist/mod.rs` says. The promise of each event is written beside its method. With the
//! store disabled every method does nothing.
//!
//! A record that a caller must carry and log later (the release of a delivery handed to another
//! shared-subscription member, the `Qos2In` of a PUBLISH logged after its message, the horizon
//! reset of a closing connection) is a [`Pending`], built by a constructor named for the event
//! and logged with [`Store::log_pending`].

use std::sync::Arc;

use sluice_codec::{LastWill, QoS, Str, SubscriptionOptions, TopicFilter};

use crate::message::{ClientId, Message};

use super::{Record, RunItem, Store};

/// A journal entry built now and logged later with [`Store::log_pending`] (opaque: only its
/// constructors name what it records).
#[derive(Debug, Clone)]
pub struct Pending(Record);

impl Pending {
    /// The inflight entry `pkid` of `client` is done (see [`Store::delivery_acked`]): the
    /// release of a QoS 1 delivery moved to another shared-subscription member.
    pub fn delivery_acked(client: ClientId, pkid: u16) -> Pending {
        Pending(Record::Acked { client, pkid })
    }

    /// Queued delivery `seq` of `client` was dropped unsent (see [`Store::delivery_skipped`]).
    pub fn delivery_skipped(client: ClientId, seq: u64) -> Pending {
        Pending(Record::Skip { client, seq })
    }

    /// Inbound QoS 2 `pkid` received (see [`Store::qos2_received`]).
    pub fn qos2_received(client: ClientId, pkid: u16) -> Pending {
        Pending(Record::Qos2In { client, pkid })
    }

    /// `client`'s sent horizon set back to `seq` (see [`Store::sent_horizon_logged`]).
    pub fn sent_horizon(client: ClientId, seq: u64) -> Pending {
        Pending(Record::SentHorizon { client, seq })
    }

    /// Whether this releases an inflight entry (built by [`Pending::delivery_acked`]).
    pub fn is_delivery_acked(&self) -> bool {
        matches!(self.0, Record::Acked { .. })
    }
}

impl Store {
    /// Logs a record built earlier, as its constructor promised.
    pub fn log_pending(&self, pending: Pending) {
        self.append(pending.0);
    }

    /// Message `msg` is kept by some queue or the retained store: its body (`Message`), and
    /// its priority lane when not 0 (`Priority`). Held, with the queue entries logged after
    /// it, until the PUBACK / PUBREC of a QoS 1/2 PUBLISH.
    pub fn message_stored(&self, msg: &Arc<Message>) {
        self.append(Record::Message(msg.clone()));
        if msg.priority != 0 {
            self.append(Record::Priority {
                id: msg.id,
                priority: msg.priority,
            });
        }
    }

    /// The retained message of `topic` is message `id` (logged before). Held until the
    /// PUBACK / PUBREC of the PUBLISH that set it.
    pub fn retained_set(&self, topic: Str, id: u64) {
        self.append(Record::Retain { topic, id });
    }

    /// The retained message of `topic` was deleted. Held as [`Store::retained_set`].
    pub fn retained_cleared(&self, topic: Str) {
        self.append(Record::Retain { topic, id: 0 });
    }

    /// A persistent session of `client` is connected with these settings (`Session`, `since`
    /// 0). Nothing waits for it (CONNACK is not held): a crash keeps the session as logged
    /// before.
    pub fn session_opened(
        &self,
        client: ClientId,
        expiry: u32,
        username: Option<Arc<str>>,
        will: Option<Box<LastWill>>,
    ) {
        self.append(Record::Session {
            client,
            expiry,
            username,
            will,
            since: 0,
        });
    }

    /// `client` went away at `since` (Unix ms) and its session waits `expiry` seconds, with
    /// `will` (delayed) to fire if it does not come back. Nothing waits for it.
    pub fn session_parked(
        &self,
        client: ClientId,
        expiry: u32,
        username: Option<Arc<str>>,
        will: Option<Box<LastWill>>,
        since: u64,
    ) {
        self.append(Record::Session {
            client,
            expiry,
            username,
            will,
            since,
        });
    }

    /// The session of `client` ended: everything of it is gone (`SessionGone`). Nothing waits
    /// for it.
    pub fn session_gone(&self, client: ClientId) {
        self.append(Record::SessionGone { client });
    }

    /// `client` subscribed to `filter`. Held until the SUBACK.
    pub fn subscribed(
        &self,
        client: ClientId,
        filter: TopicFilter,
        options: SubscriptionOptions,
        identifier: Option<u32>,
    ) {
        self.append(Record::Subscribe {
            client,
            filter,
            options,
            identifier,
        });
    }

    /// `client` unsubscribed from `filter`. Held until the UNSUBACK.
    pub fn unsubscribed(&self, client: ClientId, filter: TopicFilter) {
        self.append(Record::Unsubscribe { client, filter });
    }

    /// Message `id` (logged before) queued for `client` as its delivery `seq` (`Enqueue`),
    /// through shared subscription `shared` if any. Held until the PUBACK / PUBREC of the
    /// PUBLISH that queued it; taken from a group queue, nothing waits for it.
    #[allow(clippy::too_many_arguments)]
    pub fn message_queued(
        &self,
        client: ClientId,
        seq: u64,
        id: u64,
        qos: QoS,
        retain: bool,
        subscription_ids: Vec<u32>,
        shared: Option<TopicFilter>,
    ) {
        self.append(Record::Enqueue {
            client,
            seq,
            id,
            qos,
            retain,
            subscription_ids,
            shared,
        });
    }

    /// Delivery `seq` of `client` was sent with packet id `pkid` (`Sent`, merged into
    /// `SentMany` inside a batch). A QoS 2 PUBLISH waits for it; a QoS 1 one does not.
    pub fn delivery_sent(&self, client: &ClientId, seq: u64, pkid: u16) {
        self.append_run(client, RunItem::Sent { seq, pkid });
    }

    /// Deliveries of `client` written at once, `(seq, pkid)` each in sending order: one
    /// `SentMany`, as [`Store::delivery_sent`] for each of them makes inside a batch, with one
    /// append for the whole run (a drain turn) instead of one per delivery. Nothing waits for
    /// them but a QoS 2 PUBLISH among them, held until a ticket asked for after this call.
    pub fn deliveries_sent(&self, client: &ClientId, sent: Vec<(u64, u16)>) {
        self.append_sent_many(client, sent);
    }

    /// Queued delivery `seq` of `client` was dropped unsent (expired, too large, moved, read
    /// error): `Skip`. Nothing waits for it.
    pub fn delivery_skipped(&self, client: ClientId, seq: u64) {
        self.append(Record::Skip { client, seq });
    }

    /// PUBACKs of `client` read at once, in order: one `AckedMany`, as
    /// [`Store::delivery_acked`] for each of them makes inside a batch, with one append for the
    /// run. Nothing waits for them.
    pub fn deliveries_acked(&self, client: &ClientId, pkids: Vec<u16>) {
        self.append_acked_many(client, pkids);
    }

    /// PUBACK / PUBCOMP: the inflight entry `pkid` of `client` is done (`Acked`, merged into
    /// `AckedMany` inside a batch). Nothing waits for it.
    pub fn delivery_acked(&self, client: &ClientId, pkid: u16) {
        self.append_run(client, RunItem::Acked { pkid });
    }

    /// PUBREC: inflight `pkid` of `client` now awaits PUBCOMP (`Released`). Held until the
    /// PUBREL goes.
    pub fn delivery_released(&self, client: ClientId, pkid: u16) {
        self.append(Record::Released { client, pkid });
    }

    /// Inbound QoS 2 `pkid` of `client` received (`Qos2In`). Held until the PUBREC.
    pub fn qos2_received(&self, client: ClientId, pkid: u16) {
        self.append(Record::Qos2In { client, pkid });
    }

    /// Inbound QoS 2 `pkid` of `client` released by PUBREL (`Qos2InDone`). Held until the
    /// PUBCOMP.
    pub fn qos2_released(&self, client: ClientId, pkid: u16) {
        self.append(Record::Qos2InDone { client, pkid });
    }

    /// `client`'s deliveries numbered up to `seq` may have been sent (`SentHorizon`). The
    /// first delivery past the horizon on disk waits for it.
    pub fn sent_horizon_logged(&self, client: ClientId, seq: u64) {
        self.append(Record::SentHorizon { client, seq });
    }

    /// Message `id` waits in the queue of shared subscription `group` as its delivery `seq`
    /// (`GroupEnqueue`). Held until the PUBACK / PUBREC of the PUBLISH.
    pub fn group_queued(&self, group: TopicFilter, seq: u64, id: u64, qos: QoS, retain: bool) {
        self.append(Record::GroupEnqueue {
            group,
            seq,
            id,
            qos,
            retain,
        });
    }

    /// The group's delivery `seq` left its queue (taken by a member, or dropped):
    /// `GroupTaken`. Nothing waits for it.
    pub fn group_taken(&self, group: TopicFilter, seq: u64) {
        self.append(Record::GroupTaken { group, seq });
    }

    /// Message `id` (logged before) is a `$delayed` PUBLISH due at `due` (Unix ms). Held until
    /// the PUBACK / PUBREC.
    pub fn delayed_stored(&self, id: u64, due: u64) {
        self.append(Record::Delayed { id, due });
    }

    /// Delayed message `id` was routed (its queue entries logged before) or dropped. Nothing
    /// waits for it.
    pub fn delayed_done(&self, id: u64) {
        self.append(Record::DelayedDone { id });
    }
}
