//! Listeners and the server's lifetime: bind, accept, shut down gracefully.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::acl::Acl;
use crate::broker::Broker;
use crate::config::{Config, ConfigError};
use crate::passwords::PasswordFile;
use crate::persist::{Store, StoreError};

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
}

/// A bound, not yet running broker.
#[derive(Debug)]
pub struct Server {
    broker: Arc<Broker>,
    listeners: Vec<TcpListener>,
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
        let mut listeners = Vec::new();
        for l in &config.listeners {
            let listener = TcpListener::bind(&l.bind)
                .await
                .map_err(|source| StartError::Bind {
                    addr: l.bind.clone(),
                    source,
                })?;
            listeners.push(listener);
        }
        // Recover the persistent state before accepting anyone.
        let started = std::time::Instant::now();
        let (store, image, recovery) =
            Store::open(&config.persistence).map_err(StartError::Store)?;
        let broker = Arc::new(Broker::with_auth(config, acl, passwords).with_store(store));
        let restored = broker.restore(image, std::time::Instant::now());
        if broker.store.is_enabled() {
            let dir = broker.config.persistence.dir.display().to_string();
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
                ms = started.elapsed().as_millis() as u64,
                "store recovered"
            );
        }
        Ok(Server { broker, listeners })
    }

    /// The addresses actually bound (port 0 resolved).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// The shared broker state (for embedding and tests).
    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// Accepts clients until `shutdown` completes, then tells every connection to close (5.0
    /// clients get DISCONNECT 0x8B), waits for them to finish, and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let (stop_tx, stop_rx) = watch::channel(false);
        // Every connection task holds a clone; when all are dropped, `recv` returns None.
        let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
        for listener in self.listeners {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!("listening on tcp://{addr}");
            }
            let broker = self.broker.clone();
            let stop = stop_rx.clone();
            let alive = alive_tx.clone();
            tokio::spawn(accept_loop(listener, broker, stop, alive));
        }
        drop(alive_tx);
        shutdown.await;
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
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
                // Far over limits.max_connections, do not even read a CONNECT to refuse it.
                let open = broker.stats.connections.load(Ordering::Relaxed);
                if open >= broker.config.limits.max_connections + HARD_CAP_SLACK {
                    let n = broker
                        .stats
                        .connections_refused
                        .fetch_add(1, Ordering::Relaxed);
                    if n % 1000 == 0 {
                        tracing::warn!(%peer, open, refused = n + 1, "connection refused: limits.max_connections");
                    }
                    drop(stream);
                    continue;
                }
                spawn_connection(stream, peer, &broker, &stop, &alive)
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

fn spawn_connection(
    stream: TcpStream,
    peer: SocketAddr,
    broker: &Arc<Broker>,
    stop: &watch::Receiver<bool>,
    alive: &mpsc::Sender<()>,
) {
    // Small packets (acks, QoS 0 messages) must not wait for Nagle's algorithm.
    let _ = stream.set_nodelay(true);
    let broker = broker.clone();
    let stop = stop.clone();
    let alive = alive.clone();
    tokio::spawn(async move {
        crate::connection::serve(stream, peer, broker, stop).await;
        drop(alive);
    });
}
