//! What a PUBACK waits for in cluster mode: the QoS 1/2 messages a node publishes go to the
//! JetStream stream `sluice_messages` ([`super::sessions`]), and the connections' tickets
//! (`ClusterEvent::Ticket`) are answered only once every such message queued before them is
//! in the stream (JetStream's publish acknowledgement: on R3, after 2 of 3 servers stored it)
//! and the local store answered its own ticket.
//!
//! The cluster task sends each message and hands its acknowledgement future to the one acker
//! task ([`run`]) in order, with the tickets between them; the acker awaits them in that order,
//! so a ticket is answered after everything before it. A message whose acknowledgement does
//! not come (the node's NATS connection is down, the stream has no leader for a moment) is
//! published again with the same `Nats-Msg-Id` (JetStream drops the copy it may already have
//! within its 2-minute duplicate window), pausing 0.1 s doubled up to 5 s, for up to
//! [`GIVE_UP`]; then the tickets after it are answered `false` and their connections close
//! without the acknowledgements (their clients send those messages again).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::Context;
use async_nats::HeaderMap;
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

/// The most bytes of messages sent and not yet acknowledged (kept to send again), in KiB
/// permits: 32 MiB. Past it the cluster task waits (and routing's 64 MiB queue fills).
const MAX_UNACKED_KIB: usize = 32 * 1024;

/// How long a message's publishing to the stream is tried before its tickets fail.
const GIVE_UP: Duration = Duration::from_secs(30);

/// One item of the acker's queue.
enum Item {
    /// A message sent to the stream: its acknowledgement (None: the send failed), and what it
    /// takes to send it again.
    Sent {
        ack: Option<PublishAckFuture>,
        subject: String,
        headers: HeaderMap,
        body: Bytes,
        _permit: OwnedSemaphorePermit,
    },
    /// A connection's ticket (see the module's comment).
    Ticket {
        store: Option<oneshot::Receiver<bool>>,
        reply: oneshot::Sender<bool>,
    },
}

/// The cluster task's end of the acker.
pub(crate) struct Acker {
    js: Context,
    tx: mpsc::UnboundedSender<Item>,
    room: Arc<Semaphore>,
}

impl Acker {
    /// An acker publishing through `js`, with its task.
    pub fn spawn(js: Context) -> Acker {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(js.clone(), rx));
        Acker {
            js,
            tx,
            room: Arc::new(Semaphore::new(MAX_UNACKED_KIB)),
        }
    }

    /// Publishes `body` to the stream on `subject` (`id`: its `Nats-Msg-Id`). Waits only for
    /// room (see [`MAX_UNACKED_KIB`]) and the send, never for the acknowledgement.
    pub async fn publish(&self, subject: String, headers: HeaderMap, id: &str, body: Bytes) {
        let kib = u32::try_from(body.len() / 1024 + 1).unwrap_or(u32::MAX);
        let Ok(permit) = self.room.clone().acquire_many_owned(kib).await else {
            return;
        };
        let mut headers = headers;
        headers.insert(async_nats::header::NATS_MESSAGE_ID, id);
        // Not even sent (the connection is closed or reconnecting): the acker tries again.
        let ack = send(&self.js, &subject, &headers, &body).await.ok();
        let _ = self.tx.send(Item::Sent {
            ack,
            subject,
            headers,
            body,
            _permit: permit,
        });
    }

    /// Queues a ticket behind every message published so far.
    pub fn ticket(&self, store: Option<oneshot::Receiver<bool>>, reply: oneshot::Sender<bool>) {
        let _ = self.tx.send(Item::Ticket { store, reply });
    }
}

async fn send(
    js: &Context,
    subject: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<PublishAckFuture, async_nats::jetstream::context::PublishError> {
    js.send_publish(
        subject.to_owned(),
        PublishMessage::build()
            .payload(body.clone())
            .headers(headers.clone()),
    )
    .await
}

/// Sends again until the send itself works, for up to [`GIVE_UP`]; None if it never did.
async fn retry(
    js: &Context,
    subject: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Option<PublishAckFuture> {
    let since = Instant::now();
    let mut pause = Duration::from_millis(100);
    while since.elapsed() < GIVE_UP {
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
        if let Ok(ack) = send(js, subject, headers, body).await {
            return Some(ack);
        }
    }
    None
}

/// The acker task: awaits each acknowledgement in order, answers each ticket after those
/// before it. `failed` stays set from a message given up until the next ticket has been
/// answered `false`.
async fn run(js: Context, mut rx: mpsc::UnboundedReceiver<Item>) {
    let mut failed = false;
    while let Some(item) = rx.recv().await {
        match item {
            Item::Sent {
                ack,
                subject,
                headers,
                body,
                _permit,
            } => {
                let since = Instant::now();
                let mut ack = match ack {
                    Some(ack) => Some(ack),
                    None => {
                        let again = retry(&js, &subject, &headers, &body).await;
                        failed |= again.is_none();
                        again
                    }
                };
                while let Some(pending) = ack.take() {
                    match pending.await {
                        Ok(_) => {}
                        Err(e) if since.elapsed() < GIVE_UP => {
                            tracing::warn!(subject, error = %e, "cluster: the stream has not acknowledged a message yet; publishing it again");
                            ack = retry(&js, &subject, &headers, &body).await;
                            failed |= ack.is_none();
                        }
                        Err(e) => {
                            tracing::error!(subject, error = %e, "cluster: message not taken by the stream within 30 s: its publisher's acknowledgement is withheld (the connection closes)");
                            failed = true;
                        }
                    }
                }
            }
            Item::Ticket { store, reply } => {
                let stored = match store {
                    Some(rx) => rx.await.unwrap_or(false),
                    None => true,
                };
                let _ = reply.send(stored && !std::mem::take(&mut failed));
            }
        }
    }
}
