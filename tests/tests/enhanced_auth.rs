//! MQTT 5.0 enhanced authentication (4.12) with SCRAM-SHA-256 against a password file made by
//! `sluice passwd --scram`: the AUTH exchange before CONNACK, re-authentication, wrong
//! passwords and unknown methods. The client side of SCRAM is written here from RFC 5802.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use sluice_tests::clients::{connect_packet, Opts};
use sluice_tests::codec::{
    Auth, AuthProperties, ConnectProperties, Packet, Protocol, ReasonCode, Str,
};
use sluice_tests::{Broker, BrokerOpts, RawClient};

const T: Duration = Duration::from_secs(5);
const METHOD: &str = "SCRAM-SHA-256";

fn hmac(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap();
    m.update(msg);
    m.finalize().into_bytes().to_vec()
}

/// The client's half of SCRAM-SHA-256.
struct ScramClient {
    password: &'static str,
    first_bare: String,
    nonce: String,
    auth_message: String,
    salted: Vec<u8>,
}

impl ScramClient {
    fn new(user: &str, password: &'static str, nonce: &str) -> ScramClient {
        ScramClient {
            password,
            first_bare: format!("n={user},r={nonce}"),
            nonce: nonce.into(),
            auth_message: String::new(),
            salted: Vec::new(),
        }
    }

    fn first(&self) -> Vec<u8> {
        format!("n,,{}", self.first_bare).into_bytes()
    }

    fn last(&mut self, server_first: &[u8]) -> Vec<u8> {
        let sf = std::str::from_utf8(server_first).unwrap().to_owned();
        let mut r = "";
        let mut salt = Vec::new();
        let mut iterations = 0;
        for a in sf.split(',') {
            if let Some(v) = a.strip_prefix("r=") {
                r = v;
            } else if let Some(v) = a.strip_prefix("s=") {
                salt = B64.decode(v).unwrap();
            } else if let Some(v) = a.strip_prefix("i=") {
                iterations = v.parse().unwrap();
            }
        }
        assert!(r.starts_with(&self.nonce), "server nonce extends ours");
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(self.password.as_bytes(), &salt, iterations, &mut salted);
        self.salted = salted.to_vec();
        let client_key = hmac(&salted, b"Client Key");
        let stored = Sha256::digest(&client_key);
        let without_proof = format!("c=biws,r={r}");
        self.auth_message = format!("{},{sf},{without_proof}", self.first_bare);
        let sig = hmac(&stored, self.auth_message.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(sig).map(|(a, b)| a ^ b).collect();
        format!("{without_proof},p={}", B64.encode(proof)).into_bytes()
    }

    /// Checks the server's final `v=` signature: the server knew our keys too.
    fn verify_server(&self, data: &[u8]) {
        let server_key = hmac(&self.salted, b"Server Key");
        let expected = format!(
            "v={}",
            B64.encode(hmac(&server_key, self.auth_message.as_bytes()))
        );
        assert_eq!(
            std::str::from_utf8(data).unwrap(),
            expected,
            "server signature"
        );
    }
}

fn broker_with_scram_user() -> Broker {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("passwd");
    let mut cmd = std::process::Command::new(sluice_tests::sluice_bin());
    cmd.arg("passwd")
        .arg(&file)
        .args(["dev", "--stdin", "--scram"]);
    cmd.stdin(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"s3cret\n").unwrap();
    assert!(child.wait().unwrap().success());
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.starts_with("dev:$scram-sha-256$4096:"), "{text}");
    Broker::start_with(BrokerOpts {
        config: "[auth]\npassword_file = \"passwd\"\n".into(),
        files: vec![("passwd".into(), text)],
        ..Default::default()
    })
    .unwrap()
}

/// The CONNECT of the SCRAM client, starting an exchange with `method` and `data` (4.12).
fn connect_with(method: &str, data: Vec<u8>) -> Packet {
    let o = Opts::default().properties(ConnectProperties {
        authentication_method: Some(Str::try_from(method).unwrap()),
        authentication_data: Some(Bytes::from(data)),
        ..Default::default()
    });
    connect_packet(Protocol::V5, "scram-client", &o)
}

fn auth(reason: ReasonCode, data: Vec<u8>) -> Packet {
    Packet::Auth(Auth {
        reason,
        properties: AuthProperties {
            authentication_method: Some(Str::from_static(METHOD)),
            authentication_data: Some(Bytes::from(data)),
            ..Default::default()
        },
    })
}

fn auth_data(p: Packet, reason: ReasonCode) -> Vec<u8> {
    match p {
        Packet::Auth(a) => {
            assert_eq!(a.reason, reason);
            assert_eq!(a.properties.authentication_method.as_deref(), Some(METHOD));
            a.properties.authentication_data.unwrap().to_vec()
        }
        other => panic!("expected AUTH {reason:?}, got {other:?}"),
    }
}

/// CONNECT with Authentication Method → AUTH 0x18 → AUTH 0x18 → CONNACK 0x00 carrying the
/// server's signature (4.12.0); then re-authentication AUTH 0x19 ... AUTH 0x00 (4.12.1).
#[tokio::test]
async fn scram_sha_256_connect_and_reauthenticate() {
    let broker = broker_with_scram_user();
    let mut c = RawClient::connect(broker.addr, Protocol::V5).await.unwrap();
    let mut scram = ScramClient::new("dev", "s3cret", "fyko+d2lbbFgONRv9qkxdawL");
    c.send(&connect_with(METHOD, scram.first())).await.unwrap();
    let server_first = auth_data(
        c.expect_packet(T).await.unwrap(),
        ReasonCode::CONTINUE_AUTHENTICATION,
    );
    c.send(&auth(
        ReasonCode::CONTINUE_AUTHENTICATION,
        scram.last(&server_first),
    ))
    .await
    .unwrap();
    match c.expect_packet(T).await.unwrap() {
        Packet::ConnAck(a) => {
            assert_eq!(a.reason, ReasonCode::SUCCESS);
            assert_eq!(a.properties.authentication_method.as_deref(), Some(METHOD));
            scram.verify_server(&a.properties.authentication_data.unwrap());
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
    assert!(broker
        .wait_log("client connected", T)
        .unwrap()
        .contains("scram-client"));

    let mut again = ScramClient::new("dev", "s3cret", "second-nonce");
    c.send(&auth(ReasonCode::RE_AUTHENTICATE, again.first()))
        .await
        .unwrap();
    let sf = auth_data(
        c.expect_packet(T).await.unwrap(),
        ReasonCode::CONTINUE_AUTHENTICATION,
    );
    c.send(&auth(ReasonCode::CONTINUE_AUTHENTICATION, again.last(&sf)))
        .await
        .unwrap();
    let last = auth_data(c.expect_packet(T).await.unwrap(), ReasonCode::SUCCESS);
    again.verify_server(&last);
}

/// A wrong password gets CONNACK 0x87; an unknown method 0x8C (4.12.0); the
/// password never appears in the log.
#[tokio::test]
async fn wrong_password_and_unknown_method_are_refused() {
    let broker = broker_with_scram_user();
    let mut c = RawClient::connect(broker.addr, Protocol::V5).await.unwrap();
    let mut scram = ScramClient::new("dev", "not-it", "n1");
    c.send(&connect_with(METHOD, scram.first())).await.unwrap();
    let sf = auth_data(
        c.expect_packet(T).await.unwrap(),
        ReasonCode::CONTINUE_AUTHENTICATION,
    );
    c.send(&auth(ReasonCode::CONTINUE_AUTHENTICATION, scram.last(&sf)))
        .await
        .unwrap();
    match c.expect_packet(T).await.unwrap() {
        Packet::ConnAck(a) => assert_eq!(a.reason, ReasonCode::NOT_AUTHORIZED),
        other => panic!("expected CONNACK 0x87, got {other:?}"),
    }

    let mut c = RawClient::connect(broker.addr, Protocol::V5).await.unwrap();
    c.send(&connect_with("SCRAM-SHA-1", b"n,,n=dev,r=x".to_vec()))
        .await
        .unwrap();
    match c.expect_packet(T).await.unwrap() {
        Packet::ConnAck(a) => assert_eq!(a.reason, ReasonCode::BAD_AUTHENTICATION_METHOD),
        other => panic!("expected CONNACK 0x8C, got {other:?}"),
    }
    assert!(!broker.log().join("\n").contains("not-it"));
}
