//! CONNECT -> CONNACK negotiation (3.1, 3.2), without sockets: client identifier rules,
//! authentication, will checks, keepalive and the limits both sides announce.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use sluice_codec::{ConnAck, ConnAckProperties, Connect, Packet, Protocol, QoS, ReasonCode, Str};

use crate::broker::{Broker, Opened};
use crate::message::ClientId;
use crate::protocol::{ClientState, Negotiated};
use crate::session::ControlGuard;

/// The client's view of the maximum packet size when it announces none (the protocol's limit).
const UNLIMITED_PACKET: usize = crate::MAX_PACKET_SIZE as usize;

/// A CONNECT the broker accepts, with the CONNACK properties to send.
#[derive(Debug)]
pub struct Accepted {
    pub negotiated: Negotiated,
    /// Whether the session starts clean (Clean Session / Clean Start).
    pub clean_start: bool,
    /// Session Expiry Interval in effect: 5.0's property, or 0 / forever for 3.1.1.
    pub session_expiry: u32,
    /// CONNACK properties (5.0), without Session Present, which the session decides.
    pub properties: ConnAckProperties,
}

/// A CONNECT the broker refuses: the CONNACK reason and a log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub reason: ReasonCode,
    pub why: &'static str,
    /// Server Reference to send with 0x9C/0x9D (5.0 redirection, 4.11).
    pub server_reference: Option<Str>,
}

fn refuse(reason: ReasonCode, why: &'static str) -> Refused {
    Refused {
        reason,
        why,
        server_reference: None,
    }
}

/// The redirection code configured with `mqtt.server_reference` (4.11).
pub fn redirect_code(cfg: &crate::config::MqttConfig) -> ReasonCode {
    if cfg.server_moved {
        ReasonCode::SERVER_MOVED
    } else {
        ReasonCode::USE_ANOTHER_SERVER
    }
}

/// What checking the CONNECT's credentials gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credentials {
    /// No username in CONNECT.
    Anonymous,
    /// A username, and no password file to check it against.
    Unchecked,
    /// Username and password match the password file.
    Verified,
    /// The AUTH exchange (enhanced authentication, 4.12) succeeded; the caller sets the
    /// authenticated username.
    Enhanced,
    /// A password file is configured and the username/password do not match it.
    Failed,
}

/// A client admitted by [`admit`]: its state machine, with CONNACK (and any inflight messages
/// of a resumed session) already queued to be written.
#[derive(Debug)]
pub struct Admitted {
    pub state: ClientState,
    /// This connection's number ([`Broker::connection_id`]), which owns the session now.
    pub connection: u64,
    /// Whether the session started clean, and whether an existing one was resumed (Session
    /// Present), for the connection's log line.
    pub clean_start: bool,
    pub session_present: bool,
    /// Held by the connection while it runs (see [`ControlGuard`]).
    pub control: ControlGuard,
}

/// Admits a client whose CONNECT `negotiate` accepted: opens its session (taking it over from
/// a connected client [MQTT-3.1.4-3], resuming or discarding it per Clean Start
/// [MQTT-3.1.2-4]), writes what the store must know about it, builds its state machine and
/// queues CONNACK. `enhanced` is (method, data for CONNACK, username) when an AUTH exchange
/// authenticated the client (4.12). The connection keeps the returned `control` guard while it
/// runs: the broker asks it to hand its session over through the session's owner entry
/// ([`crate::session::SessionHandle::ask_owner`]). `now` is the time of the CONNACK (the resent messages' expiry
/// counts from it); the function reads no clock.
///
/// The one way a client is admitted: the connection task, the protocol fuzz harness and the
/// tests all call it, so none of them can drift from the others.
pub async fn admit(
    broker: &Arc<Broker>,
    connect: Box<Connect>,
    mut accepted: Accepted,
    enhanced: Option<(Str, Option<Bytes>, String)>,
    now: Instant,
) -> Admitted {
    let mut auth_method = None;
    if let Some((method, data, username)) = enhanced {
        accepted.negotiated.username = Some(username.into());
        accepted.properties.authentication_method = Some(method.clone());
        accepted.properties.authentication_data = data;
        auth_method = Some(method);
    }
    let Accepted {
        negotiated: n,
        clean_start,
        session_expiry,
        properties: connack_properties,
    } = accepted;
    let connection = broker.connection_id();
    let Opened {
        handle,
        mut session,
        session_present,
        replay_from,
    } = Box::pin(broker.open_session(&n.client_id, clean_start, connection)).await;
    // From here until the session is parked again, this connection answers takeovers.
    let control = ControlGuard {
        handle: handle.clone(),
        connection,
    };
    session.expiry_interval = session_expiry;
    // Before this connection logs anything: how far the session's deliveries may have gone.
    let horizon = if session_present {
        broker.store.sent_horizon(&n.client_id).await
    } else {
        0
    };
    // Persistent sessions are logged from here on (persist/).
    let persistent = broker.store.is_enabled() && session_expiry > 0;
    if !persistent {
        handle.persistent.store(false, Ordering::Relaxed);
    }
    if broker.store.is_enabled() {
        if session_present && !persistent {
            // The session goes on, but no longer in the log: what its queue holds on disk only
            // comes back into memory before the log forgets it.
            let ids = {
                // Nothing new goes to disk only from here: the log is about to forget it.
                let mut outbox = handle.outbox();
                outbox.set_spill(false);
                outbox.all_cold_ids()
            };
            if !ids.is_empty() {
                let messages = broker.store.load(ids.clone()).await;
                let loaded = ids.into_iter().zip(messages).collect();
                let lost = handle.outbox().warm_all(&loaded);
                if !lost.is_empty() {
                    tracing::error!(client_id = %n.client_id, count = lost.len(), "queued messages could not be read back from the store: dropped");
                }
            }
        }
        if !session_present || !persistent {
            broker.store.session_gone(n.client_id.clone());
        }
        if persistent {
            broker.store.session_opened(
                n.client_id.clone(),
                session_expiry,
                n.username.clone(),
                connect.will.clone().map(Box::new),
            );
            // A session that came from another node (cluster mode): its subscriptions are
            // new to this store.
            if replay_from.is_some() {
                for (filter, r) in session.subscriptions.iter() {
                    broker.store.subscribed(
                        n.client_id.clone(),
                        filter.clone(),
                        r.options,
                        r.identifier,
                    );
                }
            }
            // Only now: a queue entry logged before the session record would be ignored.
            handle.outbox().set_spill(true);
            handle.persistent.store(true, Ordering::Relaxed);
        }
    }
    if let Some(link) = broker.router.cluster() {
        // Cluster mode: the bucket `sluice_sessions` keeps what another node needs to resume a
        // persistent session (cluster/sessions.rs); one that ends with its connection is
        // forgotten there. An adopted session catches up from the cluster's stream.
        if session_expiry > 0 {
            let state = crate::broker::session_state(&session, n.username.clone(), true);
            link.session_saved(&n.client_id, state);
            if let Some(from) = replay_from {
                link.replay(&n.client_id, from);
            }
        } else {
            link.session_ended(&n.client_id);
        }
    }
    let Connect { will, .. } = *connect;
    let mut state = ClientState::new(n, handle, session, will);
    state.set_cluster_acks(broker.router.cluster().is_some());
    state.set_store(broker.store.clone());
    state.set_recovered_horizon(horizon);
    state.set_auth_method(auth_method);
    state.attach_groups(broker);
    state.send(&Packet::ConnAck(ConnAck {
        session_present,
        reason: ReasonCode::SUCCESS,
        properties: connack_properties,
    }));
    state.resend_inflight(now);
    Admitted {
        state,
        connection,
        clean_start,
        session_present,
        control,
    }
}

/// Decides whether to accept `c`, and on which terms.
pub fn negotiate(
    c: &Connect,
    broker: &Broker,
    credentials: Credentials,
) -> Result<Accepted, Refused> {
    let cfg = &broker.config.mqtt;
    let v5 = c.protocol.is_v5();
    let mut properties = ConnAckProperties::default();

    if let Some(reference) = &cfg.server_reference {
        // Redirection (4.11): 5.0 clients are told where to go; 3.1.1 has no way to say it.
        return Err(if v5 {
            Refused {
                reason: redirect_code(cfg),
                why: "redirected to another server (mqtt.server_reference)",
                server_reference: Str::try_from(reference.as_str()).ok(),
            }
        } else {
            refuse(
                ReasonCode::SERVER_UNAVAILABLE,
                "this server redirects clients (mqtt.server_reference); MQTT 3.1.1 cannot follow",
            )
        });
    }

    let limits = &broker.config.limits;
    // This connection is already counted.
    if broker
        .stats
        .connections
        .load(std::sync::atomic::Ordering::Relaxed)
        > limits.max_connections
    {
        return Err(refuse(
            ReasonCode::SERVER_BUSY,
            "too many connections (limits.max_connections)",
        ));
    }
    if c.client_id.len() > limits.max_client_id_length {
        return Err(refuse(
            ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
            "client identifier longer than limits.max_client_id_length",
        ));
    }

    if c.properties.authentication_method.is_some() && credentials != Credentials::Enhanced {
        return Err(refuse(
            ReasonCode::BAD_AUTHENTICATION_METHOD,
            "enhanced authentication method not supported [MQTT-4.12.0-1]",
        ));
    }

    // Client identifier (3.1.3.1).
    let client_id: ClientId = if c.client_id.is_empty() {
        match c.protocol {
            Protocol::V31 => {
                return Err(refuse(
                    ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
                    "empty client identifier (MQTT 3.1 requires one)",
                ))
            }
            Protocol::V311 if !c.clean_start => {
                return Err(refuse(
                    ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
                    "empty client identifier with Clean Session 0 [MQTT-3.1.3-8]",
                ))
            }
            _ => {
                let id = format!("sluice-{:016x}", rand::random::<u64>());
                if v5 {
                    // Told to the client, which has no other way to learn it [MQTT-3.2.2-16].
                    properties.assigned_client_identifier = Str::try_from(id.as_str()).ok();
                }
                id.into()
            }
        }
    } else {
        c.client_id.as_str().into()
    };

    // Authentication (3.1.3.5, 3.1.3.6): the password was checked by the caller, off the
    // runtime threads.
    let username: Option<Arc<str>> = match credentials {
        Credentials::Verified | Credentials::Enhanced => {
            c.username.as_ref().map(|u| u.as_str().into())
        }
        Credentials::Failed => {
            return Err(refuse(
                ReasonCode::BAD_USER_NAME_OR_PASSWORD,
                "bad user name or password",
            ))
        }
        Credentials::Anonymous if !broker.config.auth.allows_anonymous() => {
            return Err(refuse(
                ReasonCode::NOT_AUTHORIZED,
                "anonymous clients are not allowed (auth.allow_anonymous = false)",
            ))
        }
        Credentials::Unchecked if !broker.config.auth.allows_anonymous() => {
            return Err(refuse(
                ReasonCode::BAD_USER_NAME_OR_PASSWORD,
                "no auth.password_file to check credentials, and auth.allow_anonymous = false",
            ))
        }
        // Without a password file a username is taken as given (for ACL sections), as
        // Mosquitto does with allow_anonymous.
        Credentials::Anonymous | Credentials::Unchecked => {
            c.username.as_ref().map(|u| u.as_str().into())
        }
    };

    if let Some(will) = &c.will {
        if crate::protocol::topic_over_limits(&will.topic, limits) {
            return Err(refuse(
                ReasonCode::TOPIC_NAME_INVALID,
                "will topic longer or deeper than limits.max_topic_length / max_topic_levels",
            ));
        }
        if will.qos as u8 > cfg.maximum_qos {
            return Err(refuse(
                ReasonCode::QOS_NOT_SUPPORTED,
                "will QoS above the server's Maximum QoS [MQTT-3.2.2-12]",
            ));
        }
        if will.retain && !cfg.retain_available {
            return Err(refuse(
                ReasonCode::RETAIN_NOT_SUPPORTED,
                "will retain set but retained messages are not available [MQTT-3.2.2-13]",
            ));
        }
        // A will is published as a PUBLISH from the client would be: to `$delayed/{s}/{topic}`
        // it is delivered to `{topic}` s seconds after it is published (so the ACL is asked
        // about `{topic}`), and `$SYS` / `$share/` are not the client's to publish to.
        let target = match crate::topic::delayed(&will.topic, cfg.max_delay_seconds) {
            None => will.topic.as_str(),
            Some(Ok(d)) if sluice_codec::TopicName::try_from(d.target).is_ok() => d.target,
            Some(Ok(_)) => {
                return Err(refuse(
                    ReasonCode::TOPIC_NAME_INVALID,
                    "will topic: $delayed target is not a valid topic name",
                ))
            }
            Some(Err(e)) => return Err(refuse(ReasonCode::TOPIC_NAME_INVALID, e.reason())),
        };
        if crate::topic::is_reserved_for_clients(target)
            || !broker
                .access
                .may_publish(username.as_deref(), &client_id, target)
        {
            return Err(refuse(
                ReasonCode::NOT_AUTHORIZED,
                "will topic not allowed by the ACL",
            ));
        }
    }

    // Keep Alive (3.1.2.10): a 5.0 client asking for more than the maximum (or for none, when a
    // maximum is set) is told the maximum as Server Keep Alive [MQTT-3.2.2-21].
    let mut keep_alive = c.keep_alive;
    if v5 && cfg.max_keepalive < u16::MAX && (keep_alive == 0 || keep_alive > cfg.max_keepalive) {
        keep_alive = cfg.max_keepalive;
        properties.server_keep_alive = Some(keep_alive);
    }

    let session_expiry = if v5 {
        c.properties.session_expiry_interval.unwrap_or(0)
    } else if c.clean_start {
        0
    } else {
        u32::MAX
    };

    let client_receive_max = c.properties.receive_maximum.unwrap_or(u16::MAX);
    let send_window = usize::from(client_receive_max.min(cfg.max_inflight));
    if v5 {
        if cfg.receive_maximum < u16::MAX {
            properties.receive_maximum = Some(cfg.receive_maximum);
        }
        properties.maximum_packet_size = Some(cfg.max_packet_size);
        if cfg.topic_alias_maximum > 0 {
            properties.topic_alias_maximum = Some(cfg.topic_alias_maximum);
        }
        if cfg.maximum_qos < 2 {
            properties.maximum_qos = QoS::from_u8(cfg.maximum_qos);
        }
        // Capabilities: absence would mean "available" (3.2.2.3), but some clients and test
        // suites read the property and do not apply that default, so each is stated (3 bytes).
        properties.retain_available = Some(cfg.retain_available);
        properties.wildcard_subscription_available = Some(cfg.wildcard_subscription_available);
        properties.subscription_identifiers_available =
            Some(cfg.subscription_identifiers_available);
        properties.shared_subscription_available = Some(cfg.shared_subscription_available);
    }

    let negotiated = Negotiated {
        protocol: c.protocol,
        client_id,
        username,
        keep_alive,
        connect_session_expiry: session_expiry,
        send_window,
        client_max_packet: c
            .properties
            .maximum_packet_size
            .map_or(UNLIMITED_PACKET, |m| m as usize),
        receive_maximum: cfg.receive_maximum,
        topic_alias_maximum: if v5 { cfg.topic_alias_maximum } else { 0 },
        request_problem_information: c.properties.request_problem_information.unwrap_or(true),
        outbound_alias_maximum: if v5 {
            c.properties
                .topic_alias_maximum
                .unwrap_or(0)
                .min(cfg.max_outbound_topic_aliases)
        } else {
            0
        },
    };
    Ok(Accepted {
        negotiated,
        clean_start: c.clean_start,
        session_expiry,
        properties,
    })
}

/// The CONNACK for a refused CONNECT [MQTT-3.2.2-6]: Session Present 0, and for 5.0 a Reason
/// String unless the client asked for none (3.1.2.11.7) or it would not fit its Maximum Packet
/// Size [MQTT-3.2.2-19].
pub fn refusal(r: &Refused, c: &Connect) -> ConnAck {
    let mut ack = ConnAck {
        session_present: false,
        reason: r.reason,
        properties: ConnAckProperties::default(),
    };
    if c.protocol.is_v5() {
        // The Server Reference is sent whatever Request Problem Information says (3.2.2.3.16).
        ack.properties.server_reference = r.server_reference.clone();
    }
    if c.protocol.is_v5() && c.properties.request_problem_information != Some(false) {
        ack.properties.reason_string = Str::try_from(r.why).ok();
        let limit = c
            .properties
            .maximum_packet_size
            .map_or(usize::MAX, |m| m as usize);
        let fits =
            sluice_codec::encoded_len(&sluice_codec::Packet::ConnAck(ack.clone()), c.protocol)
                .is_ok_and(|len| len <= limit);
        if !fits {
            ack.properties.reason_string = None;
        }
    }
    ack
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use sluice_codec::ConnectProperties;

    fn connect(protocol: Protocol, id: &str, clean: bool) -> Connect {
        Connect {
            protocol,
            clean_start: clean,
            keep_alive: 60,
            client_id: Str::try_from(id).unwrap(),
            will: None,
            username: None,
            password: None,
            properties: ConnectProperties::default(),
        }
    }

    fn broker(f: impl FnOnce(&mut Config)) -> Broker {
        let mut c = Config::default();
        f(&mut c);
        Broker::new(c, None)
    }

    #[test]
    fn empty_client_id_rules() {
        let b = broker(|_| {});
        // [MQTT-3.1.3-8]: 3.1.1, empty id, Clean Session 0 -> identifier rejected.
        let r = negotiate(
            &connect(Protocol::V311, "", false),
            &b,
            Credentials::Anonymous,
        )
        .unwrap_err();
        assert_eq!(r.reason, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
        // [MQTT-3.1.3-6]: 3.1.1, empty id, Clean Session 1 -> an id is assigned silently.
        let a = negotiate(
            &connect(Protocol::V311, "", true),
            &b,
            Credentials::Anonymous,
        )
        .unwrap();
        assert!(a.negotiated.client_id.starts_with("sluice-"));
        assert!(a.properties.assigned_client_identifier.is_none());
        // [MQTT-3.2.2-16]: 5.0 gets the Assigned Client Identifier, even with Clean Start 0.
        let a = negotiate(
            &connect(Protocol::V5, "", false),
            &b,
            Credentials::Anonymous,
        )
        .unwrap();
        assert_eq!(
            a.properties.assigned_client_identifier.as_deref(),
            Some(&*a.negotiated.client_id)
        );
        assert!(negotiate(
            &connect(Protocol::V31, "", true),
            &b,
            Credentials::Anonymous
        )
        .is_err());
    }

    #[test]
    fn server_keep_alive_caps_v5_only() {
        let b = broker(|c| c.mqtt.max_keepalive = 30);
        let a = negotiate(
            &connect(Protocol::V5, "c", true),
            &b,
            Credentials::Anonymous,
        )
        .unwrap();
        assert_eq!(
            (a.negotiated.keep_alive, a.properties.server_keep_alive),
            (30, Some(30))
        );
        let mut c = connect(Protocol::V5, "c", true);
        c.keep_alive = 0;
        let a = negotiate(&c, &b, Credentials::Anonymous).unwrap();
        assert_eq!(a.properties.server_keep_alive, Some(30), "[MQTT-3.2.2-21]");
        let a = negotiate(
            &connect(Protocol::V311, "c", true),
            &b,
            Credentials::Anonymous,
        )
        .unwrap();
        assert_eq!(
            a.negotiated.keep_alive, 60,
            "3.1.1 cannot be told another keepalive"
        );
    }

    #[test]
    fn session_expiry_per_level() {
        let b = broker(|_| {});
        assert_eq!(
            negotiate(
                &connect(Protocol::V311, "c", false),
                &b,
                Credentials::Anonymous
            )
            .unwrap()
            .session_expiry,
            u32::MAX
        );
        assert_eq!(
            negotiate(
                &connect(Protocol::V311, "c", true),
                &b,
                Credentials::Anonymous
            )
            .unwrap()
            .session_expiry,
            0
        );
        let mut c = connect(Protocol::V5, "c", false);
        assert_eq!(
            negotiate(&c, &b, Credentials::Anonymous)
                .unwrap()
                .session_expiry,
            0,
            "absent means 0 [MQTT-3.1.2-?]"
        );
        c.properties.session_expiry_interval = Some(300);
        assert_eq!(
            negotiate(&c, &b, Credentials::Anonymous)
                .unwrap()
                .session_expiry,
            300
        );
    }

    #[test]
    fn send_window_is_min_of_client_receive_maximum_and_config() {
        let b = broker(|c| c.mqtt.max_inflight = 100);
        let mut c = connect(Protocol::V5, "c", true);
        c.properties.receive_maximum = Some(5);
        assert_eq!(
            negotiate(&c, &b, Credentials::Anonymous)
                .unwrap()
                .negotiated
                .send_window,
            5
        );
        c.properties.receive_maximum = None;
        assert_eq!(
            negotiate(&c, &b, Credentials::Anonymous)
                .unwrap()
                .negotiated
                .send_window,
            100
        );
    }

    #[test]
    fn anonymous_refused_when_disallowed() {
        let b = broker(|c| c.auth.allow_anonymous = Some(false));
        let r = negotiate(
            &connect(Protocol::V5, "c", true),
            &b,
            Credentials::Anonymous,
        )
        .unwrap_err();
        assert_eq!(r.reason, ReasonCode::NOT_AUTHORIZED);
    }

    #[test]
    fn unknown_authentication_method_is_refused() {
        let b = broker(|_| {});
        let mut c = connect(Protocol::V5, "c", true);
        c.properties.authentication_method = Some(Str::from_static("SCRAM-SHA-1"));
        assert_eq!(
            negotiate(&c, &b, Credentials::Anonymous)
                .unwrap_err()
                .reason,
            ReasonCode::BAD_AUTHENTICATION_METHOD
        );
    }

    #[test]
    fn server_reference_redirects_v5_and_refuses_v311() {
        // 4.11: 0x9C Use Another Server with the Server Reference; 0x9D when moved for good.
        let b = broker(|c| c.mqtt.server_reference = Some("other:1883".into()));
        let c5 = connect(Protocol::V5, "c", true);
        let r = negotiate(&c5, &b, Credentials::Anonymous).unwrap_err();
        assert_eq!(r.reason, ReasonCode::USE_ANOTHER_SERVER);
        let ack = refusal(&r, &c5);
        assert_eq!(
            ack.properties.server_reference.as_deref(),
            Some("other:1883")
        );
        let r = negotiate(
            &connect(Protocol::V311, "c", true),
            &b,
            Credentials::Anonymous,
        )
        .unwrap_err();
        assert_eq!(
            sluice_codec::connack_return_code(r.reason),
            3,
            "server unavailable"
        );
        let b = broker(|c| {
            c.mqtt.server_reference = Some("other:1883".into());
            c.mqtt.server_moved = true;
        });
        assert_eq!(
            negotiate(&c5, &b, Credentials::Anonymous)
                .unwrap_err()
                .reason,
            ReasonCode::SERVER_MOVED
        );
    }

    #[test]
    fn capabilities_advertised_and_will_checked() {
        let b = broker(|c| {
            c.mqtt.maximum_qos = 1;
            c.mqtt.retain_available = false;
        });
        let a = negotiate(
            &connect(Protocol::V5, "c", true),
            &b,
            Credentials::Anonymous,
        )
        .unwrap();
        assert_eq!(a.properties.maximum_qos, Some(QoS::AtLeastOnce));
        assert_eq!(a.properties.retain_available, Some(false));
        // Stated explicitly, also when available (some clients ignore the absent default).
        assert_eq!(a.properties.wildcard_subscription_available, Some(true));
        assert_eq!(a.properties.shared_subscription_available, Some(true));
        assert_eq!(a.properties.subscription_identifiers_available, Some(true));
        let mut c = connect(Protocol::V5, "c", true);
        c.will = Some(sluice_codec::LastWill {
            topic: sluice_codec::TopicName::try_from("w").unwrap(),
            payload: Default::default(),
            qos: QoS::ExactlyOnce,
            retain: false,
            delay_interval: 0,
            properties: Default::default(),
        });
        assert_eq!(
            negotiate(&c, &b, Credentials::Anonymous)
                .unwrap_err()
                .reason,
            ReasonCode::QOS_NOT_SUPPORTED
        );
        if let Some(w) = &mut c.will {
            w.qos = QoS::AtMostOnce;
            w.retain = true;
        }
        assert_eq!(
            negotiate(&c, &b, Credentials::Anonymous)
                .unwrap_err()
                .reason,
            ReasonCode::RETAIN_NOT_SUPPORTED
        );
    }

    #[test]
    fn client_id_length_limit() {
        let b = broker(|c| c.limits.max_client_id_length = 8);
        let r = negotiate(
            &connect(Protocol::V311, "123456789", true),
            &b,
            Credentials::Anonymous,
        )
        .unwrap_err();
        assert_eq!(r.reason, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
        assert!(negotiate(
            &connect(Protocol::V311, "12345678", true),
            &b,
            Credentials::Anonymous
        )
        .is_ok());
    }
}
