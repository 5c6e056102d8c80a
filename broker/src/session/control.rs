//! How a connection is asked to hand its session over (a takeover [MQTT-3.1.4-3], an
//! administrator's kick): one slot in the session's owner entry, filled by the one asking
//! ([`SessionHandle::ask_owner`]) and taken by the owner when its wake-up fires
//! ([`SessionHandle::take_control`]).

use std::sync::Arc;

use tokio::sync::oneshot;

use super::{Control, SessionHandle};

/// Where the one [`Control`] message a connection can get waits for it.
///
/// A slot in the owner entry rather than a channel per connection (a oneshot was 72 bytes of
/// every connection): the sender fills it and wakes the owner through the session's `notify`;
/// the owner takes it ([`SessionHandle::take_control`]).
#[derive(Debug, Default)]
pub enum ControlSlot {
    /// Nothing asked yet: the owner listens.
    #[default]
    Listening,
    /// Asked, not yet taken by the owner.
    Requested(Control),
    /// Asked and taken: nothing more can be asked of this connection.
    Taken,
    /// The connection went away without parking the session (it panicked): whoever asks
    /// gets no answer ([`ControlGuard`]).
    Gone,
}

/// What asking the owner of a session for its [`Control`] came to.
#[derive(Debug)]
pub enum Asked {
    /// No owner, or it was asked already.
    NoOwner,
    /// The owner's connection is gone without parking the session.
    Gone,
    /// Asked: the owner answers on this once the session is parked.
    Sent(oneshot::Receiver<()>),
}

/// Held by the connection that owns a session for as long as it runs. Dropped while its
/// connection still owns the session (the task panicked or was dropped before parking), it
/// marks the slot [`ControlSlot::Gone`] and drops a request waiting there, so the one asking
/// stops waiting (as a dropped channel receiver did).
#[derive(Debug)]
pub struct ControlGuard {
    pub handle: Arc<SessionHandle>,
    /// The connection (see [`Owner::connection`]).
    pub connection: u64,
}

impl Drop for ControlGuard {
    fn drop(&mut self) {
        let request = {
            let mut own = self.handle.ownership();
            match own
                .owner
                .as_mut()
                .filter(|o| o.connection == self.connection)
            {
                Some(o) => std::mem::replace(&mut o.control, ControlSlot::Gone),
                None => return,
            }
        };
        // The request (if any) goes with the slot: no flag may announce it to the next owner.
        self.handle
            .control_pending
            .store(false, std::sync::atomic::Ordering::Release);
        // Dropped outside the lock: the request's reply sender wakes its waiter.
        drop(request);
    }
}
