//! Tests of the configuration: file, environment overrides, validation messages.
use super::*;

fn load_toml(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let dir = std::env::temp_dir().join(format!("sluice-config-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sluice.toml");
    std::fs::write(&path, text).unwrap();
    let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    let r = Config::load_from(Some(&path), env);
    std::fs::remove_dir_all(&dir).unwrap();
    r
}

#[test]
fn empty_file_gives_defaults() {
    assert_eq!(load_toml("", &[]).unwrap(), Config::default());
}

#[test]
fn file_values_and_env_override() {
    let c = load_toml(
        "[mqtt]\nmax_keepalive = 30\n[[listeners]]\nbind = \"127.0.0.1:0\"\n",
        &[
            ("SLUICE__MQTT__MAX_KEEPALIVE", "10"),
            ("SLUICE__AUTH__ALLOW_ANONYMOUS", "false"),
        ],
    )
    .unwrap();
    assert_eq!(c.mqtt.max_keepalive, 10);
    assert!(!c.auth.allows_anonymous());
    assert_eq!(c.listeners[0].bind, "127.0.0.1:0");
}

#[test]
fn unknown_key_is_an_error_naming_it() {
    let e = load_toml("[mqtt]\nmax_keepalivee = 30\n", &[]).unwrap_err();
    assert_eq!(e.key, "mqtt.max_keepalivee", "{e}");
    assert_eq!(e.value, "30", "{e}");
}

#[test]
fn wrong_type_names_key_and_value() {
    let e = load_toml("[mqtt]\nmax_packet_size = \"big\"\n", &[]).unwrap_err();
    assert_eq!(e.key, "mqtt.max_packet_size", "{e}");
    assert!(e.to_string().contains("big"), "{e}");
}

#[test]
fn out_of_range_value_names_key_value_reason() {
    let e = load_toml("[mqtt]\nreceive_maximum = 0\n", &[]).unwrap_err();
    assert_eq!(
        (e.key.as_str(), e.value.as_str()),
        ("mqtt.receive_maximum", "0")
    );
    let e = load_toml("[[listeners]]\nbind = \"nowhere\"\n", &[]).unwrap_err();
    assert_eq!(e.key, "listeners[0].bind");
}

#[test]
fn effective_config_round_trips_through_toml() {
    let c = Config::default();
    let back: Config = toml::from_str(&c.to_toml()).unwrap();
    // The printed configuration spells out the resolved allow_anonymous and queue bounds.
    let mut expected = c.clone();
    expected.auth.allow_anonymous = Some(c.auth.allows_anonymous());
    expected.mqtt.max_queued_messages = Some(DISK_MAX_QUEUED_MESSAGES);
    expected.mqtt.max_queued_bytes = Some(4 << 30);
    assert_eq!(back, expected);
}

#[test]
fn persistence_and_overflow_keys_are_validated() {
    let c = load_toml(
        "[mqtt]\nqueue_full_policy = \"reject\"\n[persistence]\nqueue_memory_bytes = 4096\ncompact_min_bytes = 1048576\n",
        &[],
    )
    .unwrap();
    assert_eq!(c.mqtt.queue_full_policy, QueueFullPolicy::Reject);
    assert_eq!(c.persistence.queue_memory_bytes, 4096);
    let e = load_toml("[mqtt]\nqueue_full_policy = \"block\"\n", &[]).unwrap_err();
    assert!(e.key.contains("queue_full_policy"), "{e}");
    let e = load_toml("[persistence]\nqueue_memory_bytes = 10\n", &[]).unwrap_err();
    assert_eq!(e.key, "persistence.queue_memory_bytes");
    let e = load_toml("[persistence]\ncompact_min_bytes = 1\n", &[]).unwrap_err();
    assert_eq!(e.key, "persistence.compact_min_bytes");
    let c = load_toml("[persistence]\nlazy_commit = 250\n", &[]).unwrap();
    assert_eq!(c.persistence.lazy_commit, 250);
    for bad in ["0", "1001"] {
        let e = load_toml(&format!("[persistence]\nlazy_commit = {bad}\n"), &[]).unwrap_err();
        assert_eq!(e.key, "persistence.lazy_commit");
    }
    let c = load_toml("", &[("SLUICE__PERSISTENCE__QUEUE_MEMORY_BYTES", "65536")]).unwrap();
    assert_eq!(c.persistence.queue_memory_bytes, 65536);
    assert_eq!(
        (c.max_queued_messages(), c.max_queued_bytes()),
        (10_000_000, 4 << 30),
        "durable (the default): queue bounds sized for queues on disk"
    );
    assert_eq!(
        c.mqtt.max_queued_memory_bytes,
        64 << 20,
        "memory stays bounded"
    );
    let c = load_toml("[persistence]\nmode = \"relaxed\"\n", &[]).unwrap();
    assert_eq!(c.max_queued_messages(), 10_000_000, "relaxed: on disk too");
    let c = load_toml("[persistence]\nmode = \"memory\"\n", &[]).unwrap();
    assert_eq!(
        (c.max_queued_messages(), c.max_queued_bytes()),
        (100_000, 64 << 20),
        "memory mode: sized for memory"
    );
    let c = load_toml(
        "[mqtt]\nmax_queued_messages = 5\nmax_queued_bytes = 2097152\n",
        &[],
    )
    .unwrap();
    assert_eq!(
        (c.max_queued_messages(), c.max_queued_bytes()),
        (5, 2 << 20)
    );
    let e = load_toml("[mqtt]\nmax_queued_messages = 0\n", &[]).unwrap_err();
    assert_eq!(e.key, "mqtt.max_queued_messages");
    let e = load_toml("[mqtt]\nmax_queued_memory_bytes = 1024\n", &[]).unwrap_err();
    assert_eq!(
        (e.key.as_str(), e.value.as_str()),
        ("mqtt.max_queued_memory_bytes", "1024")
    );
}

#[test]
fn limits_are_validated() {
    let e = load_toml("[limits]\nconnect_timeout = 0\n", &[]).unwrap_err();
    assert_eq!(e.key, "limits.connect_timeout");
    let e = load_toml("[limits]\npublish_bytes_rate = 10\n", &[]).unwrap_err();
    assert_eq!(e.key, "limits.publish_bytes_rate");
    let c = load_toml(
        "[limits]\npublish_rate = 50\n",
        &[("SLUICE__LIMITS__MAX_CONNECTIONS", "7")],
    )
    .unwrap();
    assert_eq!((c.limits.publish_rate, c.limits.max_connections), (50, 7));
    let e = load_toml("[mqtt]\nshared_subscription_strategy = \"fastest\"\n", &[]).unwrap_err();
    assert!(e.key.contains("shared_subscription_strategy"), "{e}");
}

#[test]
fn shared_group_orphan_keys_are_validated() {
    let c = Config::default();
    assert_eq!(
        (
            c.mqtt.shared_group_orphan_policy,
            c.mqtt.shared_group_orphan_expiry_seconds
        ),
        (OrphanPolicy::Keep, 86_400)
    );
    let c = load_toml(
        "[mqtt]\nshared_group_orphan_policy = \"drop\"\nshared_group_orphan_expiry_seconds = 60\n",
        &[],
    )
    .unwrap();
    assert_eq!(c.mqtt.shared_group_orphan_policy, OrphanPolicy::Drop);
    assert_eq!(c.mqtt.shared_group_orphan_expiry_seconds, 60);
    let e = load_toml("[mqtt]\nshared_group_orphan_policy = \"forget\"\n", &[]).unwrap_err();
    assert!(e.key.contains("shared_group_orphan_policy"), "{e}");
    let e = load_toml("[mqtt]\nshared_group_orphan_expiry_seconds = 0\n", &[]).unwrap_err();
    assert_eq!(
        (e.key.as_str(), e.value.as_str()),
        ("mqtt.shared_group_orphan_expiry_seconds", "0")
    );
    let c = load_toml(
        "",
        &[("SLUICE__MQTT__SHARED_GROUP_ORPHAN_EXPIRY_SECONDS", "5")],
    )
    .unwrap();
    assert_eq!(c.mqtt.shared_group_orphan_expiry_seconds, 5);
}

#[test]
fn tls_and_websocket_tables_are_validated() {
    let e = load_toml(
        "[[listeners]]\nbind = \"127.0.0.1:0\"\ntls = { cert = \"/nonexistent/s.pem\", key = \"k\" }\n",
        &[],
    )
    .unwrap_err();
    assert_eq!(e.key, "listeners[0].tls.cert", "{e}");
    assert_eq!(e.value, "/nonexistent/s.pem");
    let e = load_toml(
        "[[listeners]]\nbind = \"127.0.0.1:0\"\ntls = { cert = \"c\", key = \"k\", colour = 1 }\n",
        &[],
    )
    .unwrap_err();
    assert!(e.to_string().contains("colour"), "{e}");
    let e = load_toml(
        "[[listeners]]\nbind = \"127.0.0.1:0\"\nwebsocket = { path = \"mqtt\" }\n",
        &[],
    )
    .unwrap_err();
    assert_eq!(e.key, "listeners[0].websocket.path", "{e}");
    let c = load_toml(
        "[[listeners]]\nbind = \"127.0.0.1:0\"\nwebsocket = {}\n",
        &[],
    )
    .unwrap();
    assert_eq!(c.listeners[0].websocket.as_ref().unwrap().path, "/mqtt");
}

#[test]
fn delayed_and_priority_keys_are_read_and_validated() {
    let c = load_toml(
        "[mqtt]\nmax_delay_seconds = 60\n[[mqtt.priorities]]\nfilter = \"orders/+/vip/#\"\npriority = 10\n[limits]\nmax_delayed_messages = 5\n",
        &[],
    )
    .unwrap();
    assert_eq!(c.mqtt.max_delay_seconds, 60);
    assert_eq!(c.limits.max_delayed_messages, 5);
    assert_eq!(
        c.mqtt.priorities,
        vec![PriorityRule {
            filter: "orders/+/vip/#".into(),
            priority: 10
        }]
    );
    assert_eq!(Config::default().mqtt.max_delay_seconds, 4_294_967);
    assert_eq!(Config::default().limits.max_delayed_messages, 1_000_000);
    let e = load_toml("[mqtt]\nmax_delay_seconds = 4294968\n", &[]).unwrap_err();
    assert_eq!(e.key, "mqtt.max_delay_seconds", "{e}");
    let e = load_toml("[mqtt]\nmax_delay_seconds = 0\n", &[]).unwrap_err();
    assert_eq!(e.key, "mqtt.max_delay_seconds", "{e}");
    let e = load_toml("[limits]\nmax_delayed_messages = 0\n", &[]).unwrap_err();
    assert_eq!(e.key, "limits.max_delayed_messages", "{e}");
    let bad = |filter: &str| {
        load_toml(
            &format!("[[mqtt.priorities]]\nfilter = \"{filter}\"\npriority = 1\n"),
            &[],
        )
        .unwrap_err()
    };
    assert_eq!(bad("a/#/b").key, "mqtt.priorities[0].filter");
    assert_eq!(bad("$share/g/a").key, "mqtt.priorities[0].filter");
    let e = load_toml(
        "[[mqtt.priorities]]\nfilter = \"a\"\npriority = 1\n[[mqtt.priorities]]\nfilter = \"a\"\npriority = 2\n",
        &[],
    )
    .unwrap_err();
    assert_eq!(e.key, "mqtt.priorities[1].filter", "{e}");
    let e = load_toml("[[mqtt.priorities]]\nfilter = \"a\"\npriority = 256\n", &[]).unwrap_err();
    assert!(e.key.starts_with("mqtt.priorities"), "{e}");
}

#[test]
fn admin_listener_defaults_to_loopback_and_can_be_turned_off() {
    let c = Config::default();
    assert_eq!(c.admin.bind, "127.0.0.1:18083");
    assert!(c.admin.addr().is_some());
    let off = load_toml("[admin]\nbind = \"\"\n", &[]).unwrap();
    assert_eq!(off.admin.addr(), None);
    let env = load_toml("", &[("SLUICE__ADMIN__BIND", "127.0.0.1:0")]).unwrap();
    assert_eq!(env.admin.bind, "127.0.0.1:0");
}

#[test]
fn a_non_loopback_admin_bind_needs_a_token() {
    let e = load_toml("[admin]\nbind = \"0.0.0.0:18083\"\n", &[]).unwrap_err();
    assert_eq!(e.key, "admin.bind", "{e}");
    assert_eq!(e.value, "0.0.0.0:18083", "{e}");
    assert!(e.reason.contains("admin.token"), "{e}");
    let ok = load_toml(
        "[admin]\nbind = \"0.0.0.0:18083\"\ntoken = \"s3cret\"\n",
        &[],
    )
    .unwrap();
    assert!(ok.admin.token_required());
    assert!(
        !ok.to_toml().contains("s3cret"),
        "the token is not printed by --check-config"
    );
    let e = load_toml("[admin]\nbind = \"localhost:1\"\n", &[]).unwrap_err();
    assert_eq!(e.key, "admin.bind", "{e}");
}

const BRIDGE: &str = r#"
[[bridges]]
name = "cloud"
address = "127.0.0.1:1883"
protocol = "3.1.1"
client_id = "edge-1"
topics = [ { filter = "sensors/#", direction = "out", qos = 1, local_prefix = "", remote_prefix = "site1/" },
           { filter = "commands/#", direction = "in", qos = 1 } ]
"#;

#[test]
fn a_bridge_as_the_issue_writes_it() {
    let c = load_toml(BRIDGE, &[]).unwrap();
    let b = &c.bridges[0];
    assert_eq!((b.name.as_str(), b.is_v5()), ("cloud", false));
    assert_eq!(b.remote_client_id(), "edge-1");
    assert_eq!(b.topics[0].remote_filter(), "site1/sensors/#");
    assert_eq!(b.topics[1].direction(), Direction::In);
    assert_eq!((b.keep_alive, b.max_backoff_seconds), (60, 60));
}

/// Each bad bridge setting is refused at start-up with its key, value and reason.
#[test]
fn bad_bridges_name_key_value_and_reason() {
    let cases: [(&str, &str, &str, &str); 8] = [
        (
            "direction = \"out\"",
            "direction = \"sideways\"",
            "bridges[0].topics[0].direction",
            "sideways",
        ),
        (
            "filter = \"sensors/#\"",
            "filter = \"sensors/#/x\"",
            "bridges[0].topics[0].filter",
            "sensors/#/x",
        ),
        (
            "filter = \"sensors/#\"",
            "filter = \"\"",
            "bridges[0].topics[0].filter",
            "",
        ),
        (
            "address = \"127.0.0.1:1883\"",
            "",
            "bridges[0].address",
            "\"\"",
        ),
        (
            "address = \"127.0.0.1:1883\"",
            "address = \"nohost\"",
            "bridges[0].address",
            "nohost",
        ),
        (
            "protocol = \"3.1.1\"",
            "protocol = \"4\"",
            "bridges[0].protocol",
            "4",
        ),
        (
            "qos = 1, local",
            "qos = 3, local",
            "bridges[0].topics[0].qos",
            "3",
        ),
        (
            "remote_prefix = \"site1/\"",
            "remote_prefix = \"site/+/\"",
            "bridges[0].topics[0].remote_prefix",
            "site/+/",
        ),
    ];
    for (from, to, key, value) in cases {
        let text = BRIDGE.replacen(from, to, 1);
        assert_ne!(text, BRIDGE, "{from}");
        let e = load_toml(&text, &[]).unwrap_err();
        assert_eq!((e.key.as_str(), e.value.as_str()), (key, value), "{e}");
        assert!(!e.reason.is_empty());
    }
    let twice = format!("{BRIDGE}{BRIDGE}");
    let e = load_toml(&twice, &[]).unwrap_err();
    assert_eq!(
        (e.key.as_str(), e.value.as_str()),
        ("bridges[1].name", "cloud"),
        "{e}"
    );
    assert!(e.reason.contains("duplicate"), "{e}");
    let e = load_toml(
        &BRIDGE.replacen("name = \"cloud\"", "name = \"a/b\"", 1),
        &[],
    )
    .unwrap_err();
    assert_eq!(e.key, "bridges[0].name", "{e}");
    let e = load_toml(&BRIDGE.replacen("client_id", "client_idd", 1), &[]).unwrap_err();
    assert!(
        e.key.contains("client_idd"),
        "unknown keys are refused: {e}"
    );
}

#[test]
fn cluster_section_is_optional_and_checked() {
    assert_eq!(load_toml("", &[]).unwrap().cluster, None);
    let c = load_toml(
        "[cluster]\nnats = \"nats://127.0.0.1:4222\"\nnode = \"sluice-1\"\n",
        &[],
    )
    .unwrap();
    let cluster = c.cluster.unwrap();
    assert_eq!(cluster.nats, "nats://127.0.0.1:4222");
    assert_eq!(cluster.node, "sluice-1");
    let e = load_toml("[cluster]\nnats = \"127.0.0.1:4222\"\nnode = \"a\"\n", &[]).unwrap_err();
    assert_eq!(e.key, "cluster.nats", "{e}");
    let e = load_toml(
        "[cluster]\nnats = \"nats://127.0.0.1:4222\"\nnode = \"a.b\"\n",
        &[],
    )
    .unwrap_err();
    assert_eq!(e.key, "cluster.node", "{e}");
    assert_eq!(e.value, "a.b", "{e}");
    let e = load_toml("[cluster]\nnats = \"nats://127.0.0.1:4222\"\n", &[]).unwrap_err();
    assert!(e.to_string().contains("node"), "{e}");
}

#[test]
fn overflow_policies_parse_and_drop_is_an_alias_of_drop_newest() {
    for (text, want) in [
        ("drop", QueueFullPolicy::DropNewest),
        ("drop_newest", QueueFullPolicy::DropNewest),
        ("drop_oldest", QueueFullPolicy::DropOldest),
        ("reject", QueueFullPolicy::Reject),
        (
            "disconnect_slow_consumer",
            QueueFullPolicy::DisconnectSlowConsumer,
        ),
    ] {
        let c = load_toml(
            &format!("[mqtt]\nqueue_full_policy = \"{text}\"\nslow_consumer_seconds = 5\n"),
            &[],
        )
        .unwrap();
        assert_eq!(c.mqtt.queue_full_policy, want);
        assert_eq!(c.mqtt.slow_consumer_seconds, 5);
    }
    let e = load_toml("[mqtt]\nslow_consumer_seconds = 0\n", &[]).unwrap_err();
    assert_eq!(e.key, "mqtt.slow_consumer_seconds");
}

#[test]
fn shaping_rules_are_read_in_order_and_validated() {
    let c = load_toml(
        "[[shaping]]\nclient_id = \"sms-*\"\nmessages_per_second = 300\nbytes_per_second = 0\nburst = 50\n\
         [[shaping]]\ngroup = \"redpacket\"\nmessages_per_second = 200.5\noverflow = \"drop_oldest\"\n\
         [[shaping]]\nusername = \"slow\"\nbytes_per_second = 1000\n",
        &[],
    )
    .unwrap();
    assert_eq!(c.shaping.len(), 3);
    assert_eq!(c.shaping[0].client_id.as_deref(), Some("sms-*"));
    assert_eq!(c.shaping[0].messages_per_second, 300.0);
    assert_eq!(c.shaping[0].burst(), 50);
    assert_eq!(c.shaping[1].group.as_deref(), Some("redpacket"));
    assert_eq!(c.shaping[1].overflow, Some(QueueFullPolicy::DropOldest));
    assert_eq!(c.shaping[1].burst(), 11, "default: a twentieth of a second");
    assert_eq!(c.shaping[2].burst(), 1);
    for (text, key, reason) in [
        ("messages_per_second = 1\n", "shaping[0]", "exactly one"),
        (
            "client_id = \"a\"\ngroup = \"g\"\n",
            "shaping[0]",
            "exactly one",
        ),
        (
            "client_id = \"a\"\nmessages_per_second = -1\n",
            "shaping[0].messages_per_second",
            ">= 0",
        ),
        (
            "client_id = \"a\"\nbytes_per_second = nan\n",
            "shaping[0].bytes_per_second",
            "finite",
        ),
        (
            "client_id = \"a\"\nburst = 0\n",
            "shaping[0].burst",
            "at least 1",
        ),
        ("group = \"a/b\"\n", "shaping[0].group", "cannot contain"),
        ("client_id = \"\"\n", "shaping[0].client_id", "empty"),
    ] {
        let e = load_toml(&format!("[[shaping]]\n{text}"), &[]).unwrap_err();
        assert_eq!(e.key, key, "{text}: {e}");
        assert!(e.reason.contains(reason), "{text}: {e}");
    }
    let e = load_toml("[[shaping]]\nclient_id = \"a\"\nrate = 3\n", &[]).unwrap_err();
    assert!(e.reason.contains("unknown"), "{e}");
}
