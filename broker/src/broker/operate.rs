//! What an operator does to a running broker through the admin API (`crate::observe`): list
//! sessions, disconnect a client, end a session. Part of [`Broker`]'s session lifecycle, kept
//! in its own file: these go through the same locks and steps as a takeover and an expiry.

use std::sync::Arc;

use super::{Broker, TAKEOVER_SLOW};
use crate::locks::lock;
use crate::session::{Asked, Control, SessionHandle};

/// How [`Broker::kick`] went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kick {
    /// The connection closed and handed its session back.
    Disconnected,
    /// No session with that client id.
    Unknown,
    /// The session exists but no client is connected to it.
    NotConnected,
    /// The connection is closing on its own (it did not take the request); try again.
    Closing,
}

impl Broker {
    /// Disconnects the client connected to `client_id`'s session: 5.0 clients get DISCONNECT
    /// 0x98 Administrative action, 3.1.1 ones are just closed; its will is published as for
    /// any close without DISCONNECT [MQTT-3.1.2-8]. The session goes on (parked) or ends per
    /// its expiry interval, as after any disconnect. Waits until the connection has handed the
    /// session back (every step of its close is bounded).
    pub async fn kick(&self, client_id: &str) -> Kick {
        let Some(handle) = self.session(client_id) else {
            return Kick::Unknown;
        };
        // Like a new connection taking the session over: one ownership change at a time.
        let _guard = handle.connect_lock.lock().await;
        self.kick_locked(&handle).await
    }

    /// [`Broker::kick`] with `connect_lock` held by the caller.
    async fn kick_locked(&self, handle: &Arc<SessionHandle>) -> Kick {
        let mut rx = match handle.ask_owner(Control::Kick) {
            Asked::Sent(rx) => rx,
            Asked::NoOwner => return Kick::NotConnected,
            // The connection is gone without parking the session.
            Asked::Gone => return Kick::Closing,
        };
        // As a takeover does: every step of the connection's close is bounded, so it answers;
        // letting go of the lock before would let a reconnecting client take the session
        // without its state.
        if tokio::time::timeout(TAKEOVER_SLOW, &mut rx).await.is_err() {
            tracing::warn!(client_id = %handle.client_id, "kicked connection has not handed its session back after {} s; still waiting", TAKEOVER_SLOW.as_secs());
            let _ = rx.await;
        }
        tracing::info!(client_id = %handle.client_id, "client disconnected by an administrator");
        // The connection parked the session as in a takeover (the handle stays registered);
        // a session that ended with its connection (expiry 0) leaves the registry now.
        let ended = {
            let own = handle.ownership();
            own.owner.is_none() && own.parked.is_none()
        };
        if ended {
            self.remove_handle(handle);
        }
        Kick::Disconnected
    }

    /// Ends `client_id`'s session now (admin API), as if it had expired: a connected client is
    /// disconnected first ([`Broker::kick`]); a will still waiting for its delay is published
    /// [MQTT-3.1.3-9]; subscriptions, queued messages and the store's copy go; shared
    /// subscription messages it held go to other members. Returns false when there was no
    /// such session.
    pub async fn end_session(self: &Arc<Self>, client_id: &str) -> Result<bool, Kick> {
        let Some(handle) = self.session(client_id) else {
            return Ok(false);
        };
        let _guard = handle.connect_lock.lock().await;
        match self.kick_locked(&handle).await {
            Kick::Disconnected | Kick::NotConnected | Kick::Unknown => {}
            Kick::Closing => return Err(Kick::Closing),
        }
        let parked = {
            let mut own = handle.ownership();
            if own.owner.is_some() {
                return Err(Kick::Closing);
            }
            own.generation += 1;
            own.expires_at = None;
            if let Some(key) = own.timer.take() {
                lock(&self.deadlines).remove(key);
            }
            own.parked.take()
        };
        if let Some(session) = parked {
            if let Some(p) = session.pending_will.clone() {
                self.publish_will(&handle.client_id, p.will, std::time::Instant::now());
            }
            self.hand_on_shared(&handle);
            if self.store.is_enabled() {
                self.store.session_gone(handle.client_id.clone());
            }
            self.discard_subscriptions(&handle.client_id, &session);
        }
        handle.outbox().clear();
        self.remove_handle(&handle);
        if let Some(link) = self.router.cluster() {
            link.session_ended(&handle.client_id);
        }
        tracing::info!(client_id = %handle.client_id, "session ended by an administrator");
        Ok(true)
    }
}
