//! 14: the admin HTTP listener against the real binary: `/metrics` parsed as Prometheus does,
//! health and readiness, every `/api/v1/` endpoint's answers and status codes, the token
//! rules, paging, a kick that really disconnects (DISCONNECT 0x98), publish through the API,
//! and the dashboard in a real (headless) Chromium.

use std::time::Duration;

use serde_json::{json, Value};
use sluice_tests::admin::{AdminClient, ChromeDriver};
use sluice_tests::codec::{Connect, ConnectProperties, Packet, Protocol, QoS, ReasonCode, Str};
use sluice_tests::{client_id, packets, run_sluice, Broker, BrokerOpts, RawClient};

const T: Duration = Duration::from_secs(30);

fn admin(broker: &Broker) -> AdminClient {
    AdminClient::new(broker.admin_addr().expect("admin listener logged"))
}

/// A CONNECT with a username and a Session Expiry Interval (5.0) or Clean Session (3.1.1).
fn connect(protocol: Protocol, id: &str, username: Option<&str>, expiry: Option<u32>) -> Packet {
    Packet::Connect(Box::new(Connect {
        protocol,
        clean_start: expiry.is_none(),
        keep_alive: 30,
        client_id: Str::try_from(id).unwrap(),
        will: None,
        username: username.map(|u| Str::try_from(u).unwrap()),
        password: None,
        properties: ConnectProperties {
            session_expiry_interval: expiry.filter(|_| protocol == Protocol::V5),
            ..Default::default()
        },
    }))
}

/// A connected raw client (CONNACK seen).
async fn client(
    broker: &Broker,
    protocol: Protocol,
    id: &str,
    username: Option<&str>,
    expiry: Option<u32>,
) -> RawClient {
    let mut c = RawClient::connect(broker.addr, protocol).await.unwrap();
    c.send(&connect(protocol, id, username, expiry))
        .await
        .unwrap();
    match c.expect_packet(T).await.unwrap() {
        Packet::ConnAck(a) if a.reason == ReasonCode::SUCCESS => c,
        other => panic!("{id}: expected CONNACK 0, got {other:?}"),
    }
}

/// Subscribes `c` to `filter` and waits for the SUBACK.
async fn subscribe(c: &mut RawClient, filter: &str, qos: QoS) {
    c.send(&packets::subscribe(1, filter, qos)).await.unwrap();
    match c.expect_packet(T).await.unwrap() {
        Packet::SubAck(_) => {}
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

/// The value of one sample of a parsed scrape.
fn sample(scrape: &prometheus_parse::Scrape, name: &str, label: Option<(&str, &str)>) -> f64 {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
        .unwrap_or_else(|| panic!("no sample {name} {label:?} in the scrape"))
}

async fn scrape(api: &AdminClient) -> prometheus_parse::Scrape {
    let (status, text) = api
        .call_text(reqwest::Method::GET, "/metrics", None)
        .await
        .unwrap();
    assert_eq!(status, 200, "{text}");
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    prometheus_parse::Scrape::parse(lines).expect("Prometheus text format")
}

/// `/healthz`, `/readyz`, unknown routes, and `/metrics` whose counters move with traffic.
#[tokio::test]
async fn health_readiness_and_metrics_that_move_with_traffic() {
    let broker = Broker::start();
    let api = admin(&broker);
    assert_eq!(api.ok("/healthz").await.unwrap()["status"], "ok");
    assert_eq!(api.ok("/readyz").await.unwrap()["status"], "ready");
    let (status, v) = api.get("/api/v1/nope").await.unwrap();
    assert_eq!(status, 404);
    assert!(v["error"].is_string(), "errors are JSON: {v}");

    let before = scrape(&api).await;
    let received = sample(
        &before,
        "sluice_messages_received_total",
        Some(("qos", "1")),
    );
    let sent = sample(&before, "sluice_messages_sent_total", Some(("qos", "1")));
    let total = sample(&before, "sluice_connections_total", None);

    let mut sub = client(&broker, Protocol::V5, &client_id("m-sub"), None, None).await;
    subscribe(&mut sub, "m/#", QoS::AtLeastOnce).await;
    let mut publ = client(&broker, Protocol::V311, &client_id("m-pub"), None, None).await;
    for i in 0..10u16 {
        publ.send(&Packet::Publish(packets::publish(
            "m/x",
            QoS::AtLeastOnce,
            i + 1,
            "x",
        )))
        .await
        .unwrap();
    }
    let mut got = 0;
    while got < 10 {
        if let Packet::Publish(p) = sub.expect_packet(T).await.unwrap() {
            sub.send(&Packet::PubAck(sluice_tests::codec::PubAck::new(p.pkid)))
                .await
                .unwrap();
            got += 1;
        }
    }
    // Counted per read batch: the publisher's batch may be added just after the subscriber
    // has its messages, so the scrape is repeated until it shows them (or the deadline).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let after = loop {
        let after = scrape(&api).await;
        let moved = sample(&after, "sluice_messages_received_total", Some(("qos", "1"))) - received;
        if moved >= 10.0 || std::time::Instant::now() > deadline {
            break after;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        sample(&after, "sluice_messages_received_total", Some(("qos", "1"))) - received,
        10.0
    );
    assert!(sample(&after, "sluice_messages_sent_total", Some(("qos", "1"))) - sent >= 10.0);
    assert_eq!(
        sample(&after, "sluice_connections_total", None) - total,
        2.0
    );
    assert_eq!(sample(&after, "sluice_connections_current", None), 2.0);
    assert_eq!(
        sample(
            &after,
            "sluice_messages_dropped_total",
            Some(("reason", "queue_full_newest"))
        ),
        0.0
    );
}

/// `GET /api/v1/clients`: filters (id prefix, username, listener), paging by offset and by
/// cursor, bad paging 400; `GET /api/v1/clients/{id}`: one client's details, unknown 404.
#[tokio::test]
async fn clients_are_listed_filtered_paged_and_detailed() {
    let broker = Broker::start();
    let api = admin(&broker);
    let mut kept = Vec::new();
    for (id, user) in [
        ("pg-a-1", "alice"),
        ("pg-a-2", "alice"),
        ("pg-a-3", "bob"),
        ("pg-b-1", "bob"),
        ("pg-b-2", "carol"),
    ] {
        kept.push(client(&broker, Protocol::V5, id, Some(user), None).await);
    }
    let all = api.ok("/api/v1/clients").await.unwrap();
    assert_eq!(all["total"], 5, "{all}");
    let ids = |v: &Value| -> Vec<String> {
        v["clients"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["client_id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        ids(&all),
        ["pg-a-1", "pg-a-2", "pg-a-3", "pg-b-1", "pg-b-2"]
    );
    let v = api.ok("/api/v1/clients?prefix=pg-a-").await.unwrap();
    assert_eq!(ids(&v), ["pg-a-1", "pg-a-2", "pg-a-3"]);
    let v = api.ok("/api/v1/clients?username=bob").await.unwrap();
    assert_eq!(ids(&v), ["pg-a-3", "pg-b-1"]);
    let listener = all["clients"][0]["listener"].as_str().unwrap().to_owned();
    assert_eq!(listener, format!("tcp://{}", broker.addr));
    let v = api
        .ok(&format!("/api/v1/clients?listener={listener}"))
        .await
        .unwrap();
    assert_eq!(v["total"], 5);
    let v = api.ok("/api/v1/clients?listener=1").await.unwrap();
    assert_eq!(v["total"], 0, "there is no second listener");

    // Offset paging.
    let p1 = api.ok("/api/v1/clients?limit=2").await.unwrap();
    assert_eq!(ids(&p1), ["pg-a-1", "pg-a-2"]);
    assert_eq!(p1["next"], "pg-a-2");
    let p3 = api.ok("/api/v1/clients?limit=2&offset=4").await.unwrap();
    assert_eq!(ids(&p3), ["pg-b-2"]);
    assert_eq!(p3["next"], Value::Null, "last page");
    // Cursor paging: nothing skipped when a client before the cursor leaves.
    let mut gone = kept.remove(0);
    gone.send(&Packet::Disconnect(sluice_tests::codec::Disconnect::new(
        ReasonCode::SUCCESS,
    )))
    .await
    .unwrap();
    api.wait_for("/api/v1/clients", T, |v| v["total"] == 4)
        .await
        .unwrap();
    let p2 = api
        .ok("/api/v1/clients?limit=2&after=pg-a-2")
        .await
        .unwrap();
    assert_eq!(ids(&p2), ["pg-a-3", "pg-b-1"]);
    assert_eq!(p2["next"], "pg-b-1");

    for bad in [
        "limit=0",
        "limit=1001",
        "limit=x",
        "offset=-1",
        "offset=1&after=a",
    ] {
        let (status, v) = api.get(&format!("/api/v1/clients?{bad}")).await.unwrap();
        assert_eq!(status, 400, "{bad}: {v}");
        assert!(v["error"].is_string(), "{bad}: {v}");
    }

    let c = api.ok("/api/v1/clients/pg-b-1").await.unwrap();
    assert_eq!(c["connected"], true);
    assert_eq!(c["protocol"], "5.0");
    assert_eq!(c["keepalive"], 30);
    assert_eq!(c["username"], "bob");
    assert_eq!(c["inflight"], 0);
    assert_eq!(c["queue"]["messages"], 0);
    assert_eq!(c["queue"]["on_disk_messages"], 0);
    assert_eq!(c["shaping_rule"], Value::Null);
    assert!(
        c["address"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{c}"
    );
    assert!(c["connected_since"].as_str().unwrap().ends_with('Z'), "{c}");
    let (status, v) = api.get("/api/v1/clients/no-such-client").await.unwrap();
    assert_eq!(status, 404, "{v}");
}

/// `DELETE /api/v1/clients/{id}`: a 5.0 client gets DISCONNECT 0x98 Administrative action, a
/// 3.1.1 client is closed; both are gone from the list. Unknown ids: 404.
#[tokio::test]
async fn a_kick_really_disconnects() {
    let broker = Broker::start();
    let api = admin(&broker);
    let mut v5 = client(&broker, Protocol::V5, "kick-v5", None, None).await;
    let mut v3 = client(&broker, Protocol::V311, "kick-v3", None, None).await;

    let (status, v) = api.delete("/api/v1/clients/kick-v5").await.unwrap();
    assert_eq!(status, 200, "{v}");
    v5.expect_disconnect(T, 0x98, "kicked 5.0 client")
        .await
        .unwrap();
    let (status, v) = api.delete("/api/v1/clients/kick-v3").await.unwrap();
    assert_eq!(status, 200, "{v}");
    let seen = v3.expect_closed(T).await.unwrap();
    assert!(
        seen.is_empty(),
        "3.1.1 has no DISCONNECT from the server: {seen:?}"
    );

    let list = api.ok("/api/v1/clients").await.unwrap();
    assert_eq!(list["total"], 0, "{list}");
    let (status, _) = api.get("/api/v1/clients/kick-v5").await.unwrap();
    assert_eq!(status, 404, "a clean session ends with its connection");
    let (status, v) = api.delete("/api/v1/clients/kick-v5").await.unwrap();
    assert_eq!(status, 404, "{v}");
}

/// `DELETE /api/v1/sessions/{id}` ends a parked persistent session: it is gone, and the
/// client coming back finds none (Session Present 0). Unknown ids: 404.
#[tokio::test]
async fn deleting_a_session_ends_it() {
    let broker = Broker::start();
    let api = admin(&broker);
    let id = "sess-1";
    let mut c = client(&broker, Protocol::V5, id, None, Some(3600)).await;
    subscribe(&mut c, "sess/#", QoS::AtLeastOnce).await;
    c.send(&Packet::Disconnect(sluice_tests::codec::Disconnect::new(
        ReasonCode::SUCCESS,
    )))
    .await
    .unwrap();
    c.expect_closed(T).await.unwrap();
    let parked = api
        .wait_for(&format!("/api/v1/clients/{id}"), T, |v| {
            v["connected"] == false
        })
        .await
        .unwrap();
    assert_eq!(parked["subscriptions"][0]["filter"], "sess/#", "{parked}");
    let (status, v) = api.delete(&format!("/api/v1/clients/{id}")).await.unwrap();
    assert_eq!(status, 404, "not connected: {v}");

    let (status, v) = api.delete(&format!("/api/v1/sessions/{id}")).await.unwrap();
    assert_eq!(status, 200, "{v}");
    let (status, _) = api.get(&format!("/api/v1/clients/{id}")).await.unwrap();
    assert_eq!(status, 404);
    let subs = api.ok("/api/v1/subscriptions").await.unwrap();
    assert_eq!(subs["total"], 0, "{subs}");
    let (status, _) = api.delete(&format!("/api/v1/sessions/{id}")).await.unwrap();
    assert_eq!(status, 404);

    let mut back = RawClient::connect(broker.addr, Protocol::V5).await.unwrap();
    back.send(&connect(Protocol::V5, id, None, Some(3600)))
        .await
        .unwrap();
    match back.expect_packet(T).await.unwrap() {
        Packet::ConnAck(a) => assert!(!a.session_present, "[MQTT-3.2.2-2]"),
        other => panic!("{other:?}"),
    }
    // An online client's session: disconnected, then ended.
    let (status, v) = api.delete(&format!("/api/v1/sessions/{id}")).await.unwrap();
    assert_eq!(status, 200, "{v}");
    back.expect_disconnect(T, 0x98, "session ended by the API")
        .await
        .unwrap();
    let (status, _) = api.get(&format!("/api/v1/clients/{id}")).await.unwrap();
    assert_eq!(status, 404);
}

/// `POST /api/v1/publish` goes through the router to a subscriber; retained messages are
/// listed and deleted (URL-encoded topic); bad input 400, unknown topic 404.
#[tokio::test]
async fn publish_via_the_api_and_retained_messages() {
    let broker = Broker::start();
    let api = admin(&broker);
    let mut sub = client(&broker, Protocol::V5, "api-sub", None, None).await;
    subscribe(&mut sub, "api/#", QoS::AtLeastOnce).await;

    let body = json!({ "topic": "api/x/y", "payload": "from the API", "qos": 1, "retain": true });
    let (status, v) = api.post("/api/v1/publish", &body).await.unwrap();
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["queued_for"], 1);
    match sub.expect_packet(T).await.unwrap() {
        Packet::Publish(p) => {
            assert_eq!(p.topic.as_str(), "api/x/y");
            assert_eq!(&p.payload[..], b"from the API");
            assert_eq!(p.qos, QoS::AtLeastOnce);
        }
        other => panic!("expected the PUBLISH, got {other:?}"),
    }

    let r = api.ok("/api/v1/retained?filter=api/%23").await.unwrap();
    assert_eq!(r["total"], 1, "{r}");
    assert_eq!(r["retained"][0]["topic"], "api/x/y");
    assert_eq!(r["retained"][0]["payload"], "from the API");
    let (status, v) = api.delete("/api/v1/retained/api%2Fx%2Fy").await.unwrap();
    assert_eq!(status, 200, "{v}");
    let r = api.ok("/api/v1/retained").await.unwrap();
    assert_eq!(r["total"], 0, "{r}");
    let (status, _) = api.delete("/api/v1/retained/api%2Fx%2Fy").await.unwrap();
    assert_eq!(status, 404);
    // Deleting does not publish anything to subscribers.
    assert!(matches!(
        sub.recv(Duration::from_millis(300)).await.unwrap(),
        sluice_tests::Recv::Timeout
    ));

    for bad in [
        json!({ "topic": "api/+", "payload": "x" }),
        json!({ "topic": "", "payload": "x" }),
        json!({ "topic": "$SYS/broker/x", "payload": "x" }),
        json!({ "topic": "api/x", "qos": 3 }),
        json!({ "topic": "api/x", "payload": "x", "payload_base64": "eA==" }),
        json!({ "payload": "no topic" }),
        json!({ "topic": "api/x", "colour": "red" }),
    ] {
        let (status, v) = api.post("/api/v1/publish", &bad).await.unwrap();
        assert_eq!(status, 400, "{bad}: {v}");
        assert!(v["error"].is_string(), "{bad}: {v}");
    }
    let (status, v) = api
        .call_text(reqwest::Method::POST, "/api/v1/publish", None)
        .await
        .unwrap();
    assert_eq!(status, 400, "no body: {v}");
    let (status, v) = api.get("/api/v1/retained?filter=a/%23/b").await.unwrap();
    assert_eq!(status, 400, "{v}");
    let (status, v) = api.delete("/api/v1/retained/a%2F%2B").await.unwrap();
    assert_eq!(status, 400, "a filter is not a topic: {v}");
}

/// `GET /api/v1/subscriptions?client=&filter=` and `GET /api/v1/shared-groups`.
#[tokio::test]
async fn subscriptions_and_shared_groups() {
    let broker = Broker::start();
    let api = admin(&broker);
    let mut w1 = client(&broker, Protocol::V5, "worker-1", None, None).await;
    let mut w2 = client(&broker, Protocol::V311, "worker-2", None, None).await;
    subscribe(&mut w1, "$share/jobs/work/+", QoS::AtLeastOnce).await;
    subscribe(&mut w2, "$share/jobs/work/+", QoS::AtLeastOnce).await;
    subscribe(&mut w1, "status/#", QoS::AtMostOnce).await;

    let all = api.ok("/api/v1/subscriptions").await.unwrap();
    assert_eq!(all["total"], 3, "{all}");
    let mine = api
        .ok("/api/v1/subscriptions?client=worker-1")
        .await
        .unwrap();
    let filters: Vec<&str> = mine["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["filter"].as_str().unwrap())
        .collect();
    assert_eq!(filters, ["$share/jobs/work/+", "status/#"]);
    let shared = api
        .ok("/api/v1/subscriptions?filter=%24share%2Fjobs%2Fwork%2F%2B")
        .await
        .unwrap();
    assert_eq!(shared["total"], 2, "{shared}");
    assert_eq!(shared["subscriptions"][0]["share_group"], "jobs");
    let (status, _) = api
        .get("/api/v1/subscriptions?filter=a/%23/b")
        .await
        .unwrap();
    assert_eq!(status, 400);
    let page = api
        .ok("/api/v1/subscriptions?limit=1&offset=1")
        .await
        .unwrap();
    assert_eq!(page["subscriptions"].as_array().unwrap().len(), 1);

    let groups = api.ok("/api/v1/shared-groups").await.unwrap();
    let g = &groups["groups"][0];
    assert_eq!(g["group"], "jobs", "{groups}");
    assert_eq!(g["filter"], "work/+");
    assert_eq!(g["members"], json!(["worker-1", "worker-2"]));
    assert_eq!(g["queue"]["messages"], 0);
    assert!(g["strategy"].is_string(), "{g}");
}

/// With `admin.token` set, every `/api/` call needs it (401 without or wrong, JSON error);
/// health, readiness and metrics stay open.
#[tokio::test]
async fn the_token_guards_the_api() {
    let broker = Broker::start_with(BrokerOpts {
        env: vec![("SLUICE__ADMIN__TOKEN".into(), "t0ken-abc".into())],
        ..Default::default()
    })
    .unwrap();
    let api = admin(&broker);
    for path in ["/api/v1/clients", "/api/v1/retained", "/api/v1/stream"] {
        let (status, v) = api.get(path).await.unwrap();
        assert_eq!(status, 401, "{path} without a token: {v}");
        assert!(v["error"].is_string());
        let (status, _) = api.with_token("wrong").get(path).await.unwrap();
        assert_eq!(status, 401, "{path} with a wrong token");
    }
    let (status, _) = api
        .post("/api/v1/publish", &json!({ "topic": "t", "payload": "x" }))
        .await
        .unwrap();
    assert_eq!(status, 401);
    let authed = api.with_token("t0ken-abc");
    assert_eq!(authed.ok("/api/v1/clients").await.unwrap()["total"], 0);
    let (status, _) = authed
        .post("/api/v1/publish", &json!({ "topic": "t", "payload": "x" }))
        .await
        .unwrap();
    assert_eq!(status, 200);
    api.ok("/healthz").await.unwrap();
    api.ok("/readyz").await.unwrap();
    let (status, _) = api
        .call_text(reqwest::Method::GET, "/metrics", None)
        .await
        .unwrap();
    assert_eq!(status, 200);
}

/// A non-loopback `admin.bind` without a token: start-up refused, naming key, value, reason.
#[test]
fn a_public_admin_bind_without_a_token_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_sluice(
        &["--bind", "127.0.0.1:0"],
        &[("SLUICE__ADMIN__BIND", "0.0.0.0:0")],
        dir.path(),
    )
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("admin.bind = 0.0.0.0:0"), "{err}");
    assert!(err.contains("admin.token"), "{err}");
}

/// The dashboard in a real browser (headless Chromium over WebDriver): the live connection
/// count shows the test's connected clients, busiest topics and slowest consumers fill in
/// under traffic, and the Disconnect button kicks a client (it sees DISCONNECT 0x98) and its
/// row goes. The screenshot is kept as `target/test-artefacts/dashboard.png`.
#[tokio::test]
async fn the_dashboard_shows_live_clients_and_disconnects_one() {
    let broker = Broker::start();
    let api = admin(&broker);
    let mut kept = Vec::new();
    for i in 0..3 {
        kept.push(
            client(
                &broker,
                Protocol::V5,
                &format!("dash-{i}"),
                Some("operator"),
                None,
            )
            .await,
        );
    }
    // A subscriber that never reads or acknowledges (once its inflight window is full its
    // queue grows: the slowest consumer) and a QoS 1 publisher spread over a few topics (its
    // PUBACKs are left unread: a few bytes each), until the end of the test.
    let mut slow = client(&broker, Protocol::V311, "dash-slow-reader", None, None).await;
    subscribe(&mut slow, "sensors/#", QoS::AtLeastOnce).await;
    let mut publisher = client(&broker, Protocol::V311, "dash-publisher", None, None).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = stop.clone();
    let traffic = tokio::spawn(async move {
        let mut i = 0u32;
        while !stopped.load(std::sync::atomic::Ordering::Relaxed) && i < 1_000_000 {
            let topic = format!(
                "sensors/line-{}/temperature",
                [1, 1, 1, 2, 2, 3][i as usize % 6]
            );
            let pkid = (i % 60_000) as u16 + 1;
            let p = packets::publish(&topic, QoS::AtLeastOnce, pkid, format!("{{\"t\":{i}}}"));
            if publisher.send(&Packet::Publish(p)).await.is_err() {
                break;
            }
            i += 1;
            if i.is_multiple_of(20) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        publisher
    });

    let driver = ChromeDriver::start().await.unwrap();
    let profile = tempfile::tempdir().unwrap();
    let browser = driver.session(profile.path()).await.unwrap();
    browser.goto(&format!("{}/", api.base())).await.unwrap();
    let connected = kept.len() + 2;
    browser
        .wait_until(
            "the live connection count shows the connected test clients",
            &format!("return document.getElementById('connections').textContent === '{connected}'"),
            T,
        )
        .await
        .unwrap();
    browser
        .wait_until(
            "a row per client, the busiest topic and the slow reader shown",
            "return document.querySelectorAll('#clients tbody tr[data-client]').length === 5 \
             && document.querySelector('#topics tbody td')?.textContent === 'sensors/line-1/temperature' \
             && document.querySelector('#slowest tbody td')?.textContent === 'dash-slow-reader'",
            T,
        )
        .await
        .unwrap();

    let button = browser
        .find("#clients button.kick[data-client='dash-1']")
        .await
        .unwrap();
    browser.click(&button).await.unwrap();
    kept[1]
        .expect_disconnect(T, 0x98, "kicked from the dashboard")
        .await
        .unwrap();
    // Gone from the page, also after the next snapshots from the broker.
    let gone = format!(
        "return !document.querySelector(\"#clients tr[data-client='dash-1']\") \
         && document.getElementById('connections').textContent === '{}'",
        connected - 1
    );
    browser
        .wait_until("dash-1's row goes", &gone, T)
        .await
        .unwrap();
    api.wait_for("/api/v1/clients", T, |v| v["total"] == connected - 1)
        .await
        .unwrap();
    browser
        .eval(
            "window.__seen = document.getElementById('uptime').textContent; return null;",
            json!([]),
        )
        .await
        .unwrap();
    browser
        .wait_until(
            "a later snapshot",
            "return document.getElementById('uptime').textContent !== window.__seen",
            T,
        )
        .await
        .unwrap();
    browser
        .wait_until("still gone after it", &gone, T)
        .await
        .unwrap();

    let shot = sluice_tests::workspace_root().join("target/test-artefacts/dashboard.png");
    browser.screenshot(&shot).await.unwrap();
    assert!(
        std::fs::metadata(&shot).unwrap().len() > 10_000,
        "a real screenshot"
    );
    browser.quit().await.unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    drop(traffic.await.unwrap());
}

/// `GET /api/v1/clients/{id}` names the `[[shaping]]` rule in force for a connected client
/// (first match, by client id glob or username) and null for one no rule matches.
#[tokio::test]
async fn a_clients_shaping_rule_is_shown() {
    let broker = Broker::start_with(BrokerOpts {
        config: "[[shaping]]\nusername = \"ops\"\nmessages_per_second = 50\n\n\
                 [[shaping]]\nclient_id = \"sms-*\"\nmessages_per_second = 300\nburst = 20\n\
                 overflow = \"drop_oldest\"\n"
            .into(),
        ..Default::default()
    })
    .unwrap();
    let api = admin(&broker);
    let _sms = client(&broker, Protocol::V5, "sms-1", None, None).await;
    let _ops = client(&broker, Protocol::V311, "sms-2", Some("ops"), None).await;
    let _other = client(&broker, Protocol::V5, "inventory", None, None).await;
    let rule = api.ok("/api/v1/clients/sms-1").await.unwrap()["shaping_rule"].clone();
    assert_eq!(rule["index"], 1, "{rule}");
    assert_eq!(rule["client_id"], "sms-*", "{rule}");
    assert_eq!(rule["messages_per_second"], 300.0, "{rule}");
    assert_eq!(rule["burst"], 20, "{rule}");
    assert_eq!(rule["overflow"], "drop_oldest", "{rule}");
    let first = api.ok("/api/v1/clients/sms-2").await.unwrap()["shaping_rule"].clone();
    assert_eq!(first["index"], 0, "the first matching rule wins: {first}");
    assert_eq!(first["username"], "ops", "{first}");
    assert_eq!(
        first["burst"], 3,
        "default burst: 1/20 s of the rate, {first}"
    );
    let none = api.ok("/api/v1/clients/inventory").await.unwrap();
    assert!(none["shaping_rule"].is_null(), "{none}");
    assert_eq!(none["dropped"], 0, "{none}");
    assert_eq!(none["drops"]["queue_full_oldest"], 0, "{none}");
}
