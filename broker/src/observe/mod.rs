//! The admin HTTP listener (`[admin]`): the operator's view of a running broker and a few
//! levers.
//!
//! * `GET /metrics` (Prometheus text, [`crate::metrics`]), `GET /healthz`, `GET /readyz`;
//! * the JSON API under `/api/v1/` ([`api`]): clients, sessions, subscriptions, shared groups,
//!   retained messages, publish;
//! * the dashboard at `GET /` (one embedded page, no build step) fed by `GET /api/v1/stream`,
//!   a server-sent-events stream of one snapshot a second ([`live`]).
//!
//! Served with axum on the broker's tokio runtime. The listener is bound with the MQTT ones,
//! before the store is replayed, so `/healthz` answers during a long recovery and `/readyz`
//! says when clients are being accepted; it stops with the broker ([`Admin::shutdown`]).
//!
//! Access: a token (`admin.token`), when set, is required as `Authorization: Bearer <token>`
//! on every `/api/` call (compared in constant time); a non-loopback `admin.bind` without one
//! is refused at start-up (`config::AdminConfig`). `/metrics`, `/healthz`, `/readyz` and the
//! page itself (which holds no data) are open, as scrapers and probes expect.

pub mod api;
pub mod live;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Json;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::broker::Broker;
use crate::config::AdminConfig;

/// How long shutdown waits for admin requests in progress.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// What every handler shares.
#[derive(Debug)]
pub struct AdminState {
    /// Set once the store is replayed and the broker built; until then the API answers 503.
    broker: OnceLock<Arc<Broker>>,
    /// The MQTT listeners as `scheme://address` (index = `listeners` order), for the API's
    /// `listener` field and filter.
    listeners: OnceLock<Vec<String>>,
    /// Accepting clients (listeners running); false again while shutting down.
    ready: AtomicBool,
    /// `admin.token`; empty: none.
    token: String,
    /// The dashboard's data: history and latest snapshot.
    live: live::Live,
    /// Set when the listener stops: the dashboard's streams end.
    stop: watch::Receiver<bool>,
}

impl AdminState {
    /// The broker, or 503 while the store is still being replayed.
    fn broker(&self) -> Result<&Arc<Broker>, ApiError> {
        self.broker.get().ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "starting: the store is being replayed",
            )
        })
    }

    /// The `scheme://address` of listener `i` ("bridge" for a bridge's local session).
    fn listener_name(&self, i: usize) -> String {
        if i == crate::session::ConnectionInfo::BRIDGE {
            return "bridge".into();
        }
        self.listeners
            .get()
            .and_then(|l| l.get(i).cloned())
            .unwrap_or_else(|| format!("#{i}"))
    }
}

/// The running admin listener. Dropping it stops it (a start-up that fails after binding it).
#[derive(Debug)]
pub struct Admin {
    state: Arc<AdminState>,
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Admin {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// An error answer: `{"error": "..."}` with its status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    /// 400: the request itself is wrong.
    pub fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// 404: no such client, session, topic or route.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        r
    }
}

impl Admin {
    /// Binds `admin.bind` and starts serving (the API answers 503 until [`Admin::attach`]).
    /// None when the listener is off (`bind = ""`).
    pub async fn bind(config: &AdminConfig) -> std::io::Result<Option<Admin>> {
        let Some(addr) = config.addr() else {
            return Ok(None);
        };
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (stop, stop_rx) = watch::channel(false);
        let state = Arc::new(AdminState {
            broker: OnceLock::new(),
            listeners: OnceLock::new(),
            ready: AtomicBool::new(false),
            token: config.token.clone(),
            live: live::Live::default(),
            stop: stop_rx.clone(),
        });
        let app = routes(state.clone());
        let mut rx = stop_rx.clone();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "admin listener failed");
            }
        });
        tracing::info!(
            "admin API and dashboard on http://{addr} (token {})",
            if config.token_required() {
                "required"
            } else {
                "not set"
            }
        );
        Ok(Some(Admin {
            state,
            addr,
            stop,
            task: Some(task),
        }))
    }

    /// The address actually bound (port 0 resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The broker is built (store replayed): the API serves it, and the dashboard's sampler
    /// starts. `listeners` are the MQTT listeners as `scheme://address`.
    pub fn attach(&self, broker: Arc<Broker>, listeners: Vec<String>) {
        let _ = self.state.listeners.set(listeners);
        if self.state.broker.set(broker.clone()).is_ok() {
            tokio::spawn(live::sample(
                self.state.clone(),
                broker,
                self.stop.subscribe(),
            ));
        }
    }

    /// Listeners are accepting clients: `/readyz` answers 200.
    pub fn set_ready(&self) {
        self.state.ready.store(true, Ordering::Release);
    }

    /// Stops serving: `/readyz` goes 503 at once, requests in progress get
    /// [`SHUTDOWN_GRACE`], the dashboard's streams end.
    pub async fn shutdown(mut self) {
        self.state.ready.store(false, Ordering::Release);
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(SHUTDOWN_GRACE, task).await.is_err() {
                abort.abort();
            }
        }
    }
}

/// Every route of the admin listener.
fn routes(state: Arc<AdminState>) -> axum::Router {
    let api = api::routes()
        .route("/api/v1/stream", get(live::stream))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ));
    axum::Router::new()
        .route("/", get(dashboard))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(api)
        .fallback(|| async {
            ApiError::not_found("no such endpoint (see the README's Observe section)")
        })
        .with_state(state)
}

/// `Authorization: Bearer <admin.token>` on every `/api/` call when a token is set.
async fn require_token(State(state): State<Arc<AdminState>>, req: Request, next: Next) -> Response {
    if state.token.is_empty() {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(t) if bool::from(t.as_bytes().ct_eq(state.token.as_bytes())) => next.run(req).await,
        Some(_) => ApiError::new(StatusCode::UNAUTHORIZED, "wrong token").into_response(),
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing token: send Authorization: Bearer <admin.token>",
        )
        .into_response(),
    }
}

/// The dashboard: one page, styles and script inline, embedded in the binary.
async fn dashboard() -> Html<&'static str> {
    Html(include_str!("dashboard.html"))
}

async fn metrics(State(state): State<Arc<AdminState>>) -> Result<Response, ApiError> {
    let text = crate::metrics::render_prometheus(state.broker()?);
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        text,
    )
        .into_response())
}

/// The process is up and serving HTTP.
async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// 200 once the store is replayed and the listeners accept clients; 503 before and while
/// shutting down.
async fn readyz(State(state): State<Arc<AdminState>>) -> Response {
    if state.ready.load(Ordering::Acquire) {
        Json(serde_json::json!({ "status": "ready" })).into_response()
    } else if state.broker.get().is_none() {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "starting: the store is being replayed",
        )
        .into_response()
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not accepting clients (starting or shutting down)",
        )
        .into_response()
    }
}

/// Milliseconds since the Unix epoch as RFC 3339 UTC (`2026-01-02T03:04:05.678Z`).
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_formats_utc() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(super::rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(
            super::rfc3339(1_767_225_599_999),
            "2025-12-31T23:59:59.999Z"
        );
    }
}
