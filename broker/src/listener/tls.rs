//! TLS for listeners: certificates and keys read from PEM files with errors that say which file
//! and what is wrong with it, mutual TLS, the client certificate's identity, reload (SIGHUP and
//! file changes) and a rate-limited log of failed handshakes.
//!
//! Each TLS listener keeps its `rustls::ServerConfig` behind a lock read once per accepted
//! connection; a reload builds a whole new one from the files and swaps it in, so new
//! handshakes use the new certificate and client CA while established connections keep theirs.
//! A reload that fails leaves the previous configuration in force.

use std::io::BufReader;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::{self, SectionKind};

use crate::config::{Config, ConfigError, TlsConfig};

/// How often the certificate, key and CA files are checked for changes.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(2);
/// At most this many failed handshakes are logged per [`FAILURE_WINDOW`] and listener.
const FAILURES_LOGGED: u32 = 10;
const FAILURE_WINDOW: Duration = Duration::from_secs(10);

/// ALPN protocol offered on MQTT-over-TLS listeners.
pub const ALPN_MQTT: &[u8] = b"mqtt";
/// ALPN protocol offered on WSS listeners (browsers ask for it).
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

fn err(key: &str, path: &Path, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        value: path.display().to_string(),
        reason: reason.into(),
    }
}

/// PEM sections of a file, with the labels of every `-----BEGIN X-----` line (for messages
/// about what the file holds instead of what was expected).
struct PemFile {
    sections: Vec<(SectionKind, Vec<u8>)>,
    labels: Vec<String>,
}

fn read_pem(key: &str, path: &Path) -> Result<PemFile, ConfigError> {
    let bytes = std::fs::read(path).map_err(|e| err(key, path, format!("cannot read: {e}")))?;
    let labels: Vec<String> = String::from_utf8_lossy(&bytes)
        .lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix("-----BEGIN ")
                .and_then(|r| r.strip_suffix("-----"))
                .map(str::to_owned)
        })
        .collect();
    let mut rd = BufReader::new(bytes.as_slice());
    let mut sections = Vec::new();
    loop {
        match pem::from_buf(&mut rd) {
            Ok(Some(s)) => sections.push(s),
            Ok(None) => break,
            Err(e) => return Err(err(key, path, format!("not a valid PEM file: {e}"))),
        }
    }
    Ok(PemFile { sections, labels })
}

fn holds(labels: &[String]) -> String {
    if labels.is_empty() {
        "the file has no PEM block (-----BEGIN ...-----) at all".into()
    } else {
        format!("the file holds: {}", labels.join(", "))
    }
}

/// Every certificate in a PEM file (a chain, or a set of CA certificates).
pub fn load_certs(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let f = read_pem(key, path)?;
    let certs: Vec<CertificateDer<'static>> = f
        .sections
        .into_iter()
        .filter(|(k, _)| *k == SectionKind::Certificate)
        .map(|(_, der)| CertificateDer::from(der))
        .collect();
    if certs.is_empty() {
        return Err(err(
            key,
            path,
            format!(
                "no certificate found (expected -----BEGIN CERTIFICATE-----); {}",
                holds(&f.labels)
            ),
        ));
    }
    for (i, c) in certs.iter().enumerate() {
        if let Err(e) = x509_parser::parse_x509_certificate(c) {
            return Err(err(
                key,
                path,
                format!("certificate #{} is not valid X.509: {e}", i + 1),
            ));
        }
    }
    Ok(certs)
}

/// The one private key in a PEM file: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
pub fn load_key(key: &str, path: &Path) -> Result<PrivateKeyDer<'static>, ConfigError> {
    let f = read_pem(key, path)?;
    let mut keys = f.sections.into_iter().filter_map(|(k, der)| match k {
        SectionKind::PrivateKey => Some(PrivateKeyDer::Pkcs8(der.into())),
        SectionKind::RsaPrivateKey => Some(PrivateKeyDer::Pkcs1(der.into())),
        SectionKind::EcPrivateKey => Some(PrivateKeyDer::Sec1(der.into())),
        _ => None,
    });
    let Some(found) = keys.next() else {
        let reason = if f.labels.iter().any(|l| l.contains("ENCRYPTED")) {
            "encrypted private keys are not supported; decrypt it first (e.g. `openssl pkey -in KEY -out KEY.plain`)".to_owned()
        } else {
            format!(
                "no private key found (expected PKCS#8 BEGIN PRIVATE KEY, PKCS#1 BEGIN RSA PRIVATE KEY or SEC1 BEGIN EC PRIVATE KEY); {}",
                holds(&f.labels)
            )
        };
        return Err(err(key, path, reason));
    };
    if keys.next().is_some() {
        return Err(err(
            key,
            path,
            "more than one private key in the file; keep only the server's",
        ));
    }
    Ok(found)
}

/// Builds a listener's rustls configuration from its files. `index` names the listener in
/// errors (`listeners[0].tls.cert`).
pub fn server_config(
    index: usize,
    t: &TlsConfig,
    alpn: &[u8],
) -> Result<ServerConfig, ConfigError> {
    let k = |name: &str| format!("listeners[{index}].tls.{name}");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = load_certs(&k("cert"), &t.cert)?;
    let key = load_key(&k("key"), &t.key)?;
    // Signing key and certificate checked together: a key of an unsupported algorithm or one
    // that does not belong to the certificate is reported here, not at the first handshake.
    let signing = provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| err(&k("key"), &t.key, format!("unsupported private key: {e}")))?;
    let certified = rustls::sign::CertifiedKey::new(chain.clone(), signing);
    if let Err(e) = certified.keys_match() {
        let reason = match e {
            rustls::Error::InconsistentKeys(_) => format!(
                "the private key does not belong to the certificate in {}",
                t.cert.display()
            ),
            other => format!("cannot check the key against {}: {other}", t.cert.display()),
        };
        return Err(err(&k("key"), &t.key, reason));
    }
    let versions: &[&rustls::SupportedProtocolVersion] = if t.min_version == "1.3" {
        &[&rustls::version::TLS13]
    } else {
        &[&rustls::version::TLS12, &rustls::version::TLS13]
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| err(&k("min_version"), Path::new(&t.min_version), e.to_string()))?;
    let builder = match &t.client_ca {
        Some(ca_path) => {
            let mut roots = RootCertStore::empty();
            for (i, ca) in load_certs(&k("client_ca"), ca_path)?
                .into_iter()
                .enumerate()
            {
                roots.add(ca).map_err(|e| {
                    err(
                        &k("client_ca"),
                        ca_path,
                        format!("certificate #{} is not a usable CA: {e}", i + 1),
                    )
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if t.requires_client_cert() {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier
                .build()
                .map_err(|e| err(&k("client_ca"), ca_path, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| err(&k("cert"), &t.cert, e.to_string()))?;
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(config)
}

/// Checks every TLS listener's files (for `--check-config`; `Server::bind` does it too).
pub fn check(config: &Config) -> Result<(), ConfigError> {
    for (i, l) in config.listeners.iter().enumerate() {
        if let Some(t) = &l.tls {
            server_config(i, t, ALPN_MQTT)?;
        }
    }
    Ok(())
}

/// The identity of a client certificate: its subject's Common Name, else its first Subject
/// Alternative Name (DNS name, e-mail, URI or IP address).
pub fn identity(cert: &CertificateDer<'_>) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    let (_, x509) = x509_parser::parse_x509_certificate(cert).ok()?;
    if let Some(cn) = x509
        .subject()
        .iter_common_name()
        .find_map(|cn| cn.as_str().ok())
        .filter(|cn| !cn.is_empty())
    {
        return Some(cn.to_owned());
    }
    let san = x509.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        GeneralName::DNSName(s) | GeneralName::RFC822Name(s) | GeneralName::URI(s) => {
            Some((*s).to_owned())
        }
        GeneralName::IPAddress(b) => match b.len() {
            4 => Some(std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*b).ok()?).to_string()),
            16 => Some(std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*b).ok()?).to_string()),
            _ => None,
        },
        _ => None,
    })
}

/// One TLS listener's configuration, swapped whole on reload.
#[derive(Debug)]
pub struct TlsListener {
    index: usize,
    config: TlsConfig,
    alpn: &'static [u8],
    current: RwLock<Arc<ServerConfig>>,
    /// Modification times of cert, key and client_ca when last loaded (or tried).
    stamps: Mutex<Vec<Option<SystemTime>>>,
    /// Failed handshakes, logged at a bounded rate.
    pub failures: FailureLog,
}

impl TlsListener {
    /// Reads and checks the files of listener `index`.
    pub fn load(
        index: usize,
        config: TlsConfig,
        websocket: bool,
    ) -> Result<TlsListener, ConfigError> {
        let alpn = if websocket { ALPN_HTTP1 } else { ALPN_MQTT };
        let stamps = stamps(&config);
        let server = server_config(index, &config, alpn)?;
        Ok(TlsListener {
            index,
            config,
            alpn,
            current: RwLock::new(Arc::new(server)),
            stamps: Mutex::new(stamps),
            failures: FailureLog::default(),
        })
    }

    /// The configuration new handshakes use.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Whether clients' certificate identities replace their CONNECT usernames.
    pub fn identity_as_username(&self) -> bool {
        self.config.use_identity_as_username
    }

    /// Re-reads the files; on success new handshakes use them, on error the old ones stay.
    pub fn reload(&self) -> Result<(), ConfigError> {
        *self
            .stamps
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = stamps(&self.config);
        let server = server_config(self.index, &self.config, self.alpn)?;
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(server);
        Ok(())
    }

    /// Whether a file changed on disk since the last (attempted) load.
    fn changed_on_disk(&self) -> bool {
        let now = stamps(&self.config);
        *self
            .stamps
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            != now
    }

    /// `listeners[N]` and the certificate path, for log lines.
    fn name(&self) -> String {
        format!("listeners[{}] ({})", self.index, self.config.cert.display())
    }
}

fn stamps(c: &TlsConfig) -> Vec<Option<SystemTime>> {
    let paths: [Option<&PathBuf>; 3] = [Some(&c.cert), Some(&c.key), c.client_ca.as_ref()];
    paths
        .iter()
        .map(|p| {
            p.and_then(|p| std::fs::metadata(p).ok())
                .and_then(|m| m.modified().ok())
        })
        .collect()
}

/// Every TLS listener of a server, for reloading (cheap to clone).
#[derive(Debug, Clone, Default)]
pub struct TlsReloader {
    listeners: Arc<Vec<Arc<TlsListener>>>,
}

impl TlsReloader {
    pub(crate) fn new(listeners: Vec<Arc<TlsListener>>) -> TlsReloader {
        TlsReloader {
            listeners: Arc::new(listeners),
        }
    }

    /// Whether there is anything to reload.
    pub fn is_empty(&self) -> bool {
        self.listeners.is_empty()
    }

    /// Reloads every TLS listener's files, logging each outcome; returns how many failed.
    pub fn reload_all(&self, why: &str) -> usize {
        let mut failed = 0;
        for l in self.listeners.iter() {
            match l.reload() {
                Ok(()) => tracing::info!("{why}: TLS certificate of {} reloaded", l.name()),
                Err(e) => {
                    failed += 1;
                    tracing::error!(error = %e, "{why}: TLS certificate of {} not reloaded; the previous one stays in force", l.name());
                }
            }
        }
        failed
    }

    /// Polls the files every [`WATCH_INTERVAL`] and reloads a listener whose files changed.
    pub async fn watch(self) {
        let mut tick = tokio::time::interval(WATCH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            for l in self.listeners.iter() {
                if l.changed_on_disk() {
                    match l.reload() {
                        Ok(()) => {
                            tracing::info!("TLS files of {} changed on disk: reloaded", l.name())
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "TLS files of {} changed on disk but cannot be used; the previous certificate stays in force", l.name())
                        }
                    }
                }
            }
        }
    }
}

/// Logs failed handshakes (and WebSocket upgrades) at most [`FAILURES_LOGGED`] times per
/// [`FAILURE_WINDOW`]; the next logged line says how many were left out.
#[derive(Debug)]
pub struct FailureLog {
    state: Mutex<FailureWindow>,
}

#[derive(Debug)]
struct FailureWindow {
    started: Instant,
    logged: u32,
    suppressed: u64,
}

impl Default for FailureLog {
    fn default() -> FailureLog {
        FailureLog {
            state: Mutex::new(FailureWindow {
                started: Instant::now(),
                logged: 0,
                suppressed: 0,
            }),
        }
    }
}

impl FailureLog {
    /// Records one failure; logs it unless this window's budget is spent. Returns whether it
    /// was logged.
    pub fn failed(&self, what: &str, peer: SocketAddr, reason: &dyn std::fmt::Display) -> bool {
        let mut w = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        if now.duration_since(w.started) >= FAILURE_WINDOW {
            w.started = now;
            w.logged = 0;
        }
        if w.logged >= FAILURES_LOGGED {
            w.suppressed += 1;
            return false;
        }
        w.logged += 1;
        let suppressed = std::mem::take(&mut w.suppressed);
        drop(w);
        if suppressed > 0 {
            tracing::warn!(%peer, reason = %reason, suppressed, "{what} failed ({suppressed} earlier failures not logged)");
        } else {
            tracing::warn!(%peer, reason = %reason, "{what} failed");
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    fn dir() -> Dir {
        let d = std::env::temp_dir().join(format!("sluice-tls-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    fn tls(d: &Path, cert: &str, key: &str) -> TlsConfig {
        TlsConfig {
            cert: d.join(cert),
            key: d.join(key),
            client_ca: None,
            require_client_cert: None,
            min_version: "1.2".into(),
            use_identity_as_username: false,
        }
    }

    #[test]
    fn generated_files_load_and_key_formats_are_accepted() {
        let d = dir();
        crate::certgen::generate(&d.0).unwrap();
        let c = tls(&d.0, "server.pem", "server.key");
        server_config(0, &c, ALPN_MQTT).unwrap();
        // The same key as PKCS#8 is what gen-certs writes; SEC1 and PKCS#1 come from rcgen
        // keys re-encoded below.
        let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        let cert = params.self_signed(&ec).unwrap();
        std::fs::write(d.0.join("ec.pem"), cert.pem()).unwrap();
        // SEC1: the PKCS#8 wrapper's inner ECPrivateKey.
        let sec1 = sec1_from_pkcs8(&ec.serialize_der());
        let pem_sec1 = pem_encode("EC PRIVATE KEY", &sec1);
        std::fs::write(d.0.join("ec.key"), pem_sec1).unwrap();
        server_config(0, &tls(&d.0, "ec.pem", "ec.key"), ALPN_MQTT).unwrap();
        // PKCS#1 (RSA), from openssl (broker/testdata/README.md).
        let testdata = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
        let mut c = tls(&testdata, "rsa-pkcs1.pem", "rsa-pkcs1.key");
        assert!(matches!(
            load_key("k", &c.key).unwrap(),
            PrivateKeyDer::Pkcs1(_)
        ));
        server_config(0, &c, ALPN_MQTT).unwrap();
        c.min_version = "1.3".into();
        server_config(0, &c, ALPN_MQTT).unwrap();
    }

    /// Extracts the ECPrivateKey (SEC1) from a PKCS#8 PrivateKeyInfo: the last OCTET STRING.
    fn sec1_from_pkcs8(der: &[u8]) -> Vec<u8> {
        // PrivateKeyInfo ::= SEQUENCE { version, AlgorithmIdentifier, OCTET STRING privateKey }
        let (_, obj) = x509_parser::der_parser::parse_der(der).unwrap();
        let seq = obj.as_sequence().unwrap();
        seq[2].as_slice().unwrap().to_vec()
    }

    fn pem_encode(label: &str, der: &[u8]) -> String {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let mut out = format!("-----BEGIN {label}-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(chunk).unwrap());
            out.push('\n');
        }
        out.push_str(&format!("-----END {label}-----\n"));
        out
    }

    #[test]
    fn missing_file_names_key_and_path() {
        let d = dir();
        let e = server_config(2, &tls(&d.0, "nope.pem", "nope.key"), ALPN_MQTT).unwrap_err();
        assert_eq!(e.key, "listeners[2].tls.cert");
        assert!(e.value.ends_with("nope.pem"), "{e}");
        assert!(e.reason.contains("cannot read"), "{e}");
    }

    #[test]
    fn garbage_and_wrong_blocks_are_explained() {
        let d = dir();
        crate::certgen::generate(&d.0).unwrap();
        std::fs::write(d.0.join("garbage.pem"), "hello, not a certificate\n").unwrap();
        let e = server_config(0, &tls(&d.0, "garbage.pem", "server.key"), ALPN_MQTT).unwrap_err();
        assert_eq!(e.key, "listeners[0].tls.cert");
        assert!(e.reason.contains("no certificate found"), "{e}");
        assert!(e.reason.contains("no PEM block"), "{e}");
        // A certificate where the key should be.
        let e = server_config(0, &tls(&d.0, "server.pem", "server.pem"), ALPN_MQTT).unwrap_err();
        assert_eq!(e.key, "listeners[0].tls.key");
        assert!(e.reason.contains("no private key found"), "{e}");
        assert!(e.reason.contains("CERTIFICATE"), "{e}");
        // A broken base64 body.
        std::fs::write(
            d.0.join("broken.pem"),
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let e = server_config(0, &tls(&d.0, "broken.pem", "server.key"), ALPN_MQTT).unwrap_err();
        assert!(e.reason.contains("not a valid PEM file"), "{e}");
        // Encrypted keys are named as such.
        std::fs::write(
            d.0.join("enc.key"),
            pem_encode("ENCRYPTED PRIVATE KEY", b"\x30\x03\x02\x01\x00"),
        )
        .unwrap();
        let e = server_config(0, &tls(&d.0, "server.pem", "enc.key"), ALPN_MQTT).unwrap_err();
        assert!(e.reason.contains("encrypted"), "{e}");
    }

    #[test]
    fn key_of_another_certificate_is_a_mismatch() {
        let d = dir();
        crate::certgen::generate(&d.0).unwrap();
        let e = server_config(0, &tls(&d.0, "server.pem", "client.key"), ALPN_MQTT).unwrap_err();
        assert_eq!(e.key, "listeners[0].tls.key");
        assert!(e.reason.contains("does not belong"), "{e}");
    }

    #[test]
    fn identity_is_cn_else_first_san() {
        let d = dir();
        crate::certgen::generate(&d.0).unwrap();
        let client = load_certs("k", &d.0.join("client.pem")).unwrap();
        assert_eq!(identity(&client[0]).as_deref(), Some("device-1"));
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["sensor.example".into()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(identity(cert.der()).as_deref(), Some("sensor.example"));
    }

    #[test]
    fn failure_log_is_rate_limited() {
        let log = FailureLog::default();
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let logged = (0..100)
            .filter(|_| log.failed("TLS handshake", peer, &"x"))
            .count();
        assert_eq!(logged, FAILURES_LOGGED as usize);
    }
}
