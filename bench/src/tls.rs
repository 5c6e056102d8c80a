//! `tls-handshakes`: N short-lived connections, at most `--parallel` at a time, each a TCP
//! connect, a full TLS handshake (rustls with ring, trusting the development CA, no session
//! resumption), an MQTT CONNECT, the CONNACK, a DISCONNECT and close_notify. Measures completed
//! CONNACKs per second, failures, connect→CONNACK latency and the broker's CPU per handshake.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::BytesMut;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use sluice_codec::{encode, Connect, Decoder, Disconnect, Packet, Protocol, ReasonCode, Str};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{sleep, timeout, Instant};
use tokio_rustls::TlsConnector;

use crate::load::{Meters, Outcome, Params, Target};
use crate::track;

/// One connection may take this long (TCP connect to CONNACK) before it counts as failed.
const PER_CONNECTION: Duration = Duration::from_secs(10);

/// A rustls client configuration trusting the CAs in `ca` (PEM). Session resumption is off, so
/// every connection is a full handshake.
pub fn client_config(ca: &Path) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
        .with_context(|| format!("read {}", ca.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parse {}", ca.display()))?;
    if certs.is_empty() {
        bail!("{}: no certificate", ca.display());
    }
    for c in certs {
        roots
            .add(c)
            .with_context(|| format!("CA certificate in {}", ca.display()))?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("rustls protocol versions")?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// One connection: returns the time from before the TCP connect to the CONNACK, and the TLS
/// version negotiated.
async fn handshake(
    addr: SocketAddr,
    connector: TlsConnector,
    protocol: Protocol,
    client_id: String,
) -> Result<(Duration, &'static str)> {
    let t = Instant::now();
    let tcp = TcpStream::connect(addr)
        .await
        .with_context(|| format!("TCP connect to {addr}"))?;
    tcp.set_nodelay(true)?;
    let name = ServerName::IpAddress(addr.ip().into());
    let mut tls = connector
        .connect(name, tcp)
        .await
        .context("TLS handshake")?;
    let version = match tls.get_ref().1.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "other",
    };
    let connect = Connect {
        protocol,
        clean_start: true,
        keep_alive: 60,
        client_id: Str::try_from(client_id.as_str()).map_err(|e| anyhow!("client id: {e:?}"))?,
        will: None,
        username: None,
        password: None,
        properties: Default::default(),
    };
    let mut out = BytesMut::with_capacity(128);
    encode(&Packet::Connect(Box::new(connect)), protocol, &mut out)
        .map_err(|e| anyhow!("encode: {e}"))?;
    tls.write_all(&out).await.context("write CONNECT")?;
    tls.flush().await.context("write CONNECT")?;
    let mut decoder = Decoder::with_protocol(protocol, 64 * 1024);
    let mut rbuf = BytesMut::with_capacity(4096);
    let ack = loop {
        if let Some(p) = decoder
            .decode(&mut rbuf)
            .map_err(|e| anyhow!("decode: {e}"))?
        {
            break p;
        }
        if tls.read_buf(&mut rbuf).await.context("read CONNACK")? == 0 {
            bail!("connection closed by the broker before CONNACK");
        }
    };
    let elapsed = t.elapsed();
    match ack {
        Packet::ConnAck(a) if !a.reason.is_error() => {}
        Packet::ConnAck(a) => bail!("CONNECT refused: {}", a.reason),
        other => bail!("expected CONNACK, got {}", other.name()),
    }
    out.clear();
    encode(
        &Packet::Disconnect(Disconnect::new(ReasonCode::NORMAL_DISCONNECTION)),
        protocol,
        &mut out,
    )
    .map_err(|e| anyhow!("encode: {e}"))?;
    // Closing is not measured; a broker that closes first is fine.
    let _ = tls.write_all(&out).await;
    let _ = tls.shutdown().await;
    Ok((elapsed, version))
}

pub async fn run(target: Target, p: &Params) -> Result<Outcome> {
    let n = p.connections.max(1);
    let parallel = p.parallel.max(1);
    let connector = TlsConnector::from(client_config(&p.ca)?);
    let run = format!("{:x}", track::now_ns() & 0xffff_ffff);
    // One handshake first, outside the measurement: a broker that does not speak TLS, or a
    // certificate that does not verify, fails the run at once with the reason.
    timeout(
        PER_CONNECTION,
        handshake(
            target.addr,
            connector.clone(),
            p.protocol,
            format!("sb-{run}-warmup"),
        ),
    )
    .await
    .map_err(|_| anyhow!("first TLS connection: no CONNACK within {PER_CONNECTION:?}"))?
    .context("first TLS connection")?;
    sleep(Duration::from_millis(500)).await;
    let meters = Meters::start(target.pid);
    let sem = Arc::new(Semaphore::new(parallel));
    let mut set = JoinSet::new();
    let t = Instant::now();
    let deadline = t + p.timeout;
    for i in 0..n {
        let sem = sem.clone();
        let connector = connector.clone();
        let (addr, protocol, id) = (target.addr, p.protocol, format!("sb-{run}-h{i}"));
        set.spawn(async move {
            let _permit = sem.acquire_owned().await?;
            if Instant::now() >= deadline {
                return Ok(None);
            }
            timeout(PER_CONNECTION, handshake(addr, connector, protocol, id))
                .await
                .unwrap_or_else(|_| Err(anyhow!("no CONNACK within {PER_CONNECTION:?}")))
                .map(Some)
        });
    }
    let mut hist = track::new_histogram();
    let (mut ok, mut failures, mut skipped) = (0u64, 0u64, 0u64);
    let mut first_error = None;
    let mut versions: Vec<&'static str> = Vec::new();
    let mut last = t;
    while let Some(r) = set.join_next().await {
        match r {
            Ok(Ok(Some((d, v)))) => {
                ok += 1;
                last = Instant::now();
                let _ = hist.record((d.as_micros() as u64).max(1));
                if !versions.contains(&v) {
                    versions.push(v);
                }
            }
            Ok(Ok(None)) => skipped += 1,
            Ok(Err(e)) => {
                failures += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
            Err(e) => {
                failures += 1;
                first_error.get_or_insert_with(|| format!("task: {e}"));
            }
        }
    }
    let secs = last.saturating_duration_since(t).as_secs_f64();
    let mut out = Outcome::default();
    out.set("handshakes", ok as f64);
    out.set("failures", failures as f64);
    if secs > 0.0 {
        out.set("handshakes_s", ok as f64 / secs);
    }
    if ok > 0 {
        out.set("hs_p50_us", hist.value_at_quantile(0.50) as f64);
        out.set("hs_p99_us", hist.value_at_quantile(0.99) as f64);
        out.set("hs_max_us", hist.max() as f64);
    }
    out.set("elapsed_s", secs);
    meters.finish(&mut out, (t, last));
    let cpu = out
        .figures
        .iter()
        .find(|f| f.0 == "broker_cpu_pct")
        .map(|f| f.1);
    if let Some(cpu) = cpu {
        if ok > 0 {
            out.set(
                "broker_cpu_us_per_handshake",
                cpu / 100.0 * secs * 1e6 / ok as f64,
            );
        }
    }
    out.notes.push(format!(
        "{n} connections, {parallel} at a time, full handshakes (no resumption), negotiated: {}",
        versions.join(", ")
    ));
    if let Some(e) = first_error {
        out.notes.push(format!("FAILURES: {failures}; first: {e}"));
    }
    if skipped > 0 {
        out.notes.push(format!(
            "TIME LIMIT: {skipped} connections not attempted within --timeout"
        ));
    }
    Ok(out)
}
