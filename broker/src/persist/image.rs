//! The in-memory image of what the log holds: sessions, queues, the message index and its
//! reference counts.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use sluice_codec::{LastWill, QoS, Str, SubscriptionOptions, TopicFilter};

use crate::message::ClientId;

use super::*;

/// A map keyed by message id.
pub type IdMap<V> = HashMap<u64, V, std::hash::BuildHasherDefault<IdHasher>>;

/// Hashes message ids so that neighbouring ids land in neighbouring buckets: a queue refers to
/// rising ids and drains them in order, so lookups walk the table instead of missing the cache
/// every time (the map holds every stored message: a million entries for a large backlog). The
/// top seven bits, which the table compares first, are mixed from the whole id. Ids are the
/// broker's own (unique, rising), never a client's choice, so nothing can be forced to collide.
#[derive(Debug, Default, Clone, Copy)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(self.0.rotate_left(8) ^ u64::from(*b));
        }
    }

    fn write_u64(&mut self, id: u64) {
        const TOP: u64 = 0xFE00_0000_0000_0000;
        self.0 = id ^ (id.wrapping_mul(0x9E37_79B9_7F4A_7C15) & TOP);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A queued delivery as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedImage {
    /// The session's delivery number (see [`Record::Enqueue`]).
    pub seq: u64,
    pub id: u64,
    pub qos: QoS,
    pub retain: bool,
    /// Boxed slices: a stored queue can be long, and every entry pays for these.
    pub subscription_ids: Box<[u32]>,
    pub shared: Option<Box<TopicFilter>>,
}

/// An inflight entry as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InflightImage {
    Publish { pkid: u16, queued: QueuedImage },
    Release { pkid: u16 },
}

/// A persistent session as stored.
#[derive(Debug, Clone, Default)]
pub struct SessionImage {
    pub expiry: u32,
    /// When the client went away (Unix ms), 0 if it was connected.
    pub since: u64,
    pub username: Option<Arc<str>>,
    pub will: Option<LastWill>,
    pub subscriptions: HashMap<TopicFilter, (SubscriptionOptions, Option<u32>)>,
    pub queue: VecDeque<QueuedImage>,
    /// In sending order: acknowledgements mostly take the front.
    pub inflight: VecDeque<InflightImage>,
    pub qos2_in: HashSet<u16>,
    /// Above every delivery number used so far.
    pub next_seq: u64,
    /// Queued deliveries numbered up to this may have been sent before (see
    /// [`Record::SentHorizon`]): they go out with DUP.
    pub sent_horizon: u64,
}

/// Where a message's record sits in the live log file, and how many queue, inflight and
/// retained references hold it. The payload itself stays on disk: the image is metadata only,
/// so a large backlog costs disk, not memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsgSlot {
    /// Offset of the record's frame in the live log file.
    pub at: u64,
    /// Length of the frame (header included).
    pub len: u32,
    pub refs: u32,
}

impl SessionImage {
    /// `Record::Sent`: queued delivery `seq` went out as `pkid`.
    fn sent(&mut self, seq: u64, pkid: u16) {
        // Mostly the front: a queue is sent in order.
        let front = self.queue.front().is_some_and(|q| q.seq == seq);
        if front {
            if let Some(queued) = self.queue.pop_front() {
                self.inflight
                    .push_back(InflightImage::Publish { pkid, queued });
            }
            if shrinkable(self.queue.len(), self.queue.capacity()) {
                self.queue.shrink_to(self.queue.len() * 2);
            }
        } else if let Some(pos) = self.queue.iter().position(|q| q.seq == seq) {
            if let Some(queued) = take_entry(&mut self.queue, pos) {
                self.inflight
                    .push_back(InflightImage::Publish { pkid, queued });
            }
        }
    }
}

/// A delivery waiting in a shared subscription's group queue, as stored: 16 bytes, a third of
/// a [`QueuedImage`] (a group queue of a burst can be as long as the burst, and its entries
/// never carry subscription identifiers or a group name of their own). QoS and RETAIN ride in
/// the top bits of the delivery number (a group's numbers count from 1: they never get there).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct GroupQueuedImage {
    /// The group's delivery number (see [`Record::GroupEnqueue`]) below
    /// [`GroupQueuedImage::FLAGS`]; QoS (bits 62-63) and RETAIN (bit 61) above.
    seq_flags: u64,
    pub id: u64,
}

impl GroupQueuedImage {
    const FLAGS: u32 = 61;
    const SEQ: u64 = (1 << Self::FLAGS) - 1;

    /// The entry; None for a delivery number past 2^61 (no group gets there: 1 per message).
    pub fn new(seq: u64, id: u64, qos: QoS, retain: bool) -> Option<GroupQueuedImage> {
        if seq > Self::SEQ {
            return None;
        }
        let qos = u64::from(qos as u8) << (Self::FLAGS + 1);
        Some(GroupQueuedImage {
            seq_flags: seq | qos | (u64::from(retain) << Self::FLAGS),
            id,
        })
    }

    /// The group's delivery number.
    pub fn seq(&self) -> u64 {
        self.seq_flags & Self::SEQ
    }

    pub fn qos(&self) -> QoS {
        match self.seq_flags >> (Self::FLAGS + 1) {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            _ => QoS::ExactlyOnce,
        }
    }

    pub fn retain(&self) -> bool {
        self.seq_flags >> Self::FLAGS & 1 == 1
    }
}

impl std::fmt::Debug for GroupQueuedImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupQueuedImage")
            .field("seq", &self.seq())
            .field("id", &self.id)
            .field("qos", &self.qos())
            .field("retain", &self.retain())
            .finish()
    }
}

/// A shared subscription's group queue as stored.
#[derive(Debug, Clone, Default)]
pub struct GroupImage {
    pub queue: VecDeque<GroupQueuedImage>,
    /// Above every delivery number used so far.
    pub next_seq: u64,
}

/// Everything persistent, as the log describes it.
#[derive(Debug, Default)]
pub struct Image {
    /// Group queues of shared subscriptions, by `$share/{group}/{filter}`.
    pub groups: HashMap<TopicFilter, GroupImage>,
    /// Messages by id: where they are in the log, and their references.
    pub messages: IdMap<MsgSlot>,
    /// Retained message ids by topic.
    pub retained: HashMap<Str, u64>,
    pub sessions: HashMap<ClientId, SessionImage>,
    /// Highest message id seen (new ids continue above it).
    pub max_id: u64,
    /// Bytes of the message records the image refers to.
    pub message_bytes: u64,
    /// Stored queue, inflight and group queue entries.
    pub entries: u64,
    /// `$delayed` messages waiting: message id to when it is due (Unix ms). Each holds a
    /// reference on its message.
    pub delayed: IdMap<u64>,
    /// Priorities other than 0 of stored messages (`Record::Priority`), by message id.
    pub priorities: IdMap<u8>,
}

impl Image {
    fn retain_msg(&mut self, id: u64) {
        if let Some(m) = self.messages.get_mut(&id) {
            m.refs += 1;
        }
    }

    fn release_msg(&mut self, id: u64) {
        // One probe of the table (a drain releases every message it delivers).
        if let std::collections::hash_map::Entry::Occupied(mut e) = self.messages.entry(id) {
            let m = e.get_mut();
            m.refs = m.refs.saturating_sub(1);
            if m.refs == 0 {
                self.message_bytes -= u64::from(e.remove().len);
                self.forget_priority(id);
                if shrinkable(self.messages.len(), self.messages.capacity()) {
                    self.messages.shrink_to(self.messages.len() * 2);
                }
            }
        }
    }

    /// Applies one record whose frame is at `at` (offset, frame length) in the live log.
    pub fn apply(&mut self, rec: &Record, at: (u64, u32)) {
        if let Record::Message(m) = rec {
            self.message_at(m.id, at);
        } else {
            self.apply_meta(rec);
        }
    }

    /// Notes that message `id`'s record is at `at` (a second record of the same message, as
    /// the router may write, keeps the first location).
    pub(super) fn message_at(&mut self, id: u64, at: (u64, u32)) {
        self.max_id = self.max_id.max(id);
        if let std::collections::hash_map::Entry::Vacant(e) = self.messages.entry(id) {
            e.insert(MsgSlot {
                at: at.0,
                len: at.1,
                refs: 0,
            });
            self.message_bytes += u64::from(at.1);
        }
    }

    /// Forgets message `id` whatever refers to it (recovery of garbage, compaction of
    /// unreadable records).
    pub(super) fn drop_message(&mut self, id: u64) {
        if let Some(m) = self.messages.remove(&id) {
            self.message_bytes -= u64::from(m.len);
        }
        self.forget_priority(id);
    }

    fn forget_priority(&mut self, id: u64) {
        if !self.priorities.is_empty() {
            self.priorities.remove(&id);
        }
    }

    /// The priority of stored message `id` (0 unless a `Record::Priority` said otherwise).
    pub fn priority(&self, id: u64) -> u8 {
        if self.priorities.is_empty() {
            return 0;
        }
        self.priorities.get(&id).copied().unwrap_or(0)
    }

    /// `Record::Enqueue`: `q` queued for `client` (ignored if either is unknown).
    pub(super) fn enqueue(&mut self, client: &str, q: QueuedImage) {
        if !self.messages.contains_key(&q.id) {
            return;
        }
        let Some(s) = self.sessions.get_mut(client) else {
            return;
        };
        s.next_seq = s.next_seq.max(q.seq + 1);
        self.entries += 1;
        let id = q.id;
        s.queue.push_back(q);
        self.retain_msg(id);
    }

    /// Applies one record other than a message's.
    pub(super) fn apply_meta(&mut self, rec: &Record) {
        match rec {
            Record::Message(_) => {}
            Record::Retain { topic, id } => {
                let old = if *id == 0 {
                    self.retained.remove(topic)
                } else {
                    self.retain_msg(*id);
                    self.retained.insert(topic.clone(), *id)
                };
                if let Some(old) = old {
                    self.release_msg(old);
                }
            }
            Record::Session {
                client,
                expiry,
                username,
                will,
                since,
            } => {
                let s = self.sessions.entry(client.clone()).or_default();
                s.since = *since;
                s.expiry = *expiry;
                s.username = username.clone();
                s.will = will.as_deref().cloned();
            }
            Record::SessionGone { client } => {
                if let Some(s) = self.sessions.remove(client) {
                    self.entries -= (s.queue.len() + s.inflight.len()) as u64;
                    for q in s.queue {
                        self.release_msg(q.id);
                    }
                    for i in s.inflight {
                        if let InflightImage::Publish { queued, .. } = i {
                            self.release_msg(queued.id);
                        }
                    }
                }
            }
            Record::Subscribe {
                client,
                filter,
                options,
                identifier,
            } => {
                if let Some(s) = self.sessions.get_mut(client) {
                    s.subscriptions
                        .insert(filter.clone(), (*options, *identifier));
                }
            }
            Record::Unsubscribe { client, filter } => {
                if let Some(s) = self.sessions.get_mut(client) {
                    s.subscriptions.remove(filter);
                }
            }
            Record::Enqueue {
                client,
                seq,
                id,
                qos,
                retain,
                subscription_ids,
                shared,
            } => self.enqueue(
                client,
                QueuedImage {
                    seq: *seq,
                    id: *id,
                    qos: *qos,
                    retain: *retain,
                    subscription_ids: subscription_ids.as_slice().into(),
                    shared: shared.clone().map(Box::new),
                },
            ),
            Record::Sent { client, seq, pkid } => {
                if let Some(s) = self.sessions.get_mut(client) {
                    s.sent(*seq, *pkid);
                }
            }
            Record::SentMany { client, sent } => {
                if let Some(s) = self.sessions.get_mut(client) {
                    for (seq, pkid) in sent {
                        s.sent(*seq, *pkid);
                    }
                }
            }
            Record::AckedMany { client, pkids } => self.acked(client, pkids),
            Record::Skip { client, seq } => {
                let removed = self.sessions.get_mut(client).and_then(|s| {
                    let pos = s.queue.iter().position(|q| q.seq == *seq)?;
                    take_entry(&mut s.queue, pos)
                });
                if let Some(q) = removed {
                    self.entries -= 1;
                    self.release_msg(q.id);
                }
            }
            Record::Acked { client, pkid } => self.acked(client, std::slice::from_ref(pkid)),
            Record::Released { client, pkid } => {
                let Some(s) = self.sessions.get_mut(client) else {
                    return;
                };
                let mut freed = None;
                match s.inflight.iter_mut().find(|i| inflight_pkid(i) == *pkid) {
                    Some(entry) => {
                        if let InflightImage::Publish { queued, .. } = entry {
                            freed = Some(queued.id);
                        }
                        *entry = InflightImage::Release { pkid: *pkid };
                    }
                    None => {
                        self.entries += 1;
                        s.inflight.push_back(InflightImage::Release { pkid: *pkid })
                    }
                }
                if let Some(id) = freed {
                    self.release_msg(id);
                }
            }
            Record::Qos2In { client, pkid } => {
                if let Some(s) = self.sessions.get_mut(client) {
                    s.qos2_in.insert(*pkid);
                }
            }
            Record::Qos2InDone { client, pkid } => {
                if let Some(s) = self.sessions.get_mut(client) {
                    s.qos2_in.remove(pkid);
                }
            }
            Record::GroupEnqueue {
                group,
                seq,
                id,
                qos,
                retain,
            } => {
                if !self.messages.contains_key(id) {
                    return;
                }
                let Some(entry) = GroupQueuedImage::new(*seq, *id, *qos, *retain) else {
                    return;
                };
                let g = self.groups.entry(group.clone()).or_default();
                g.next_seq = g.next_seq.max(seq + 1);
                self.entries += 1;
                g.queue.push_back(entry);
                self.retain_msg(*id);
            }
            Record::SentHorizon { client, seq } => {
                if let Some(s) = self.sessions.get_mut(client) {
                    s.sent_horizon = *seq;
                }
            }
            Record::Delayed { id, due } => {
                if self.messages.contains_key(id) && self.delayed.insert(*id, *due).is_none() {
                    self.entries += 1;
                    self.retain_msg(*id);
                }
            }
            Record::DelayedDone { id } => {
                if self.delayed.remove(id).is_some() {
                    self.entries -= 1;
                    self.release_msg(*id);
                }
            }
            Record::Priority { id, priority } => {
                if *priority != 0 && self.messages.contains_key(id) {
                    self.priorities.insert(*id, *priority);
                }
            }
            Record::GroupTaken { group, seq } => {
                let Some(g) = self.groups.get_mut(group) else {
                    return;
                };
                let removed = g
                    .queue
                    .iter()
                    .position(|q| q.seq() == *seq)
                    .and_then(|pos| take_entry(&mut g.queue, pos));
                if g.queue.is_empty() {
                    self.groups.remove(group);
                }
                if let Some(q) = removed {
                    self.entries -= 1;
                    self.release_msg(q.id);
                }
            }
        }
    }

    /// `Record::Acked`, `Record::AckedMany`: `client`'s inflight entries `pkids` are done (the
    /// session is looked up once).
    fn acked(&mut self, client: &str, pkids: &[u16]) {
        let Some(s) = self.sessions.get_mut(client) else {
            return;
        };
        let mut freed = Vec::with_capacity(pkids.len());
        for &pkid in pkids {
            // Mostly the front: acknowledgements come in sending order.
            let pos = if s.inflight.front().is_some_and(|i| inflight_pkid(i) == pkid) {
                0
            } else {
                let Some(pos) = s.inflight.iter().position(|i| inflight_pkid(i) == pkid) else {
                    continue;
                };
                pos
            };
            self.entries -= 1;
            let taken = if pos == 0 {
                s.inflight.pop_front()
            } else {
                s.inflight.remove(pos)
            };
            if let Some(InflightImage::Publish { queued, .. }) = taken {
                freed.push(queued.id);
            }
        }
        for id in freed {
            self.release_msg(id);
        }
    }

    /// The records of the retained topics, the group queues, the delayed messages and the
    /// priorities (compaction; written after the messages they name).
    pub(super) fn shared_records(&self, mut out: impl FnMut(Record)) {
        for (id, priority) in &self.priorities {
            out(Record::Priority {
                id: *id,
                priority: *priority,
            });
        }
        for (id, due) in &self.delayed {
            out(Record::Delayed { id: *id, due: *due });
        }
        for (topic, id) in &self.retained {
            out(Record::Retain {
                topic: topic.clone(),
                id: *id,
            });
        }
        for (group, g) in &self.groups {
            for q in &g.queue {
                out(Record::GroupEnqueue {
                    group: group.clone(),
                    seq: q.seq(),
                    id: q.id,
                    qos: q.qos(),
                    retain: q.retain(),
                });
            }
        }
    }

    /// The records that rebuild session `client` (compaction), less the messages themselves
    /// (which compaction copies frame by frame).
    pub(super) fn session_records(&self, client: &ClientId, mut out: impl FnMut(Record)) {
        let Some(s) = self.sessions.get(client) else {
            return;
        };
        out(Record::Session {
            client: client.clone(),
            expiry: s.expiry,
            username: s.username.clone(),
            will: s.will.clone().map(Box::new),
            since: s.since,
        });
        for (filter, (options, identifier)) in &s.subscriptions {
            out(Record::Subscribe {
                client: client.clone(),
                filter: filter.clone(),
                options: *options,
                identifier: *identifier,
            });
        }
        let enqueue = |q: &QueuedImage| Record::Enqueue {
            client: client.clone(),
            seq: q.seq,
            id: q.id,
            qos: q.qos,
            retain: q.retain,
            subscription_ids: q.subscription_ids.to_vec(),
            shared: q.shared.as_deref().cloned(),
        };
        for i in &s.inflight {
            match i {
                InflightImage::Publish { pkid, queued } => {
                    out(enqueue(queued));
                    out(Record::Sent {
                        client: client.clone(),
                        seq: queued.seq,
                        pkid: *pkid,
                    });
                }
                InflightImage::Release { pkid } => out(Record::Released {
                    client: client.clone(),
                    pkid: *pkid,
                }),
            }
        }
        for q in &s.queue {
            out(enqueue(q));
        }
        for pkid in &s.qos2_in {
            out(Record::Qos2In {
                client: client.clone(),
                pkid: *pkid,
            });
        }
        if s.sent_horizon > 0 {
            out(Record::SentHorizon {
                client: client.clone(),
                seq: s.sent_horizon,
            });
        }
    }

    /// Releases the capacity the image does not use any more.
    pub(super) fn shrink_to_fit(&mut self) {
        self.messages.shrink_to_fit();
        self.retained.shrink_to_fit();
        self.sessions.shrink_to_fit();
        self.groups.shrink_to_fit();
        self.delayed.shrink_to_fit();
        self.priorities.shrink_to_fit();
        for s in self.sessions.values_mut() {
            s.queue.shrink_to_fit();
            s.inflight.shrink_to_fit();
        }
        for g in self.groups.values_mut() {
            g.queue.shrink_to_fit();
        }
    }

    /// About how many bytes a compacted log of this image takes: the message records plus a
    /// typical size per stored entry and session.
    pub fn live_bytes(&self) -> u64 {
        self.message_bytes + 64 * self.entries + 256 * self.sessions.len() as u64
    }
}

/// Whether a collection with this length and capacity holds much more memory than it uses: a
/// drained backlog gives it back (halving at a time, so the copies cost O(1) per removal).
fn shrinkable(len: usize, capacity: usize) -> bool {
    capacity > 4096 && len < capacity / 4
}

/// Takes entry `pos` out of a stored queue, giving memory back once it is mostly empty.
fn take_entry<T>(q: &mut VecDeque<T>, pos: usize) -> Option<T> {
    let taken = q.remove(pos);
    if shrinkable(q.len(), q.capacity()) {
        q.shrink_to(q.len() * 2);
    }
    taken
}

fn inflight_pkid(i: &InflightImage) -> u16 {
    match i {
        InflightImage::Publish { pkid, .. } | InflightImage::Release { pkid } => *pkid,
    }
}
