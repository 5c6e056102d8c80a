//! MQTT over WebSockets (issue 4): Paho's Python client with `transport="websockets"` over ws
//! and wss, and a raw WebSocket client for the framing cases (a packet split across frames,
//! several packets in one frame), the subprotocol and the path.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use sluice_tests::clients::{publish_311, subscribe_311};
use sluice_tests::codec::{Decoder, Packet, Protocol};
use sluice_tests::{certs_dir, connect_bytes, paho_at, Broker, BrokerOpts};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{header, HeaderValue};
use tokio_tungstenite::tungstenite::Message;

const T: Duration = Duration::from_secs(10);

fn cert(name: &str) -> String {
    certs_dir().join(name).display().to_string()
}

/// Listeners: ws on /mqtt, wss on /mqtt (development certificates).
fn ws_broker() -> Broker {
    Broker::start_with(BrokerOpts {
        config: format!(
            "[[listeners]]\nbind = \"127.0.0.1:0\"\nwebsocket = {{ path = \"/mqtt\" }}\n\n\
             [[listeners]]\nbind = \"127.0.0.1:0\"\nwebsocket = {{}}\n\
             tls = {{ cert = \"{}\", key = \"{}\" }}\n",
            cert("server.pem"),
            cert("server.key")
        ),
        no_bind: true,
        ..Default::default()
    })
    .expect("start sluice")
}

#[test]
fn paho_over_ws_and_wss_at_311_and_5() {
    let broker = ws_broker();
    let ws = broker.listener_addr("ws").unwrap().port();
    let wss = broker.listener_addr("wss").unwrap().port();
    let ca = cert("ca.pem");
    for v in ["311", "5"] {
        for (port, tls) in [(ws, false), (wss, true)] {
            let mut args = vec!["--version", v, "--qos", "2", "--transport", "websockets"];
            if tls {
                args.extend(["--cafile", &ca]);
            }
            let out = paho_at(port, "pubsub.py", &args).unwrap();
            assert!(
                out.contains("RECEIVED pubsub/x 2 hello at qos 2"),
                "v{v} tls={tls}: {out}"
            );
            assert!(out.contains("COUNT 1"), "v{v} tls={tls}: {out}");
        }
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn ws_connect(port: u16, path: &str) -> Result<(Ws, Option<String>), String> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let mut req = format!("ws://127.0.0.1:{port}{path}")
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static("mqtt"),
    );
    let (ws, resp) = tokio_tungstenite::client_async(req, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let proto = resp
        .headers()
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Ok((ws, proto))
}

/// Reads binary frames until `n` packets are decoded.
async fn read_packets(ws: &mut Ws, n: usize) -> Vec<Packet> {
    let mut dec = Decoder::with_protocol(Protocol::V311, 1 << 20);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    tokio::time::timeout(T, async {
        while out.len() < n {
            while let Some(p) = dec.decode(&mut buf).unwrap() {
                out.push(p);
            }
            if out.len() >= n {
                break;
            }
            match ws.next().await {
                Some(Ok(Message::Binary(b))) => buf.extend_from_slice(&b),
                Some(Ok(_)) => {}
                other => panic!("stream ended: {other:?}"),
            }
        }
    })
    .await
    .expect("packets within time");
    out
}

#[tokio::test]
async fn split_and_coalesced_packets_over_websocket_frames() {
    let broker = ws_broker();
    let port = broker.listener_addr("ws").unwrap().port();
    let (mut ws, proto) = ws_connect(port, "/mqtt").await.unwrap();
    assert_eq!(proto.as_deref(), Some("mqtt"), "subprotocol negotiated");

    // CONNECT one byte per frame.
    for b in connect_bytes(Protocol::V311, "ws-split") {
        ws.send(Message::Binary(Bytes::copy_from_slice(&[b])))
            .await
            .unwrap();
    }
    let p = read_packets(&mut ws, 1).await;
    assert!(matches!(p[0], Packet::ConnAck(_)), "{p:?}");

    // SUBSCRIBE, a PUBLISH to it and a PINGREQ in one frame; a 100 KiB PUBLISH in 7 frames.
    let mut frame = subscribe_311(1, "ws/#", 0);
    frame.extend(publish_311(0x30, "ws/one", None, b"coalesced"));
    frame.extend([0xC0, 0]);
    ws.send(Message::Binary(frame.into())).await.unwrap();
    let big = vec![b'x'; 100 * 1024];
    let publish = publish_311(0x30, "ws/big", None, &big);
    for chunk in publish.chunks(16 * 1024) {
        ws.send(Message::Binary(Bytes::copy_from_slice(chunk)))
            .await
            .unwrap();
    }
    let p = read_packets(&mut ws, 4).await;
    assert!(matches!(p[0], Packet::SubAck(_)), "{p:?}");
    let mut publishes = Vec::new();
    let mut pingresp = false;
    for packet in &p[1..] {
        match packet {
            Packet::Publish(m) => publishes.push((m.topic.to_string(), m.payload.len())),
            Packet::PingResp => pingresp = true,
            other => panic!("{other:?}"),
        }
    }
    assert!(pingresp);
    assert_eq!(
        publishes,
        vec![("ws/one".to_owned(), 9), ("ws/big".to_owned(), big.len())]
    );
    // A ping frame is answered with a pong.
    ws.send(Message::Ping(Bytes::from_static(b"p")))
        .await
        .unwrap();
    let pong = tokio::time::timeout(T, async {
        loop {
            if let Some(Ok(Message::Pong(p))) = ws.next().await {
                return p;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(&pong[..], b"p");
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn wrong_path_is_refused() {
    let broker = ws_broker();
    let port = broker.listener_addr("ws").unwrap().port();
    let err = ws_connect(port, "/other").await.unwrap_err();
    assert!(err.contains("404"), "{err}");
    broker.wait_log("WebSocket upgrade failed", T).unwrap();
}

/// Browsers offer ALPN http/1.1 on wss; the listener agrees to it.
#[tokio::test]
async fn wss_negotiates_http11_for_browsers() {
    let broker = ws_broker();
    let port = broker.listener_addr("wss").unwrap().port();
    let mut roots = rustls::RootCertStore::empty();
    {
        use rustls_pki_types::pem::PemObject;
        for c in
            rustls_pki_types::CertificateDer::pem_file_iter(certs_dir().join("ca.pem")).unwrap()
        {
            roots.add(c.unwrap()).unwrap();
        }
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls_pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut req = format!("wss://localhost:{port}/mqtt")
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static("mqtt"),
    );
    let (mut ws, _) = tokio_tungstenite::client_async(req, tls).await.unwrap();
    ws.send(Message::Binary(
        connect_bytes(Protocol::V5, "wss-raw").into(),
    ))
    .await
    .unwrap();
    let reply = tokio::time::timeout(T, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    match reply {
        Message::Binary(b) => assert_eq!(b[0], 0x20, "CONNACK"),
        other => panic!("{other:?}"),
    }
}
