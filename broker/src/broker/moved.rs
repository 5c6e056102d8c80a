//! Sessions between the nodes of a cluster (`[cluster]`, `crate::cluster`): a connection of a
//! client id that connected to another node closes here; a session that moved to another
//! node is forgotten here; a session that comes from another node (through the JetStream
//! bucket `sluice_sessions`) is set up here. Part of [`Broker`]'s session lifecycle, kept in
//! its own file; none of it runs on a single node.

use std::sync::Arc;

use super::Broker;
use crate::locks::{lock, write};
use crate::message::ClientId;
use crate::routing::cluster_link::SessionState;
use crate::routing::SubEntry;
use crate::session::{Session, SessionHandle};

impl Broker {
    /// The ticket that releases held acknowledgements: the store's; in cluster mode the
    /// cluster's, answered once the store's is and the QoS 1/2 messages routed before it are
    /// in JetStream (what a PUBACK promises in cluster mode: README, "Cluster").
    pub fn ack_ticket(&self) -> Option<tokio::sync::oneshot::Receiver<bool>> {
        let store = self.store.ticket();
        match self.router.cluster() {
            Some(link) => Some(link.ticket(store)),
            None => store,
        }
    }

    /// Cluster mode: `client_id` connected to another node. Its connection here, if any, is
    /// taken over as by a local CONNECT (v5: DISCONNECT 0x8E [MQTT-3.1.4-3]); the session
    /// itself stays on this node, parked (persistent) or ended, as when its client goes.
    /// Returns whether a connection was closed.
    pub async fn taken_over_elsewhere(&self, client_id: &str) -> bool {
        let Some(handle) = lock(&self.sessions).get(client_id).cloned() else {
            return false;
        };
        let _guard = handle.connect_lock.lock().await;
        if handle.ownership().owner.is_none() {
            return false;
        }
        self.take_over(&handle).await;
        // No new owner here: a session that ended with its connection (nothing parked) leaves
        // the registry, as when its client goes (its subscriptions went with it).
        if handle.ownership().parked.is_none() {
            self.remove_handle(&handle);
        }
        true
    }

    /// Cluster mode: `client_id`'s session moved to another node (which asked this one to
    /// hand it over): a connection of it here is taken over first; then the session is
    /// forgotten here without its will (its client is connected elsewhere [MQTT-3.1.3-9]):
    /// its subscriptions, its queue (what the other node needs of it is in the cluster's
    /// stream) and the store's copy. Shared-subscription messages it held go to other
    /// members. Returns whether there was a session.
    pub async fn session_moved(&self, client_id: &str) -> bool {
        self.taken_over_elsewhere(client_id).await;
        let Some(handle) = self.session(client_id) else {
            return false;
        };
        let _guard = handle.connect_lock.lock().await;
        let parked = {
            let mut own = handle.ownership();
            if own.owner.is_some() {
                // A client connected here again meanwhile: the session is this node's again.
                return false;
            }
            own.generation += 1;
            own.expires_at = None;
            if let Some(key) = own.timer.take() {
                lock(&self.deadlines).remove(key);
            }
            own.parked.take()
        };
        if let Some(session) = &parked {
            self.hand_on_shared(&handle);
            self.discard_subscriptions(&handle.client_id, session);
        }
        if self.store.is_enabled() {
            self.store.session_gone(handle.client_id.clone());
        }
        handle.outbox().clear();
        self.remove_handle(&handle);
        tracing::info!(
            client_id,
            "cluster: session moved to another node: forgotten here"
        );
        parked.is_some()
    }

    /// Sets up a session that came from another node on `handle` (whose connection this
    /// node's CONNECT owns): its subscriptions go into the tree as a SUBSCRIBE would put them.
    /// Its queued messages come from the cluster's stream afterwards (replayed).
    pub(super) fn adopt_session(
        &self,
        handle: &Arc<SessionHandle>,
        state: SessionState,
    ) -> Session {
        let mut session = Session {
            expiry_interval: state.expiry_interval,
            ..Session::default()
        };
        let mut tree = write(&self.router.subscriptions);
        for (filter, record) in state.subscriptions {
            let entry = SubEntry {
                options: record.options,
                identifier: record.identifier,
                handle: handle.clone(),
                username: state.username.clone(),
                shared: filter
                    .shared()
                    .is_some()
                    .then(|| self.router.join_group(&filter, handle)),
            };
            if tree
                .subscribe(&filter, handle.client_id.clone(), entry)
                .is_none()
            {
                self.router.interest_changed(&filter, true);
            }
            session.subscriptions.insert(filter, record);
        }
        session
    }

    /// Cluster mode: a session was parked here: the bucket learns it is offline (and since
    /// when, for its expiry on another node), or that it ended with its connection.
    pub(super) fn cluster_session_parked(&self, client_id: &ClientId, session: &Session) {
        let Some(link) = self.router.cluster() else {
            return;
        };
        if session.expiry_interval == 0 {
            link.session_ended(client_id);
        } else {
            link.session_saved(client_id, session_state(session, None, false));
        }
    }
}

/// What the cluster keeps of `session` (see [`SessionState`]).
pub fn session_state(session: &Session, username: Option<Arc<str>>, online: bool) -> SessionState {
    SessionState {
        subscriptions: session
            .subscriptions
            .iter()
            .map(|(f, r)| (f.clone(), r.clone()))
            .collect(),
        expiry_interval: session.expiry_interval,
        username,
        online,
    }
}
