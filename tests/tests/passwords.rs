//! Password authentication (issue 6) with files made by the real `mosquitto_passwd` and by
//! `sluice passwd`, checked with mosquitto clients: right credentials connect, wrong ones get
//! CONNACK 0x86 / return code 4 (3.2.2.3), and the password never reaches the log.

use std::process::Command;
use std::time::Duration;

use sluice_tests::{mosquitto_pub, run_bounded, sluice_bin, Broker, BrokerOpts};

fn mosquitto_passwd(file: &std::path::Path, user: &str, password: &str) {
    let mut cmd = Command::new("/usr/bin/mosquitto_passwd");
    // -c (create) must come first and only for a new file.
    if !file.exists() {
        cmd.arg("-c");
    }
    cmd.arg("-b").arg(file).args([user, password]);
    let out = run_bounded(cmd, Duration::from_secs(10)).unwrap();
    assert!(
        out.status.success(),
        "mosquitto_passwd: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn broker_with_password_file(make: impl FnOnce(&std::path::Path)) -> Broker {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("passwd");
    make(&path);
    let text = std::fs::read_to_string(&path).unwrap();
    Broker::start_with(BrokerOpts {
        config: "[auth]\npassword_file = \"passwd\"\n".into(),
        files: vec![("passwd".into(), text)],
        ..Default::default()
    })
    .unwrap()
}

fn publish_as(broker: &Broker, version: &str, user: &str, password: &str) -> Result<(), String> {
    mosquitto_pub(
        broker,
        &[
            "-V", version, "-u", user, "-P", password, "-t", "t", "-m", "x",
        ],
    )
    .map(|_| ())
    .map_err(|e| e.to_string())
}

/// A `$7$` file from Mosquitto 2's own tool works as it is; anonymous clients are refused by
/// default once a password file is set.
#[test]
fn mosquitto_passwd_file_is_accepted_and_wrong_passwords_refused() {
    let broker = broker_with_password_file(|p| {
        mosquitto_passwd(p, "alice", "alice-secret-pw");
        mosquitto_passwd(p, "bob", "bob-pw");
    });
    for v in ["mqttv311", "mqttv5"] {
        publish_as(&broker, v, "alice", "alice-secret-pw").unwrap();
        publish_as(&broker, v, "bob", "bob-pw").unwrap();
        let e = publish_as(&broker, v, "alice", "wrong").unwrap_err();
        assert!(
            e.to_lowercase().contains("bad user name or password") || e.contains("Bad username"),
            "{v}: {e}"
        );
        let e = mosquitto_pub(&broker, &["-V", v, "-t", "t", "-m", "x"]).unwrap_err();
        assert!(
            e.to_string().to_lowercase().contains("not authori"),
            "{v}: {e}"
        );
    }
    let log = broker.log().join("\n");
    assert!(
        !log.contains("alice-secret-pw") && !log.contains("wrong"),
        "no password in the log"
    );
    assert!(
        log.contains("bad user name or password"),
        "the refusal is logged"
    );
}

/// `sluice passwd FILE USER --stdin` writes an argon2id entry the broker accepts.
#[test]
fn sluice_passwd_entries_are_accepted() {
    let broker = broker_with_password_file(|p| {
        let mut cmd = Command::new(sluice_bin());
        cmd.arg("passwd").arg(p).args(["carol", "--stdin"]);
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"carol-pw\n")
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(std::fs::read_to_string(p)
            .unwrap()
            .starts_with("carol:$argon2id$"));
    });
    publish_as(&broker, "mqttv5", "carol", "carol-pw").unwrap();
    assert!(publish_as(&broker, "mqttv311", "carol", "carol-pW").is_err());
}
