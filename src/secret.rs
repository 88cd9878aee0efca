//! Client secrets at rest: `sha256:<hex>` or an argon2id PHC string, checked in constant time.
//! Also the generator for new secrets and tokens (OS randomness, URL-safe text).

use std::fmt;

use argon2::password_hash::{PasswordHash, PasswordVerifier};
use argon2::Argon2;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The prefix of secrets made by `portcullis client new`, so scanners can spot leaked ones.
pub const SECRET_PREFIX: &str = "pcs_";

/// A client secret as stored in config. Its `Debug` never shows the hash.
#[derive(Clone)]
pub enum SecretHash {
    /// SHA-256 of the secret. Fine for generated secrets, which carry 256 random bits.
    Sha256([u8; 32]),
    /// An argon2id PHC string, for secrets chosen by people.
    Argon2id(Box<str>),
}

impl fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretHash::Sha256(_) => f.write_str("SecretHash::Sha256(<redacted>)"),
            SecretHash::Argon2id(_) => f.write_str("SecretHash::Argon2id(<redacted>)"),
        }
    }
}

impl SecretHash {
    /// Parses the `secret_hash` config value.
    pub fn parse(s: &str) -> Result<SecretHash, &'static str> {
        if let Some(hex) = s.strip_prefix("sha256:") {
            return decode_hex32(hex)
                .map(SecretHash::Sha256)
                .ok_or("a sha256 secret_hash needs exactly 64 hex digits after `sha256:`");
        }
        if s.starts_with("$argon2id$") {
            let parsed = PasswordHash::new(s).map_err(|_| "not a valid argon2id PHC string")?;
            if parsed.hash.is_none() || parsed.salt.is_none() {
                return Err("the argon2id PHC string lacks its salt or hash");
            }
            return Ok(SecretHash::Argon2id(s.into()));
        }
        Err("secret_hash must be `sha256:<64 hex>` or an argon2id PHC string `$argon2id$...`")
    }

    /// Hashes a secret into the `sha256:` form.
    pub fn sha256_of(secret: &[u8]) -> SecretHash {
        SecretHash::Sha256(Sha256::digest(secret).into())
    }

    /// The value to write in config.
    pub fn to_config_value(&self) -> String {
        match self {
            SecretHash::Sha256(d) => format!("sha256:{}", encode_hex(d)),
            SecretHash::Argon2id(phc) => phc.to_string(),
        }
    }

    /// Whether this hash is expensive to check (argon2id): callers move it off the reactor.
    pub fn is_slow(&self) -> bool {
        matches!(self, SecretHash::Argon2id(_))
    }

    /// Checks `presented` against the hash. The comparison of the SHA-256 form is constant
    /// time; argon2's verifier compares in constant time itself.
    pub fn verify(&self, presented: &[u8]) -> bool {
        match self {
            SecretHash::Sha256(expected) => {
                let got: [u8; 32] = Sha256::digest(presented).into();
                got.ct_eq(expected).into()
            }
            SecretHash::Argon2id(phc) => match PasswordHash::new(phc) {
                Ok(parsed) => Argon2::default()
                    .verify_password(presented, &parsed)
                    .is_ok(),
                Err(_) => false,
            },
        }
    }
}

/// Successful checks of slow (argon2id) secrets, so a well-behaved client pays argon2 once
/// per config snapshot rather than on every token request. Keyed by an HMAC of the client id
/// and the presented secret under a key drawn per snapshot: the cache never holds a secret,
/// and only the exact secret that verified finds its entry; a wrong secret misses and pays
/// argon2 in full. Bounded; a reload starts an empty one (a new snapshot, a new cache).
#[derive(Debug)]
pub struct VerifiedSecrets {
    key: [u8; 32],
    verified: std::sync::Mutex<std::collections::HashMap<[u8; 32], u64>>,
}

/// At most this many (client, secret) pairs are remembered; when full, it starts over.
const VERIFIED_MAX: usize = 10_000;

impl Default for VerifiedSecrets {
    fn default() -> Self {
        VerifiedSecrets {
            key: random_bytes::<32>(),
            verified: std::sync::Mutex::default(),
        }
    }
}

impl VerifiedSecrets {
    /// The cache key of `presented` for `client`.
    pub fn key_of(&self, client: &str, presented: &[u8]) -> [u8; 32] {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<Sha256>::new_from_slice(&self.key)
            .expect("HMAC takes a key of any length");
        mac.update(&(client.len() as u64).to_be_bytes());
        mac.update(client.as_bytes());
        mac.update(presented);
        mac.finalize().into_bytes().into()
    }

    /// The id of the secret that `key` verified against, if it did in this snapshot.
    pub fn get(&self, key: &[u8; 32]) -> Option<u64> {
        self.verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .copied()
    }

    /// Remembers that `key` verified against secret `secret_id`.
    pub fn insert(&self, key: [u8; 32], secret_id: u64) {
        let mut verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if verified.len() >= VERIFIED_MAX {
            verified.clear();
        }
        verified.insert(key, secret_id);
    }
}

/// `n` bytes from the operating system's RNG.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    // The OS RNG failing means the process cannot mint anything safely.
    getrandom::fill(&mut buf).expect("the operating system's random number generator failed");
    buf
}

/// A new client secret: `pcs_` and 256 random bits, URL-safe.
pub fn generate_secret() -> String {
    let mut s = String::with_capacity(SECRET_PREFIX.len() + 43);
    s.push_str(SECRET_PREFIX);
    URL_SAFE_NO_PAD.encode_string(random_bytes::<32>(), &mut s);
    s
}

/// Lowercase hex.
pub fn encode_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Parses 64 hex digits (either case).
pub fn decode_hex32(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_round_trip() {
        let h = SecretHash::sha256_of(b"s3cret");
        let text = h.to_config_value();
        assert_eq!(
            text,
            "sha256:1ec1c26b50d5d3c58d9583181af8076655fe00756bf7285940ba3670f99fcba0"
        );
        let parsed = SecretHash::parse(&text).unwrap();
        assert!(parsed.verify(b"s3cret"));
        assert!(!parsed.verify(b"s3cre"));
        assert!(!parsed.verify(b""));
        let upper = SecretHash::parse(&text.to_uppercase().replace("SHA256:", "sha256:")).unwrap();
        assert!(upper.verify(b"s3cret"));
    }

    #[test]
    fn rejects_malformed_hashes() {
        assert!(SecretHash::parse("sha256:abc").is_err());
        assert!(SecretHash::parse(&format!("sha256:{}", "g".repeat(64))).is_err());
        assert!(SecretHash::parse("md5:abc").is_err());
        assert!(SecretHash::parse("plaintext").is_err());
        assert!(SecretHash::parse("$argon2id$garbage").is_err());
        assert!(SecretHash::parse("$argon2i$v=19$m=16,t=2,p=1$c2FsdHNhbHQ$aGFzaA").is_err());
    }

    #[test]
    fn argon2id_verifies() {
        use argon2::password_hash::{PasswordHasher, SaltString};
        use argon2::{Algorithm, Params, Version};
        let params = Params::new(1024, 1, 1, None).unwrap();
        let a = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let phc = a.hash_password(b"hunter2", &salt).unwrap().to_string();
        let h = SecretHash::parse(&phc).unwrap();
        assert!(h.is_slow());
        assert!(h.verify(b"hunter2"));
        assert!(!h.verify(b"hunter3"));
    }

    #[test]
    fn debug_hides_hash() {
        let h = SecretHash::sha256_of(b"x");
        assert!(!format!("{h:?}").contains(&encode_hex(&Sha256::digest(b"x"))));
    }

    #[test]
    fn generated_secrets_are_long_and_distinct() {
        let a = generate_secret();
        let b = generate_secret();
        assert_ne!(a, b);
        assert!(a.starts_with(SECRET_PREFIX));
        assert_eq!(a.len(), SECRET_PREFIX.len() + 43);
    }
}
