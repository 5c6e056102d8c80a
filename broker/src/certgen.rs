//! `sluice gen-certs DIR`: a development CA, a server certificate for localhost and a client
//! certificate, made with rcgen. For development and tests only: the CA key sits next to the
//! certificates it signs.

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// Years the generated certificates stay valid.
pub const VALID_YEARS: i32 = 10;

/// Why certificates could not be written.
#[derive(Debug, thiserror::Error)]
pub enum GenError {
    #[error("cannot generate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("cannot write {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// Writes `ca.pem`, `ca.key`, `server.pem`, `server.key` (SAN localhost, 127.0.0.1, ::1) and
/// `client.pem`, `client.key` (CN `device-1`) into `dir` (created if missing). Keys are ECDSA
/// P-256 in PKCS#8 PEM.
pub fn generate(dir: &Path) -> Result<(), GenError> {
    let write = |name: &str, contents: &str| {
        let path = dir.join(name);
        std::fs::write(&path, contents).map_err(|source| GenError::Io {
            path: path.display().to_string(),
            source,
        })
    };
    std::fs::create_dir_all(dir).map_err(|source| GenError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    let today = today();

    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name = dn("Sluice development CA (do not trust in production)");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut ca, today);
    let ca_cert = ca.self_signed(&ca_key)?;
    write("ca.pem", &ca_cert.pem())?;
    write("ca.key", &ca_key.serialize_pem())?;
    let issuer = Issuer::new(ca, ca_key);

    let server_key = KeyPair::generate()?;
    let mut server = CertificateParams::new(vec!["localhost".to_owned()])?;
    server
        .subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    server
        .subject_alt_names
        .push(SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()));
    server.distinguished_name = dn("localhost");
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server.use_authority_key_identifier_extension = true;
    set_validity(&mut server, today);
    let server_cert = server.signed_by(&server_key, &issuer)?;
    write("server.pem", &server_cert.pem())?;
    write("server.key", &server_key.serialize_pem())?;

    let client_key = KeyPair::generate()?;
    let mut client = CertificateParams::default();
    client.distinguished_name = dn("device-1");
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    client.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    client.use_authority_key_identifier_extension = true;
    set_validity(&mut client, today);
    let client_cert = client.signed_by(&client_key, &issuer)?;
    write("client.pem", &client_cert.pem())?;
    write("client.key", &client_key.serialize_pem())?;
    Ok(())
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Sluice development");
    dn.push(DnType::CommonName, cn);
    dn
}

/// Yesterday's UTC date, day of month at most 28.
fn today() -> (i32, u8, u8) {
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0) as i64
        - 1;
    let (y, m, d) = civil_from_days(days);
    (y, m, d.min(28))
}

/// Valid from a year before the given date (slack for clocks behind) to [`VALID_YEARS`] after it.
fn set_validity(p: &mut CertificateParams, (y, m, d): (i32, u8, u8)) {
    p.not_before = rcgen::date_time_ymd(y - 1, m, d);
    p.not_after = rcgen::date_time_ymd(y + VALID_YEARS, m, d);
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i32, u8, u8) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let y = (yoe + era * 400 + i64::from(m <= 2)) as i32;
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
    }
}
