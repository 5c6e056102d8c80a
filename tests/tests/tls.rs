//! MQTT over TLS and mutual TLS (issue 4), end to end against the real binary: mosquitto
//! clients with `--cafile` (and `--cert`/`--key`), rumqttc with rustls, Paho, refusals at the
//! handshake, identity as username feeding the ACL, certificate reload, and start-up errors for
//! bad files.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sluice_tests::clients::log_barrier;
use sluice_tests::{
    certs_dir, gen_certs, mosquitto_pub_at, mosquitto_pub_raw, mosquitto_sub_at, paho_at,
    run_sluice, Broker, BrokerOpts,
};

const T: Duration = Duration::from_secs(10);

fn cert(name: &str) -> String {
    certs_dir().join(name).display().to_string()
}

/// A broker with one TLS listener (`tls` is the inside of its `tls = { ... }` table) and one
/// plain listener, both on port 0.
fn tls_broker(tls: &str, extra: &str, files: Vec<(String, String)>) -> Broker {
    Broker::start_with(BrokerOpts {
        config: format!(
            "[[listeners]]\nbind = \"127.0.0.1:0\"\n\n[[listeners]]\nbind = \"127.0.0.1:0\"\ntls = {{ {tls} }}\n\n{extra}"
        ),
        files,
        no_bind: true,
        ..Default::default()
    })
    .expect("start sluice")
}

fn server_tls() -> String {
    format!(
        "cert = \"{}\", key = \"{}\"",
        cert("server.pem"),
        cert("server.key")
    )
}

fn mutual_tls() -> String {
    format!(
        "{}, client_ca = \"{}\", require_client_cert = true",
        server_tls(),
        cert("ca.pem")
    )
}

/// Subscribes with mosquitto_sub (`sub_args`), publishes one message with mosquitto_pub
/// (`pub_args`), returns what the subscriber printed.
fn round_trip(port: u16, sub_args: &[&str], pub_args: &[&str], topic: &str) -> String {
    let mut args = sub_args.to_vec();
    args.extend(["-t", topic, "-C", "1", "-v"]);
    let sub = mosquitto_sub_at(port, &args).unwrap();
    // mosquitto_sub has no "subscribed" signal; retained messages make the order irrelevant.
    let mut pargs = pub_args.to_vec();
    pargs.extend(["-t", topic, "-m", "over-tls", "-r", "-q", "1"]);
    mosquitto_pub_at(port, &pargs).unwrap();
    let out = sub.finish(T).unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn mosquitto_clients_over_tls_with_cafile_at_311_and_5() {
    let broker = tls_broker(&server_tls(), "", vec![]);
    let port = broker.listener_addr("tls").unwrap().port();
    let ca = cert("ca.pem");
    for v in ["mqttv311", "mqttv5"] {
        let topic = format!("tls/{v}");
        let out = round_trip(
            port,
            &["--cafile", &ca, "-V", v],
            &["--cafile", &ca, "-V", v],
            &topic,
        );
        assert_eq!(out.trim(), format!("{topic} over-tls"), "{v}");
    }
    // Host name checks pass for localhost too (the certificate's DNS name).
    let out = mosquitto_pub_at(
        port,
        &["-h", "localhost", "--cafile", &ca, "-t", "x", "-m", "y"],
    );
    assert!(out.is_ok(), "{out:?}");
    // A plain MQTT client on the TLS port gets nowhere; the plain listener still works.
    let plain = mosquitto_pub_raw(port, &["-t", "x", "-m", "y"]).unwrap();
    assert!(!plain.status.success());
    let tcp = broker.listener_addr("tcp").unwrap().port();
    mosquitto_pub_at(tcp, &["-t", "x", "-m", "y"]).unwrap();
}

#[test]
fn mutual_tls_accepts_the_client_certificate_and_refuses_none_or_another_ca() {
    let broker = tls_broker(&mutual_tls(), "", vec![]);
    let port = broker.listener_addr("tls").unwrap().port();
    let (ca, client, key) = (cert("ca.pem"), cert("client.pem"), cert("client.key"));
    let with_cert = ["--cafile", &ca, "--cert", &client, "--key", &key];
    let out = round_trip(port, &with_cert, &with_cert, "mtls/a");
    assert_eq!(out.trim(), "mtls/a over-tls");

    // No certificate: refused at the handshake, and the log says who and why.
    let from = broker.log_len();
    let none = mosquitto_pub_raw(port, &["--cafile", &ca, "-t", "x", "-m", "y"]).unwrap();
    assert!(
        !none.status.success(),
        "a client without certificate got in"
    );
    let line = broker
        .wait_log_from(from, "TLS handshake failed", T)
        .unwrap();
    assert!(line.contains("peer=127.0.0.1:"), "{line}");
    assert!(line.contains("no certificate"), "{line}");

    // A certificate from another CA (made by gen-certs just now): refused too.
    let other = tempfile::tempdir().unwrap();
    gen_certs(other.path()).unwrap();
    let (oc, ok) = (
        other.path().join("client.pem").display().to_string(),
        other.path().join("client.key").display().to_string(),
    );
    let from = broker.log_len();
    let foreign = mosquitto_pub_raw(
        port,
        &[
            "--cafile", &ca, "--cert", &oc, "--key", &ok, "-t", "x", "-m", "y",
        ],
    )
    .unwrap();
    assert!(!foreign.status.success(), "a foreign CA's client got in");
    let line = broker
        .wait_log_from(from, "TLS handshake failed", T)
        .unwrap();
    // Same CA name, other key: BadSignature (UnknownIssuer with another name).
    assert!(line.contains("invalid peer certificate"), "{line}");
}

#[test]
fn optional_client_certificate_is_verified_when_given() {
    let tls = format!(
        "{}, client_ca = \"{}\", require_client_cert = false",
        server_tls(),
        cert("ca.pem")
    );
    let broker = tls_broker(&tls, "", vec![]);
    let port = broker.listener_addr("tls").unwrap().port();
    let ca = cert("ca.pem");
    mosquitto_pub_at(port, &["--cafile", &ca, "-t", "x", "-m", "no cert"]).unwrap();
    mosquitto_pub_at(
        port,
        &[
            "--cafile",
            &ca,
            "--cert",
            &cert("client.pem"),
            "--key",
            &cert("client.key"),
            "-t",
            "x",
            "-m",
            "cert",
        ],
    )
    .unwrap();
}

/// The certificate's CN (`device-1`) is the username the ACL sees; the CONNECT username
/// (`-u mallory`) is ignored.
#[test]
fn identity_as_username_feeds_the_acl() {
    let acl = "user device-1\ntopic readwrite devices/device-1/#\n";
    let broker = tls_broker(
        &format!("{}, use_identity_as_username = true", mutual_tls()),
        "[auth]\nacl_file = \"acl.conf\"\n",
        vec![("acl.conf".into(), acl.into())],
    );
    let port = broker.listener_addr("tls").unwrap().port();
    let (ca, client, key) = (cert("ca.pem"), cert("client.pem"), cert("client.key"));
    let id = [
        "--cafile", &ca, "--cert", &client, "--key", &key, "-u", "mallory", "-V", "mqttv5",
    ];
    let out = round_trip(port, &id, &id, "devices/device-1/temp");
    assert_eq!(out.trim(), "devices/device-1/temp over-tls");

    // Outside its section: the subscription is refused (v5 SUBACK 0x87).
    let mut args = id.to_vec();
    args.extend(["-t", "devices/device-2/#", "-C", "1", "-W", "3"]);
    let sub = mosquitto_sub_at(port, &args).unwrap();
    let out = sub.finish(T).unwrap();
    let text = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(
        text.contains("denied") || text.contains("not authorized"),
        "{text}"
    );
}

#[test]
fn identity_as_username_needs_required_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "[[listeners]]\nbind = \"127.0.0.1:0\"\ntls = {{ {}, use_identity_as_username = true }}\n",
        server_tls()
    );
    std::fs::write(dir.path().join("s.toml"), cfg).unwrap();
    let out = run_sluice(&["--config", "s.toml"], &[], dir.path()).unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("listeners[0].tls.use_identity_as_username"),
        "{err}"
    );
}

#[tokio::test]
async fn rumqttc_with_rustls_and_a_client_certificate() {
    use sluice_tests::rumqttc::{
        AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport,
    };
    let broker = tls_broker(&mutual_tls(), "", vec![]);
    let port = broker.listener_addr("tls").unwrap().port();

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in load_certs(&certs_dir().join("ca.pem")) {
        roots.add(c).unwrap();
    }
    let key = {
        use rustls_pki_types::pem::PemObject;
        rustls_pki_types::PrivateKeyDer::from_pem_file(certs_dir().join("client.key")).unwrap()
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(load_certs(&certs_dir().join("client.pem")), key)
        .unwrap();
    let mut opts = MqttOptions::new("rumqttc-tls", "localhost", port);
    opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        Arc::new(config),
    )));
    let (client, mut eventloop) = AsyncClient::new(opts, 10);
    client
        .subscribe("rumqttc/tls", QoS::AtLeastOnce)
        .await
        .unwrap();
    let got = tokio::time::timeout(T, async {
        loop {
            match eventloop.poll().await.unwrap() {
                Event::Incoming(Packet::SubAck(_)) => {
                    client
                        .publish("rumqttc/tls", QoS::AtLeastOnce, false, "secret")
                        .await
                        .unwrap();
                }
                Event::Incoming(Packet::Publish(p)) => return p,
                _ => {}
            }
        }
    })
    .await
    .expect("message within time");
    assert_eq!(got.topic, "rumqttc/tls");
    assert_eq!(&got.payload[..], b"secret");
}

fn load_certs(path: &Path) -> Vec<rustls_pki_types::CertificateDer<'static>> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::pem_file_iter(path)
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// A raw TLS client (tokio-rustls) trusting `ca`, offering ALPN `mqtt`.
async fn tls_connect(
    port: u16,
    ca: &Path,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in load_certs(ca) {
        roots.add(c).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"mqtt".to_vec()];
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}

#[tokio::test]
async fn alpn_mqtt_is_negotiated() {
    let broker = tls_broker(&server_tls(), "", vec![]);
    let port = broker.listener_addr("tls").unwrap().port();
    let s = tls_connect(port, &certs_dir().join("ca.pem"))
        .await
        .unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"mqtt"[..]));
}

#[test]
fn paho_over_tls_and_mutual_tls() {
    let broker = tls_broker(&mutual_tls(), "", vec![]);
    let port = broker.listener_addr("tls").unwrap().port();
    let (ca, client, key) = (cert("ca.pem"), cert("client.pem"), cert("client.key"));
    for v in ["311", "5"] {
        let out = paho_at(
            port,
            "pubsub.py",
            &[
                "--version",
                v,
                "--qos",
                "1",
                "--cafile",
                &ca,
                "--cert",
                &client,
                "--key",
                &key,
            ],
        )
        .unwrap();
        assert!(out.contains("RECEIVED pubsub/x 1 hello at qos 1"), "{out}");
        assert!(out.contains("COUNT 1"), "{out}");
    }
}

/// New server files (from another gen-certs run) are used by new handshakes after SIGHUP, and
/// after a change on disk without a signal; a connection made before keeps working.
#[test]
fn certificate_reload_on_sighup_and_on_file_change() {
    let read = |n: &str| std::fs::read_to_string(certs_dir().join(n)).unwrap();
    let broker = tls_broker(
        "cert = \"server.pem\", key = \"server.key\"",
        "",
        vec![
            ("server.pem".into(), read("server.pem")),
            ("server.key".into(), read("server.key")),
        ],
    );
    let port = broker.listener_addr("tls").unwrap().port();
    let old_ca = cert("ca.pem");
    // The old connection: a subscriber that waits for one message.
    let sub = mosquitto_sub_at(
        port,
        &["--cafile", &old_ca, "-t", "reload/#", "-C", "1", "-v"],
    )
    .unwrap();
    broker
        .wait_log("client connected", T)
        .expect("subscriber connected");

    let new = tempfile::tempdir().unwrap();
    gen_certs(new.path()).unwrap();
    let new_ca = new.path().join("ca.pem").display().to_string();
    // A bad file first: refused on SIGHUP, the old certificate stays.
    std::fs::write(broker.dir.path().join("server.pem"), "garbage\n").unwrap();
    let from = broker.log_len();
    broker.sighup().unwrap();
    broker
        .wait_log_from(from, "not reloaded; the previous one stays in force", T)
        .unwrap();
    mosquitto_pub_at(port, &["--cafile", &old_ca, "-t", "x", "-m", "y"]).unwrap();

    for f in ["server.pem", "server.key"] {
        std::fs::copy(new.path().join(f), broker.dir.path().join(f)).unwrap();
    }
    let from = broker.log_len();
    broker.sighup().unwrap();
    broker
        .wait_log_from(from, "TLS certificate of listeners[1]", T)
        .unwrap();
    let old = mosquitto_pub_raw(port, &["--cafile", &old_ca, "-t", "x", "-m", "y"]).unwrap();
    assert!(
        !old.status.success(),
        "the old CA still verifies the server"
    );
    // A new connection with the new CA publishes; the old connection receives it.
    mosquitto_pub_at(
        port,
        &[
            "--cafile", &new_ca, "-t", "reload/a", "-m", "after", "-q", "1",
        ],
    )
    .unwrap();
    let out = sub.finish(T).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "reload/a after"
    );

    // Without a signal: the original files back on disk are noticed by the watcher.
    let from = broker.log_len();
    for f in ["server.pem", "server.key"] {
        std::fs::copy(certs_dir().join(f), broker.dir.path().join(f)).unwrap();
    }
    broker
        .wait_log_from(from, "changed on disk: reloaded", Duration::from_secs(15))
        .unwrap();
    mosquitto_pub_at(port, &["--cafile", &old_ca, "-t", "x", "-m", "y"]).unwrap();
}

/// Each bad file stops start-up with exit 2, naming the key, the path and what is wrong.
#[test]
fn bad_certificate_files_give_clear_errors_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("garbage.pem"), "this is not PEM\n").unwrap();
    let cases = [
        (
            "cert = \"missing.pem\", key = \"KEY\"",
            "listeners[0].tls.cert = missing.pem",
            "no such file",
        ),
        (
            "cert = \"CERT\", key = \"CLIENTKEY\"",
            "listeners[0].tls.key",
            "does not belong to the certificate",
        ),
        (
            "cert = \"garbage.pem\", key = \"KEY\"",
            "listeners[0].tls.cert = garbage.pem",
            "no certificate found",
        ),
        (
            "cert = \"CERT\", key = \"garbage.pem\"",
            "listeners[0].tls.key = garbage.pem",
            "no private key found",
        ),
        (
            "cert = \"CERT\", key = \"KEY\", client_ca = \"garbage.pem\"",
            "listeners[0].tls.client_ca = garbage.pem",
            "no certificate found",
        ),
    ];
    for (tls, key, reason) in cases {
        let tls = tls
            .replace("CLIENTKEY", &cert("client.key"))
            .replace("CERT", &cert("server.pem"))
            .replace("KEY", &cert("server.key"));
        let cfg = format!("[[listeners]]\nbind = \"127.0.0.1:0\"\ntls = {{ {tls} }}\n");
        std::fs::write(d.join("s.toml"), cfg).unwrap();
        for check in [false, true] {
            let mut args = vec!["--config", "s.toml"];
            if check {
                args.push("--check-config");
            }
            let out = run_sluice(&args, &[], d).unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{tls}: {err}");
            assert!(err.contains(key), "{tls}: expected {key:?} in {err}");
            assert!(err.contains(reason), "{tls}: expected {reason:?} in {err}");
        }
    }
}

/// Failed handshakes are logged with a bound: 40 garbage connections make at most 10 lines
/// (the budget per 10 s), plus a count of the ones left out on the next logged line.
#[tokio::test]
async fn failed_handshakes_are_logged_at_a_bounded_rate() {
    use tokio::io::AsyncWriteExt;
    let broker = tls_broker(&server_tls(), "", vec![]);
    let port = broker.listener_addr("tls").unwrap().port();
    for _ in 0..40 {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
        // The broker logs (or counts) the failure, then closes the socket.
        tokio::time::timeout(T, async {
            let mut buf = [0u8; 64];
            use tokio::io::AsyncReadExt;
            while s.read(&mut buf).await.map(|n| n > 0).unwrap_or(false) {}
        })
        .await
        .expect("the broker closes a failed handshake");
    }
    // Every failure was logged before its socket closed, so before the barrier's line.
    let plain = broker.listener_addr("tcp").unwrap();
    let upto = log_barrier(&broker, plain).await;
    let n = broker.log()[..upto]
        .iter()
        .filter(|l| l.contains("TLS handshake failed"))
        .count();
    assert!((1..=10).contains(&n), "{n} lines logged for 40 failures");
}
