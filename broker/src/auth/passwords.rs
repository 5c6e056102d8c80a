//! The password file (`auth.password_file`): one `username:hash` per line, compatible with
//! Mosquitto's `mosquitto_passwd` output so users migrate as they are, plus Sluice's own
//! argon2id entries (what `sluice passwd` writes).
//!
//! Hash formats:
//! * `$7$ITERATIONS$SALT$HASH`: Mosquitto 2.x, PBKDF2-HMAC-SHA512, 64-byte hash, base64.
//! * `$6$SALT$HASH`: Mosquitto 1.x, SHA-512 of password then salt, base64.
//! * `$argon2id$v=19$m=...,t=...,p=...$SALT$HASH`: PHC string (argon2 crate's defaults).
//!
//! Verification is CPU work by design (that is what makes the hashes expensive to guess): the
//! connection task runs it with `spawn_blocking`, never on a runtime thread. Comparisons are
//! constant-time, and an unknown user costs the same work as a wrong password so the timing
//! does not reveal which usernames exist.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;

/// One user's stored hash.
#[derive(Clone)]
enum Hash {
    /// Mosquitto `$6$`.
    Sha512 { salt: Vec<u8>, hash: Vec<u8> },
    /// Mosquitto `$7$`.
    Pbkdf2 {
        iterations: u32,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
    /// A PHC argon2 string, kept as written and parsed on verification.
    Argon2(String),
    /// SCRAM-SHA-256 keys (usable by the AUTH exchange and by plain passwords).
    Scram(ScramKeys),
}

/// What the server keeps for SCRAM-SHA-256 (RFC 5802): never the password itself.
#[derive(Clone)]
pub struct ScramKeys {
    pub iterations: u32,
    pub salt: Vec<u8>,
    /// H(HMAC(SaltedPassword, "Client Key")).
    pub stored_key: Vec<u8>,
    /// HMAC(SaltedPassword, "Server Key").
    pub server_key: Vec<u8>,
}

impl fmt::Debug for ScramKeys {
    // Keys are secrets: only the parameters are shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ScramKeys(i={})", self.iterations)
    }
}

impl ScramKeys {
    /// Derives the keys for `password` (PBKDF2-HMAC-SHA256).
    pub fn derive(password: &[u8], salt: &[u8], iterations: u32) -> ScramKeys {
        use hmac::Mac;
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<sha2::Sha256>(password, salt, iterations, &mut salted);
        let mac = |msg: &[u8]| {
            let mut m = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(&salted)
                .expect("HMAC takes any key length");
            m.update(msg);
            m.finalize().into_bytes().to_vec()
        };
        let client_key = mac(b"Client Key");
        ScramKeys {
            iterations,
            salt: salt.to_vec(),
            stored_key: sha2::Sha256::digest(&client_key).to_vec(),
            server_key: mac(b"Server Key"),
        }
    }

    /// The password-file form `$scram-sha-256$ITER:SALT$STORED:SERVER`.
    pub fn to_entry(&self) -> String {
        format!(
            "$scram-sha-256${}:{}${}:{}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(&self.stored_key),
            B64.encode(&self.server_key)
        )
    }
}

impl fmt::Debug for Hash {
    // Never print hashes, even in debug output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Hash::Sha512 { .. } => "$6$…",
            Hash::Pbkdf2 { .. } => "$7$…",
            Hash::Argon2(_) => "$argon2…",
            Hash::Scram(_) => "$scram-sha-256$…",
        })
    }
}

/// Most PBKDF2 iterations accepted from a file: bounds the CPU one login can cost.
const MAX_ITERATIONS: u32 = 10_000_000;

/// A loaded password file.
#[derive(Debug, Clone, Default)]
pub struct PasswordFile {
    /// By username. Usernames are unique; a later line for the same user wins, as in Mosquitto.
    users: HashMap<String, Hash>,
}

/// A password file that cannot be used: where and why (never the hash itself).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_name}:{line}: {reason}")]
pub struct PasswordFileError {
    pub source_name: String,
    /// 1-based line number; 0 for errors about the whole file.
    pub line: usize,
    pub reason: String,
}

impl PasswordFile {
    /// Parses the text of a password file.
    pub fn parse(text: &str, source_name: &str) -> Result<PasswordFile, PasswordFileError> {
        let mut users = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim_end_matches('\r');
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |reason: String| PasswordFileError {
                source_name: source_name.into(),
                line: i + 1,
                reason,
            };
            let (user, hash) = line
                .split_once(':')
                .ok_or_else(|| err("expected `username:hash`".into()))?;
            if user.is_empty() {
                return Err(err("empty username".into()));
            }
            let parsed = parse_hash(hash).map_err(|r| err(format!("user `{user}`: {r}")))?;
            users.insert(user.to_owned(), parsed);
        }
        Ok(PasswordFile { users })
    }

    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<PasswordFile, PasswordFileError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| PasswordFileError {
            source_name: name.clone(),
            line: 0,
            reason: format!("cannot read: {e}"),
        })?;
        PasswordFile::parse(&text, &name)
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// True when the file has no users.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// `user`'s SCRAM-SHA-256 keys, if the file has a SCRAM entry for them.
    pub fn scram_keys(&self, user: &str) -> Option<ScramKeys> {
        match self.users.get(user)? {
            Hash::Scram(k) => Some(k.clone()),
            _ => None,
        }
    }

    /// Whether `password` is `user`'s. Slow on purpose; call off the async runtime.
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        match self.users.get(user) {
            Some(h) => verify_hash(h, password),
            None => {
                // Same cost as a real check, so timing does not tell which users exist.
                let dummy = Hash::Pbkdf2 {
                    iterations: 101,
                    salt: vec![0; 12],
                    hash: vec![0; 64],
                };
                let _ = verify_hash(&dummy, password);
                false
            }
        }
    }
}

fn parse_hash(s: &str) -> Result<Hash, String> {
    let b64 = |what: &str, v: &str| B64.decode(v).map_err(|_| format!("{what} is not base64"));
    if let Some(rest) = s.strip_prefix("$7$") {
        let mut parts = rest.split('$');
        let (Some(iter), Some(salt), Some(hash), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("expected $7$ITERATIONS$SALT$HASH".into());
        };
        let iterations: u32 = iter
            .parse()
            .map_err(|_| "iteration count is not a number".to_string())?;
        if iterations == 0 || iterations > MAX_ITERATIONS {
            return Err(format!("iteration count must be 1 to {MAX_ITERATIONS}"));
        }
        let hash = b64("hash", hash)?;
        if hash.len() != 64 {
            return Err("a $7$ hash is 64 bytes".into());
        }
        return Ok(Hash::Pbkdf2 {
            iterations,
            salt: b64("salt", salt)?,
            hash,
        });
    }
    if let Some(rest) = s.strip_prefix("$6$") {
        let (salt, hash) = rest
            .split_once('$')
            .ok_or_else(|| "expected $6$SALT$HASH".to_string())?;
        let hash = b64("hash", hash)?;
        if hash.len() != 64 {
            return Err("a $6$ hash is 64 bytes".into());
        }
        return Ok(Hash::Sha512 {
            salt: b64("salt", salt)?,
            hash,
        });
    }
    if let Some(rest) = s.strip_prefix("$scram-sha-256$") {
        let parse = || -> Option<ScramKeys> {
            let (params, keys) = rest.split_once('$')?;
            let (iter, salt) = params.split_once(':')?;
            let (stored, server) = keys.split_once(':')?;
            Some(ScramKeys {
                iterations: iter.parse().ok()?,
                salt: B64.decode(salt).ok()?,
                stored_key: B64.decode(stored).ok()?,
                server_key: B64.decode(server).ok()?,
            })
        };
        let keys = parse().ok_or_else(|| {
            "expected $scram-sha-256$ITERATIONS:SALT$STORED_KEY:SERVER_KEY (base64)".to_string()
        })?;
        if keys.iterations == 0 || keys.iterations > MAX_ITERATIONS {
            return Err(format!("iteration count must be 1 to {MAX_ITERATIONS}"));
        }
        if keys.stored_key.len() != 32 || keys.server_key.len() != 32 {
            return Err("SCRAM-SHA-256 keys are 32 bytes".into());
        }
        return Ok(Hash::Scram(keys));
    }
    if s.starts_with("$argon2") {
        PasswordHash::new(s).map_err(|e| format!("bad argon2 string: {e}"))?;
        return Ok(Hash::Argon2(s.to_owned()));
    }
    Err("unknown hash format (expected $7$, $6$ or $argon2id$; plain-text passwords are not accepted: hash them with `sluice passwd` or mosquitto_passwd -U)".into())
}

fn verify_hash(h: &Hash, password: &[u8]) -> bool {
    match h {
        Hash::Sha512 { salt, hash } => {
            let mut d = Sha512::new();
            d.update(password);
            d.update(salt);
            d.finalize().as_slice().ct_eq(hash).into()
        }
        Hash::Pbkdf2 {
            iterations,
            salt,
            hash,
        } => {
            let mut out = [0u8; 64];
            pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, *iterations, &mut out);
            out.as_slice().ct_eq(hash).into()
        }
        Hash::Scram(k) => {
            let derived = ScramKeys::derive(password, &k.salt, k.iterations);
            derived.stored_key.as_slice().ct_eq(&k.stored_key).into()
        }
        Hash::Argon2(s) => PasswordHash::new(s)
            .map(|parsed| Argon2::default().verify_password(password, &parsed).is_ok())
            .unwrap_or(false),
    }
}

/// An argon2id hash of `password` with a fresh random salt (what `sluice passwd` stores).
pub fn hash_password(password: &[u8]) -> Result<String, String> {
    let mut salt_bytes = [0u8; 16];
    rand::fill(&mut salt_bytes);
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password, &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// A SCRAM-SHA-256 entry for `password` with a fresh salt (4096 iterations, RFC 7677's minimum).
pub fn scram_entry(password: &[u8]) -> String {
    let mut salt = [0u8; 16];
    rand::fill(&mut salt);
    ScramKeys::derive(password, &salt, 4096).to_entry()
}

/// Adds or replaces `user` in the password file at `path` (created if missing), keeping every
/// other line as it was. The file is written to a temporary file and renamed over the old one.
pub fn set_user(path: &Path, user: &str, password: &[u8]) -> Result<(), String> {
    set_user_entry(path, user, &hash_password(password)?)
}

/// [`set_user`] with a prepared hash (argon2id or SCRAM).
pub fn set_user_entry(path: &Path, user: &str, hash: &str) -> Result<(), String> {
    if user.is_empty() || user.contains(':') || user.contains('\n') {
        return Err("a username must be non-empty and contain no ':' or newline".into());
    }
    let old = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(format!("{}: cannot read: {e}", path.display())),
    };
    PasswordFile::parse(&old, &path.display().to_string()).map_err(|e| e.to_string())?;
    let entry = format!("{user}:{hash}");
    let mut out = String::new();
    let mut replaced = false;
    for line in old.lines() {
        if line.split_once(':').is_some_and(|(u, _)| u == user) {
            if !replaced {
                out.push_str(&entry);
                out.push('\n');
                replaced = true;
            }
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !replaced {
        out.push_str(&entry);
        out.push('\n');
    }
    let tmp = path.with_extension("tmp");
    write_private(&tmp, out.as_bytes()).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Writes a file readable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a Mosquitto `$7$` line the way mosquitto_passwd does (PBKDF2-SHA512, 101 rounds).
    fn mosquitto7(user: &str, password: &str, salt: &[u8]) -> String {
        let mut out = [0u8; 64];
        pbkdf2::pbkdf2_hmac::<Sha512>(password.as_bytes(), salt, 101, &mut out);
        format!("{user}:$7$101${}${}", B64.encode(salt), B64.encode(out))
    }

    fn mosquitto6(user: &str, password: &str, salt: &[u8]) -> String {
        let mut d = Sha512::new();
        d.update(password.as_bytes());
        d.update(salt);
        format!(
            "{user}:$6${}${}",
            B64.encode(salt),
            B64.encode(d.finalize())
        )
    }

    #[test]
    fn verifies_each_format() {
        let argon = format!("carol:{}", hash_password(b"c-pw").unwrap());
        let text = format!(
            "# users\n{}\n{}\n{argon}\n",
            mosquitto7("alice", "a-pw", b"saltsaltsalt"),
            mosquitto6("bob", "b-pw", b"pepper")
        );
        let f = PasswordFile::parse(&text, "pw").unwrap();
        assert_eq!(f.len(), 3);
        assert!(f.verify("alice", b"a-pw"));
        assert!(!f.verify("alice", b"a-pW"));
        assert!(f.verify("bob", b"b-pw"));
        assert!(!f.verify("bob", b""));
        assert!(f.verify("carol", b"c-pw"));
        assert!(!f.verify("carol", b"a-pw"));
        assert!(!f.verify("mallory", b"a-pw"));
    }

    #[test]
    fn errors_name_the_line_and_never_the_hash() {
        let e = PasswordFile::parse("ok:$6$c2FsdA==$AAAA\n", "pw").unwrap_err();
        assert_eq!(e.line, 1);
        assert!(e.to_string().contains("64 bytes"), "{e}");
        let e = PasswordFile::parse("\n\nalice:secret\n", "pw").unwrap_err();
        assert_eq!(
            (e.line, e.to_string().contains("secret")),
            (3, false),
            "{e}"
        );
        let e = PasswordFile::parse("nocolon\n", "pw").unwrap_err();
        assert!(e.to_string().starts_with("pw:1:"), "{e}");
        let e = PasswordFile::parse("a:$7$0$AA==$AA==\n", "pw").unwrap_err();
        assert!(e.reason.contains("iteration"), "{e}");
        assert!(!format!(
            "{:?}",
            PasswordFile::parse(&mosquitto7("u", "p", b"s"), "x").unwrap()
        )
        .contains("$7$101$"));
    }

    #[test]
    fn set_user_adds_and_replaces_keeping_other_lines() {
        let dir = std::env::temp_dir().join(format!("sluice-pw-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("passwd");
        std::fs::write(
            &path,
            format!("# keep me\n{}\n", mosquitto7("alice", "a", b"s1")),
        )
        .unwrap();
        set_user(&path, "bob", b"one").unwrap();
        set_user(&path, "bob", b"two").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# keep me\nalice:$7$"));
        assert_eq!(text.matches("bob:").count(), 1);
        let f = PasswordFile::load(&path).unwrap();
        assert!(f.verify("bob", b"two") && !f.verify("bob", b"one") && f.verify("alice", b"a"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(set_user(&path, "a:b", b"x").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
