//! Batches of records: what a connection appends while a [`Batch`] guard is open waits in a
//! thread-local and reaches the writer in one message; runs of `Sent` / `Acked` records of one
//! client are merged into one `SentMany` / `AckedMany` (issue 16).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{Cmd, Record, Shared};
use crate::message::ClientId;

thread_local! {
    /// Records held by an open [`Batch`] on this thread.
    pub(super) static BATCH: std::cell::RefCell<Option<OpenBatch>> = const { std::cell::RefCell::new(None) };
}

/// The records of an open [`Batch`], and what they count against the writer's backlog: added
/// to [`Shared::backlog`] once, when they are sent, instead of an atomic step per record.
#[derive(Debug, Default)]
pub(super) struct OpenBatch {
    pub(super) recs: Vec<Record>,
    pub(super) cost: usize,
}

impl OpenBatch {
    pub(super) fn send(self, s: &Shared) {
        if !self.recs.is_empty() {
            s.backlog.fetch_add(self.cost, Ordering::Relaxed);
            let _ = s.tx.send(Cmd::Recs(self.recs));
        }
    }
}

/// A delivery sent or acknowledged, for [`Store::append_run`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum RunItem {
    Sent { seq: u64, pkid: u16 },
    Acked { pkid: u16 },
}

/// What one delivery of a `SentMany` / `AckedMany` counts against the backlog ([`record_cost`]).
pub(super) const RUN_ITEM_COST: usize = 64;
/// Room a new run starts with: a drain turn sends, and one read brings the PUBACKs of, up to
/// the inflight window (`mqtt.max_inflight`, 256 by default); growing from one step by step
/// was ~1 % of a durable drain's instructions.
pub(super) const RUN_CAPACITY: usize = 64;

pub(super) fn same_client(a: &ClientId, b: &ClientId) -> bool {
    Arc::ptr_eq(a, b) || a == b
}

/// See [`Store::batch`].
pub struct Batch {
    /// The store, if this guard opened the batch (inner guards and a disabled store do
    /// nothing).
    pub(super) shared: Option<Arc<Shared>>,
    /// The records wait in a thread-local: the guard must stay on its thread.
    pub(super) _not_send: std::marker::PhantomData<*const ()>,
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("outer", &self.shared.is_some())
            .finish()
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        let Some(s) = &self.shared else { return };
        if let Some(open) = BATCH.with(|g| g.borrow_mut().take()) {
            open.send(s);
        }
    }
}

/// Adds `rec` to an open batch. A `Sent` or `Acked` joins the batch's last record when that is
/// a run of them for the same client (a `SentMany`, an `AckedMany`); else it starts one. A
/// drain's PUBLISHes written at once, and the PUBACKs read at once, are then one record each:
/// per delivery the log gets 10 + 2 bytes, and the writer one step on the image, instead of
/// two records with the client id in each, and two lookups of the session (issue 16). Only
/// the last record is merged into, so the order of the batch's records is kept.
pub(super) fn push_merged(batch: &mut Vec<Record>, rec: Record) {
    let same = same_client;
    let rec = match rec {
        Record::Sent { client, seq, pkid } => {
            if let Some(Record::SentMany { client: c, sent }) = batch.last_mut() {
                if same(c, &client) {
                    sent.push((seq, pkid));
                    return;
                }
            }
            Record::SentMany {
                client,
                sent: vec![(seq, pkid)],
            }
        }
        Record::Acked { client, pkid } => {
            if let Some(Record::AckedMany { client: c, pkids }) = batch.last_mut() {
                if same(c, &client) {
                    pkids.push(pkid);
                    return;
                }
            }
            Record::AckedMany {
                client,
                pkids: vec![pkid],
            }
        }
        other => other,
    };
    batch.push(rec);
}

/// How many records `rec` stands for in [`StoreStats::records`]: a merged run as the records
/// it was merged from (every delivery sent and every acknowledgement counts, as before).
pub(super) fn record_count(rec: &Record) -> u64 {
    match rec {
        Record::SentMany { sent, .. } => sent.len() as u64,
        Record::AckedMany { pkids, .. } => pkids.len() as u64,
        _ => 1,
    }
}

/// What a record counts against the writer's backlog: a merged run as the records it stands
/// for (each was counted when appended, and the writer takes off what it writes).
pub(super) fn record_cost(rec: &Record) -> usize {
    match rec {
        Record::Message(m) => m.cost(),
        Record::SentMany { sent, .. } => RUN_ITEM_COST * sent.len(),
        Record::AckedMany { pkids, .. } => RUN_ITEM_COST * pkids.len(),
        _ => 64,
    }
}
