//! Listeners and the server's lifetime: bind, accept, shut down gracefully.

pub mod admission;
pub mod tls;
mod ws;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::auth::acl::Acl;
use crate::auth::passwords::PasswordFile;
use crate::broker::Broker;
use crate::config::{Config, ConfigError};
use crate::connection::ConnInfo;
use crate::connection::Refusal;
use crate::listener::admission::{AddressRates, ListenerGate, Slot};
use crate::listener::tls::{FailureLog, TlsListener, TlsReloader};
use crate::metrics::sys::SysState;
use crate::observe::Admin;
use crate::persist::{Store, StoreError};
use crate::stats::ListenerStats;

/// How long shutdown waits for connections to say goodbye before exiting anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Connections past `limits.max_connections` that still get a CONNACK 0x89 refusal; past this
/// many more, sockets are closed at once (each refusal costs a task until CONNECT arrives).
const HARD_CAP_SLACK: usize = 1024;
/// Pause after a failed accept (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("persistence: {0}")]
    Store(StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("cluster: {0}")]
    Cluster(crate::cluster::ClusterError),
}

/// A bound, not yet running broker.
#[derive(Debug)]
pub struct Server {
    broker: Arc<Broker>,
    listeners: Vec<(TcpListener, Arc<Transport>)>,
    tls: TlsReloader,
    /// The admin HTTP listener (`[admin]`), if on.
    admin: Option<Admin>,
}

/// What a listener speaks over TCP before MQTT: nothing (plain), TLS, WebSockets, or both.
#[derive(Debug)]
struct Transport {
    tls: Option<Arc<TlsListener>>,
    /// The WebSocket upgrade path.
    websocket: Option<String>,
    /// Failed WebSocket upgrades (TLS failures go to the TLS listener's log).
    ws_failures: FailureLog,
    /// This listener's index in `listeners` (the admin API shows where a client came in).
    index: usize,
}

impl Transport {
    fn is_plain(&self) -> bool {
        self.tls.is_none() && self.websocket.is_none()
    }

    /// The URL scheme in the `listening on` line.
    fn scheme(&self) -> &'static str {
        match (self.tls.is_some(), self.websocket.is_some()) {
            (false, false) => "tcp",
            (true, false) => "tls",
            (false, true) => "ws",
            (true, true) => "wss",
        }
    }
}

impl Server {
    /// Loads what the configuration points at (ACL) and binds every listener.
    pub async fn bind(config: Config) -> Result<Server, StartError> {
        let acl = match &config.auth.acl_file {
            Some(path) => Some(Acl::load(path).map_err(|e| ConfigError {
                key: "auth.acl_file".into(),
                value: path.display().to_string(),
                reason: e.to_string(),
            })?),
            None => None,
        };
        let passwords = match &config.auth.password_file {
            Some(path) => Some(PasswordFile::load(path).map_err(|e| ConfigError {
                key: "auth.password_file".into(),
                value: path.display().to_string(),
                reason: e.to_string(),
            })?),
            None => None,
        };
        // Certificates and keys are read and checked before anything is bound.
        let mut transports = Vec::new();
        let mut tls_listeners = Vec::new();
        for (i, l) in config.listeners.iter().enumerate() {
            let tls = match &l.tls {
                Some(t) => {
                    let t = Arc::new(TlsListener::load(i, t.clone(), l.websocket.is_some())?);
                    tls_listeners.push(t.clone());
                    Some(t)
                }
                None => None,
            };
            transports.push(Arc::new(Transport {
                tls,
                websocket: l.websocket.as_ref().map(|w| w.path.clone()),
                ws_failures: FailureLog::default(),
                index: i,
            }));
        }
        let mut listeners = Vec::new();
        for (l, transport) in config.listeners.iter().zip(transports) {
            let listener = bind_listener(&l.bind)
                .await
                .map_err(|source| StartError::Bind {
                    addr: l.bind.clone(),
                    source,
                })?;
            listeners.push((listener, transport));
        }
        // Bound before the store is replayed: /healthz answers during a long recovery.
        let admin = Admin::bind(&config.admin)
            .await
            .map_err(|source| StartError::Bind {
                addr: format!("admin.bind = {}", config.admin.bind),
                source,
            })?;
        // Recover the persistent state before accepting anyone.
        let started = std::time::Instant::now();
        let (store, recovery) = Store::open(&config.persistence).map_err(StartError::Store)?;
        let broker = Arc::new(Broker::with_auth(config, acl, passwords).with_store(store));
        // Cluster mode: the router reports every subscription from here on, restored ones
        // included, to the cluster task started below.
        let cluster_inbox = broker
            .config
            .cluster
            .is_some()
            .then(|| broker.router.enable_cluster())
            .flatten();
        let restored = broker.restore(std::time::Instant::now());
        if let Some(inbox) = cluster_inbox {
            crate::cluster::start(&broker, inbox)
                .await
                .map_err(StartError::Cluster)?;
        }
        broker.start_delayed_timer();
        if broker.store.is_enabled() {
            let dir = broker.config.persistence.dir.display().to_string();
            if !recovery.removed.is_empty() {
                tracing::warn!(%dir, files = ?recovery.removed, "leftover log files from an interrupted compaction or first start removed");
            }
            if let Some((at, bytes)) = recovery.truncated {
                tracing::warn!(%dir, offset = at, bytes, records = recovery.records, "torn write at the end of the log (crash): cut off, everything before it recovered");
            }
            tracing::info!(
                %dir,
                mode = ?broker.config.persistence.mode,
                records = recovery.records,
                sessions = restored,
                messages = recovery.messages,
                retained = recovery.retained,
                delayed = broker.router.delayed.len(),
                ms = started.elapsed().as_millis() as u64,
                "store recovered"
            );
        }
        if let Some(admin) = &admin {
            let names = listeners
                .iter()
                .map(|(l, t)| {
                    let addr = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
                    format!(
                        "{}://{addr}{}",
                        t.scheme(),
                        t.websocket.as_deref().unwrap_or("")
                    )
                })
                .collect();
            admin.attach(broker.clone(), names);
        }
        Ok(Server {
            broker,
            listeners,
            tls: TlsReloader::new(tls_listeners),
            admin,
        })
    }

    /// The addresses actually bound (port 0 resolved).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|(l, _)| l.local_addr().ok())
            .collect()
    }

    /// The admin listener's address (port 0 resolved), if it is on.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(Admin::local_addr)
    }

    /// The TLS listeners, to reload their certificates (e.g. on SIGHUP).
    pub fn tls_reloader(&self) -> TlsReloader {
        self.tls.clone()
    }

    /// The shared broker state (for embedding and tests).
    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// Accepts clients until `shutdown` completes, then tells every connection to close (5.0
    /// clients get DISCONNECT 0x8B), waits for them to finish, and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        // Changed password and ACL files are reloaded (the watcher notes their state now,
        // before any client is accepted).
        let auth_watcher = tokio::spawn(watch_auth_files(
            self.broker.clone(),
            auth_stamps(&self.broker),
        ));
        // Shared subscription groups left without members lose their kept messages once
        // `mqtt.shared_group_orphan_expiry_seconds` have passed.
        let orphan_sweeper = tokio::spawn(expire_orphaned_groups(self.broker.clone()));
        // `$SYS` topics: published once before anyone is accepted, then every `sys.interval`.
        let sys = (self.broker.config.sys.interval > 0).then(|| {
            let mut state = SysState::default();
            crate::metrics::sys::publish(&self.broker, &mut state);
            tokio::spawn(crate::metrics::sys::serve(
                Arc::downgrade(&self.broker),
                state,
            ))
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        // Every connection task holds a clone; when all are dropped, `recv` returns None.
        let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
        let per_address = Arc::new(AddressRates::new(
            self.broker.config.limits.max_connection_rate_per_address,
        ));
        let mut listening = Vec::with_capacity(self.listeners.len());
        for (i, (listener, transport)) in self.listeners.into_iter().enumerate() {
            let gate = Arc::new(ListenerGate::new(
                self.broker
                    .config
                    .listeners
                    .get(i)
                    .and_then(|l| l.max_connections),
                self.broker.config.limits.max_connection_rate,
                per_address.clone(),
            ));
            let path = transport.websocket.as_deref().unwrap_or("");
            let name = match listener.local_addr() {
                Ok(addr) => format!("{}://{addr}{path}", transport.scheme()),
                Err(_) => format!("{}://{}{path}", transport.scheme(), i),
            };
            listening.push(name.clone());
            let lstats = Arc::new(ListenerStats::new(name, gate.open_counter()));
            self.broker.stats.add_listener(lstats.clone());
            let broker = self.broker.clone();
            let stop = stop_rx.clone();
            let alive = alive_tx.clone();
            tokio::spawn(accept_loop(
                listener, transport, gate, lstats, broker, stop, alive,
            ));
        }
        // Bridges to other brokers: each holds `alive` like a connection.
        crate::bridge::start(&self.broker, &stop_rx, &alive_tx);
        drop(alive_tx);
        // Ready before the "listening on" lines: whoever waits for them (a supervisor, the
        // tests) finds `/readyz` already answering 200.
        if let Some(admin) = &self.admin {
            admin.set_ready();
        }
        for name in listening {
            tracing::info!("listening on {name}");
        }
        // Certificates changed on disk are picked up by new handshakes.
        let watcher = (!self.tls.is_empty()).then(|| tokio::spawn(self.tls.clone().watch()));
        shutdown.await;
        if let Some(w) = watcher {
            w.abort();
        }
        auth_watcher.abort();
        orphan_sweeper.abort();
        if let Some(sys) = sys {
            sys.abort();
        }
        tracing::info!("shutting down");
        if let Some(admin) = self.admin {
            admin.shutdown().await;
        }
        let _ = stop_tx.send(true);
        // Established connections wait for the stop signal through their session's wake-up
        // (connection/: no shutdown future per idle connection): wake them all to see it.
        self.broker.wake_all_sessions();
        if tokio::time::timeout(SHUTDOWN_GRACE, alive_rx.recv())
            .await
            .is_err()
        {
            tracing::warn!(
                "some connections did not close within {}s",
                SHUTDOWN_GRACE.as_secs()
            );
        }
        // Everything written and fsynced: a clean restart has no recovery work.
        self.broker.store.shutdown().await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    transport: Arc<Transport>,
    gate: Arc<ListenerGate>,
    lstats: Arc<ListenerStats>,
    broker: Arc<Broker>,
    mut stop: watch::Receiver<bool>,
    alive: mpsc::Sender<()>,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.changed() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                lstats.accepted.fetch_add(1, Ordering::Relaxed);
                // Far over limits.max_connections, do not even read a CONNECT to refuse it.
                let open = broker.stats.connections.load(Ordering::Relaxed);
                if open >= broker.config.limits.max_connections + HARD_CAP_SLACK {
                    let n = broker.stats.refused("max_connections");
                    if n % 1000 == 0 {
                        tracing::warn!(%peer, open, refused = n + 1, "connection refused: limits.max_connections");
                    }
                    drop(stream);
                    continue;
                }
                let admission = gate.admit(peer.ip(), std::time::Instant::now());
                spawn_connection(
                    stream, peer, &transport, &lstats, &broker, &stop, &alive, admission,
                )
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn spawn_connection(
    stream: TcpStream,
    peer: SocketAddr,
    transport: &Arc<Transport>,
    lstats: &Arc<ListenerStats>,
    broker: &Arc<Broker>,
    stop: &watch::Receiver<bool>,
    alive: &mpsc::Sender<()>,
    (slot, refuse): (Slot, Option<Refusal>),
) {
    // Small packets (acks, QoS 0 messages) must not wait for Nagle's algorithm.
    let _ = stream.set_nodelay(true);
    let broker = broker.clone();
    let stop = stop.clone();
    let alive = alive.clone();
    if transport.is_plain() {
        let mut info = ConnInfo::plain(peer);
        info.refuse = refuse;
        info.listener = transport.index;
        // The serve future is the task: captured by a wrapping task and moved into an await,
        // it (or its arguments) would be stored twice for the connection's whole life.
        tokio::spawn(crate::connection::serve_with(
            stream,
            info,
            broker,
            stop,
            (alive, slot),
        ));
    } else {
        let transport = transport.clone();
        let lstats = lstats.clone();
        tokio::spawn(async move {
            handshake_and_serve(stream, peer, &transport, &lstats, broker, stop, refuse).await;
            drop((alive, slot));
        });
    }
}

/// TLS handshake and/or WebSocket upgrade, within `limits.connect_timeout` of the accept, then
/// MQTT. Failures are logged at a bounded rate.
async fn handshake_and_serve(
    stream: TcpStream,
    peer: SocketAddr,
    transport: &Transport,
    lstats: &ListenerStats,
    broker: Arc<Broker>,
    stop: watch::Receiver<bool>,
    refuse: Option<Refusal>,
) {
    let limit = Duration::from_secs(broker.config.limits.connect_timeout);
    let deadline = tokio::time::Instant::now() + limit;
    // A handshake in progress counts towards limits.max_connections like a connection waiting
    // for its CONNECT (the accept loop's hard cap looks at this count).
    let handshaking = Handshaking::new(&broker);
    let Some(tls) = &transport.tls else {
        let path = transport.websocket.as_deref().unwrap_or("/");
        let info = ConnInfo {
            peer,
            tls_identity: None,
            flush: true,
            refuse,
            listener: transport.index,
            bridge: false,
        };
        let upgrade = Upgrade {
            transport,
            deadline,
            limit,
            handshaking,
        };
        upgrade.serve(stream, path, info, broker, stop).await;
        return;
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config());
    let stream = match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
        Ok(Ok(s)) => {
            lstats.tls_handshakes.fetch_add(1, Ordering::Relaxed);
            s
        }
        Ok(Err(e)) => {
            lstats.tls_failures.fetch_add(1, Ordering::Relaxed);
            tls.failures.failed("TLS handshake", peer, &e);
            return;
        }
        Err(_) => {
            lstats.tls_failures.fetch_add(1, Ordering::Relaxed);
            tls.failures.failed(
                "TLS handshake",
                peer,
                &format_args!(
                    "not done within {}s (limits.connect_timeout)",
                    limit.as_secs()
                ),
            );
            return;
        }
    };
    let tls_identity = if tls.identity_as_username() {
        let cert = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first());
        match cert.and_then(crate::listener::tls::identity) {
            Some(id) => Some(id),
            None => {
                tls.failures.failed("TLS handshake", peer, &"client certificate has neither a Common Name nor a Subject Alternative Name to use as username (tls.use_identity_as_username)");
                return;
            }
        }
    } else {
        None
    };
    if let Some(id) = &tls_identity {
        tracing::debug!(%peer, identity = %id, "TLS client certificate accepted");
    }
    let info = ConnInfo {
        peer,
        tls_identity,
        flush: true,
        refuse,
        listener: transport.index,
        bridge: false,
    };
    match &transport.websocket {
        None => {
            drop(handshaking);
            crate::connection::serve(stream, info, broker, stop).await
        }
        Some(path) => {
            let upgrade = Upgrade {
                transport,
                deadline,
                limit,
                handshaking,
            };
            upgrade.serve(stream, path, info, broker, stop).await;
        }
    }
}

/// A WebSocket upgrade still to do before MQTT, within `limits.connect_timeout`.
struct Upgrade<'a> {
    transport: &'a Transport,
    deadline: tokio::time::Instant,
    limit: Duration,
    handshaking: Handshaking,
}

impl Upgrade<'_> {
    /// Upgrades `stream` (plain or TLS) on `path`, then serves MQTT over it; a failed or late
    /// upgrade is logged at a bounded rate.
    async fn serve<S>(
        self,
        stream: S,
        path: &str,
        info: ConnInfo,
        broker: Arc<Broker>,
        stop: watch::Receiver<bool>,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
    {
        let peer = info.peer;
        let max_packet = broker.config.mqtt.max_packet_size as usize;
        let failures = &self.transport.ws_failures;
        match tokio::time::timeout_at(
            self.deadline,
            crate::listener::ws::accept(stream, path, max_packet),
        )
        .await
        {
            Ok(Ok(ws)) => {
                drop(self.handshaking);
                crate::connection::serve(ws, info, broker, stop).await
            }
            Ok(Err(e)) => {
                failures.failed("WebSocket upgrade", peer, &e);
            }
            Err(_) => {
                failures.failed(
                    "WebSocket upgrade",
                    peer,
                    &format_args!(
                        "not done within {}s (limits.connect_timeout)",
                        self.limit.as_secs()
                    ),
                );
            }
        }
    }
}

/// Counts a TLS handshake or WebSocket upgrade in `stats.connections` while it lasts.
struct Handshaking(Arc<Broker>);

impl Handshaking {
    fn new(broker: &Arc<Broker>) -> Handshaking {
        broker.stats.connections.fetch_add(1, Ordering::Relaxed);
        Handshaking(broker.clone())
    }
}

impl Drop for Handshaking {
    fn drop(&mut self) {
        self.0.stats.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How often the password and ACL files are checked for changes.
const AUTH_FILE_POLL: Duration = Duration::from_secs(2);
/// How often groups without members are checked for `mqtt.shared_group_orphan_expiry_seconds`.
const ORPHAN_SWEEP: Duration = Duration::from_secs(1);

/// Reloads `auth.password_file` and `auth.acl_file` when their modification time or size
/// changes (as SIGHUP does). A file with an error is logged and the previous one stays.
type Stamp = Option<(std::time::SystemTime, u64)>;

fn stamp(path: Option<&std::path::Path>) -> Stamp {
    let m = std::fs::metadata(path?).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// The password and ACL files' state now (the watcher's starting point).
fn auth_stamps(broker: &Broker) -> (Stamp, Stamp) {
    let auth = &broker.config.auth;
    (
        stamp(auth.password_file.as_deref()),
        stamp(auth.acl_file.as_deref()),
    )
}

/// Every second: drops the kept messages of shared subscription groups whose members have
/// been gone for longer than `mqtt.shared_group_orphan_expiry_seconds`.
async fn expire_orphaned_groups(broker: Arc<Broker>) {
    let mut tick = tokio::time::interval(ORPHAN_SWEEP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        broker
            .router
            .expire_orphaned_groups(std::time::Instant::now());
    }
}

async fn watch_auth_files(broker: Arc<Broker>, (mut passwords, mut acl): (Stamp, Stamp)) {
    let auth = &broker.config.auth;
    if auth.password_file.is_none() && auth.acl_file.is_none() {
        return;
    }
    loop {
        tokio::time::sleep(AUTH_FILE_POLL).await;
        let now = stamp(auth.password_file.as_deref());
        if now != passwords && now.is_some() {
            passwords = now;
            match broker.reload_passwords() {
                Ok(_) => tracing::info!("auth.password_file changed: reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "auth.password_file changed but not reloaded; the previous one stays in force")
                }
            }
        }
        let now = stamp(auth.acl_file.as_deref());
        if now != acl && now.is_some() {
            acl = now;
            match broker.reload_acl() {
                Ok(_) => tracing::info!("auth.acl_file changed: reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "auth.acl_file changed but not reloaded; the previous rules stay in force")
                }
            }
        }
    }
}

/// Pending connections the kernel may hold for a listener before `accept` takes them (the
/// kernel caps it at `net.core.somaxconn`, 4,096 on current Linux). tokio's `TcpListener::bind`
/// asks for 1,024, too few for a fleet reconnecting at once after a broker restart.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds `addr` (`host:port`, names resolved; the first address that binds wins, as
/// `TcpListener::bind` does) with SO_REUSEADDR and a backlog of [`LISTEN_BACKLOG`].
async fn bind_listener(addr: &str) -> std::io::Result<TcpListener> {
    let mut last = None;
    for a in tokio::net::lookup_host(addr).await? {
        let socket = if a.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        let bound = socket
            .set_reuseaddr(true)
            .and_then(|()| socket.bind(a))
            .and_then(|()| socket.listen(LISTEN_BACKLOG));
        match bound {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the address resolved to nothing",
        )
    }))
}
