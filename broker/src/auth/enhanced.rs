//! MQTT 5.0 enhanced authentication (4.12): the AUTH exchange, behind an [`Authenticator`]
//! trait, with SCRAM-SHA-256 (RFC 5802, RFC 7677) built in.
//!
//! A client names a method in CONNECT (Authentication Method) with its first message
//! (Authentication Data). The server answers AUTH 0x18 Continue Authentication with its
//! challenge, the client answers AUTH 0x18, and so on, until the server sends CONNACK 0x00
//! (with its final data) or refuses. After CONNECT the client may re-authenticate with AUTH
//! 0x19, answered the same way and finished by AUTH 0x00 [MQTT-4.12.1-1]. An unknown method
//! is refused with 0x8C Bad Authentication Method.
//!
//! SCRAM-SHA-256 checks the client against `auth.password_file` entries of the form
//! `user:$scram-sha-256$ITERATIONS:SALT$STORED_KEY:SERVER_KEY` (base64; the PostgreSQL
//! layout), which `sluice passwd --scram` writes. The broker never sees the password, and the
//! client checks the server too (the final `v=` signature).

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::auth::passwords::{PasswordFile, ScramKeys};

/// The method name for SCRAM-SHA-256.
pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";

/// What one step of an exchange gives.
pub enum AuthStep {
    /// Send this challenge (AUTH 0x18) and feed the client's answer to `next`.
    Continue {
        data: Vec<u8>,
        next: Box<dyn AuthContinuation>,
    },
    /// Authenticated as `username`; send `data` (if any) with the CONNACK / AUTH 0x00.
    Success {
        data: Option<Vec<u8>>,
        username: String,
    },
    /// Refused: 0x87 Not Authorized (and a log line with `why`, never with secrets).
    Failure(&'static str),
}

impl std::fmt::Debug for AuthStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthStep::Continue { .. } => f.write_str("Continue"),
            AuthStep::Success { username, .. } => write!(f, "Success({username})"),
            AuthStep::Failure(why) => write!(f, "Failure({why})"),
        }
    }
}

/// The rest of an exchange in progress.
pub trait AuthContinuation: Send {
    /// Takes the client's next Authentication Data.
    fn step(self: Box<Self>, data: &[u8]) -> AuthStep;
}

/// An authentication method.
pub trait Authenticator: Send + Sync {
    /// The Authentication Method name it answers to.
    fn method(&self) -> &'static str;
    /// Starts an exchange with the client's first Authentication Data.
    fn start(&self, data: &[u8]) -> AuthStep;
}

/// Finds the authenticator for `method` (None: 0x8C Bad Authentication Method).
pub fn authenticator(
    method: &str,
    passwords: Option<Arc<PasswordFile>>,
) -> Option<Box<dyn Authenticator>> {
    match method {
        SCRAM_SHA_256 => {
            passwords.map(|p| Box::new(Scram { passwords: p }) as Box<dyn Authenticator>)
        }
        _ => None,
    }
}

/// SCRAM-SHA-256 against the password file.
struct Scram {
    passwords: Arc<PasswordFile>,
}

impl Authenticator for Scram {
    fn method(&self) -> &'static str {
        SCRAM_SHA_256
    }

    fn start(&self, data: &[u8]) -> AuthStep {
        let mut nonce = [0u8; 18];
        rand::fill(&mut nonce);
        scram_first(&self.passwords, data, &B64.encode(nonce))
    }
}

/// The server's side after the client-first message, with `server_nonce` (random in use,
/// fixed in tests).
fn scram_first(passwords: &PasswordFile, data: &[u8], server_nonce: &str) -> AuthStep {
    let Ok(msg) = std::str::from_utf8(data) else {
        return AuthStep::Failure("SCRAM client-first is not UTF-8");
    };
    // gs2 header: no channel binding ("n,,"; "y,," means the client could but thinks we can't).
    let (gs2, bare) = match msg.strip_prefix("n,,").or_else(|| msg.strip_prefix("y,,")) {
        Some(bare) => (&msg[..3], bare),
        None => return AuthStep::Failure("SCRAM: channel binding or authzid not supported"),
    };
    let mut user = None;
    let mut client_nonce = None;
    for attr in bare.split(',') {
        if let Some(v) = attr.strip_prefix("n=") {
            user = Some(v.replace("=2C", ",").replace("=3D", "="));
        } else if let Some(v) = attr.strip_prefix("r=") {
            client_nonce = Some(v.to_owned());
        } else if attr.starts_with("m=") {
            return AuthStep::Failure("SCRAM: mandatory extension not supported");
        }
    }
    let (Some(user), Some(client_nonce)) = (user, client_nonce) else {
        return AuthStep::Failure("SCRAM client-first lacks n= or r=");
    };
    if client_nonce.is_empty() {
        return AuthStep::Failure("SCRAM: empty nonce");
    }
    let Some(keys) = passwords.scram_keys(&user) else {
        return AuthStep::Failure("SCRAM: no SCRAM credentials for this user");
    };
    let nonce = format!("{client_nonce}{server_nonce}");
    let server_first = format!(
        "r={nonce},s={},i={}",
        B64.encode(&keys.salt),
        keys.iterations
    );
    AuthStep::Continue {
        data: server_first.clone().into_bytes(),
        next: Box::new(ScramFinal {
            user,
            keys,
            gs2: gs2.to_owned(),
            client_first_bare: bare.to_owned(),
            server_first,
            nonce,
        }),
    }
}

struct ScramFinal {
    user: String,
    keys: ScramKeys,
    gs2: String,
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut m = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(msg);
    m.finalize().into_bytes().into()
}

impl AuthContinuation for ScramFinal {
    fn step(self: Box<Self>, data: &[u8]) -> AuthStep {
        let Ok(msg) = std::str::from_utf8(data) else {
            return AuthStep::Failure("SCRAM client-final is not UTF-8");
        };
        let Some((without_proof, proof)) = msg.rsplit_once(",p=") else {
            return AuthStep::Failure("SCRAM client-final lacks p=");
        };
        let mut channel = None;
        let mut nonce = None;
        for attr in without_proof.split(',') {
            if let Some(v) = attr.strip_prefix("c=") {
                channel = Some(v);
            } else if let Some(v) = attr.strip_prefix("r=") {
                nonce = Some(v);
            }
        }
        if channel != Some(B64.encode(self.gs2.as_bytes()).as_str()) {
            return AuthStep::Failure("SCRAM: channel binding data does not match");
        }
        if nonce != Some(self.nonce.as_str()) {
            return AuthStep::Failure("SCRAM: nonce does not match");
        }
        let Ok(proof) = B64.decode(proof) else {
            return AuthStep::Failure("SCRAM: proof is not base64");
        };
        if proof.len() != 32 {
            return AuthStep::Failure("SCRAM: proof has the wrong length");
        }
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let client_signature = hmac(&self.keys.stored_key, auth_message.as_bytes());
        let client_key: Vec<u8> = proof
            .iter()
            .zip(client_signature.iter())
            .map(|(a, b)| a ^ b)
            .collect();
        let stored = Sha256::digest(&client_key);
        if !bool::from(stored.as_slice().ct_eq(&self.keys.stored_key)) {
            return AuthStep::Failure("SCRAM: bad proof (wrong password)");
        }
        let server_signature = hmac(&self.keys.server_key, auth_message.as_bytes());
        AuthStep::Success {
            data: Some(format!("v={}", B64.encode(server_signature)).into_bytes()),
            username: self.user,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677 section 3: user "user", password "pencil", this salt, 4096 iterations.
    fn file() -> PasswordFile {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let entry = crate::auth::passwords::ScramKeys::derive(b"pencil", &salt, 4096).to_entry();
        PasswordFile::parse(&format!("user:{entry}\n"), "pw").unwrap()
    }

    #[test]
    fn rfc_7677_exchange() {
        let file = file();
        let step = scram_first(
            &file,
            b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
            "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
        );
        let AuthStep::Continue { data, next } = step else {
            panic!("{step:?}")
        };
        assert_eq!(
            String::from_utf8(data).unwrap(),
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
        );
        let last = next.step(b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=");
        match last {
            AuthStep::Success { data, username } => {
                assert_eq!(username, "user");
                assert_eq!(
                    String::from_utf8(data.unwrap()).unwrap(),
                    "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
                );
            }
            other => panic!("{other:?}"),
        }
        // The plain password also works over CONNECT for a SCRAM entry.
        assert!(file.verify("user", b"pencil") && !file.verify("user", b"pencil2"));
    }

    #[test]
    fn wrong_proof_nonce_and_unknown_users_fail() {
        let file = file();
        let start = || scram_first(&file, b"n,,n=user,r=abc", "XYZ");
        let AuthStep::Continue { next, .. } = start() else {
            panic!()
        };
        let bad = next.step(b"c=biws,r=abcXYZ,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=");
        assert!(matches!(bad, AuthStep::Failure(w) if w.contains("wrong password")));
        let AuthStep::Continue { next, .. } = start() else {
            panic!()
        };
        assert!(matches!(
            next.step(b"c=biws,r=other,p=AAAA"),
            AuthStep::Failure(_)
        ));
        assert!(matches!(
            scram_first(&file, b"n,,n=nobody,r=abc", "X"),
            AuthStep::Failure(_)
        ));
        assert!(matches!(
            scram_first(&file, b"p=tls-unique,,n=user,r=a", "X"),
            AuthStep::Failure(_)
        ));
        assert!(authenticator("SCRAM-SHA-1", None).is_none());
    }
}
