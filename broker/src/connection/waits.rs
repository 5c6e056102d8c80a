//! What the connection loop (`super::run`) waits on: its buffers and decoder, the state only a
//! busy connection needs (boxed on first use), and the events that wake it.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;

use bytes::BytesMut;
use sluice_codec::Decoder;
use tokio::sync::oneshot;

use crate::message::Message;

/// Messages being read back from the store: the ids asked for and what came back.
pub(super) type Loading =
    Pin<Box<dyn std::future::Future<Output = (Vec<u64>, Vec<Option<Arc<Message>>>)> + Send>>;

/// What the connection loop waits on besides the socket's write side and the session's
/// wake-up (which also brings the Keep Alive timeout): one struct, so that the loop's wait borrows one place (each
/// borrowed local would be a pointer more in every idle connection's future).
pub(super) struct Waits {
    /// Bytes read and not decoded yet; no capacity while idle.
    pub(super) rbuf: BytesMut,
    pub(super) decoder: Decoder,
    /// `rbuf` holds bytes read before the main loop (with the CONNECT) to decode first.
    pub(super) undecoded: bool,
    /// TLS and WebSocket streams hold written bytes until flushed.
    pub(super) unflushed: bool,
    /// What only a connection waiting for the store or paused by a limit uses: boxed on first
    /// use and then kept (a connection that needed it once is likely to again), so an idle
    /// connection carries a pointer instead of 80 bytes.
    pub(super) busy: Option<Box<Busy>>,
}

impl Waits {
    /// The busy parts, allocated on first use.
    pub(super) fn busy(&mut self) -> &mut Busy {
        self.busy.get_or_insert_with(Box::default)
    }
}

/// See [`Waits::busy`].
#[derive(Default)]
pub(super) struct Busy {
    /// While over a rate limit, reading stops until this instant (TCP pushes back). Also used
    /// while the store's writer is behind. Allocated only when needed.
    pub(super) pause: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Packets waiting for the store, each batch behind the ticket that releases it, in order.
    pub(super) waiting: VecDeque<(oneshot::Receiver<bool>, BytesMut)>,
    /// The ticket of the sent-horizon logged ahead (protocol/): nothing waits behind it.
    pub(super) horizon: Option<(oneshot::Receiver<bool>, u64)>,
    /// Queued messages being read back from the store (the queue's front was on disk only).
    pub(super) loading: Option<Loading>,
    /// Egress shaping's next token (an empty bucket stopped the drain), or a full queue's
    /// slow-consumer deadline (`ClientState::egress_due`).
    pub(super) egress: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// What woke the connection loop (one per source it waits on).
pub(super) enum Event {
    /// The server is shutting down.
    Shutdown,
    /// A control message (a takeover, a kick) waits in the session's owner entry.
    Control,
    /// Some of the write buffer was written (Some(n)), or the stream flushed (None).
    Wrote(std::io::Result<Option<usize>>),
    /// Bytes read into the read buffer (Ok(0): the peer closed).
    Read(std::io::Result<usize>),
    /// The session's outbox has something (or the task was woken to look at the shutdown
    /// signal).
    Notified,
    /// Queued messages read back from the store.
    Loaded((Vec<u64>, Vec<Option<Arc<Message>>>)),
    /// A reading pause (rate limit, store backlog) is over.
    Paused,
    /// Shaping's next token is due, or a full queue's slow-consumer deadline has come.
    Egress,
    /// The store answered the ticket of the first batch of held packets.
    Ticket(bool),
    /// The store answered the ticket of the sent-horizon.
    Horizon(bool),
}
