//! `tokens.reuse`: hand a client back its live token for the same scopes instead of minting
//! another, for callers that fetch a token before every call.
//!
//! The store never holds a token, only its digest, so the token to hand back is kept sealed:
//! its 256 random bits XORed with HMAC-SHA256(client secret, nonce). Only a request bearing
//! the client's secret can open it, and the digest check proves the opening right. Sealing is
//! offered to clients with generated (`sha256:`) secrets only: for a person-chosen argon2id
//! secret, a fast HMAC beside the token digest would be an offline guessing oracle.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::TOKEN_PREFIX;
use crate::secret::{decode_hex32, encode_hex, random_bytes};
use crate::store::TokenDigest;

/// A live token, sealed under its client's secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sealed {
    /// Digest of the token (the store key).
    pub digest: TokenDigest,
    nonce: [u8; 32],
    sealed: [u8; 32],
    /// Issue time, Unix ms.
    pub issued_at_ms: u64,
    /// Expiry, Unix ms.
    pub expires_at_ms: u64,
}

fn pad(secret: &[u8], client: &str, nonce: &[u8; 32]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key");
    mac.update(b"portcullis token reuse\0");
    mac.update(client.as_bytes());
    mac.update(b"\0");
    mac.update(nonce);
    mac.finalize().into_bytes().into()
}

fn xor(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    std::array::from_fn(|i| a[i] ^ b[i])
}

/// The token text for 32 random bytes.
pub fn token_text(raw: &[u8; 32]) -> String {
    let mut t = String::with_capacity(TOKEN_PREFIX.len() + 43);
    t.push_str(TOKEN_PREFIX);
    URL_SAFE_NO_PAD.encode_string(raw, &mut t);
    t
}

/// The store key for a client's token with exactly these scopes.
pub fn reuse_key(client: &str, scope_text: &str) -> String {
    let mut h = Sha256::new();
    h.update(client.as_bytes());
    h.update(b"\0");
    h.update(scope_text.as_bytes());
    encode_hex(&h.finalize()[..16])
}

impl Sealed {
    /// Seals the token made of `raw` under `secret`.
    pub fn seal(
        raw: &[u8; 32],
        secret: &[u8],
        client: &str,
        issued_at_ms: u64,
        expires_at_ms: u64,
    ) -> Sealed {
        let nonce = random_bytes::<32>();
        Sealed {
            digest: TokenDigest::of(&token_text(raw)),
            sealed: xor(raw, &pad(secret, client, &nonce)),
            nonce,
            issued_at_ms,
            expires_at_ms,
        }
    }

    /// The token, if `secret` is the one it was sealed under.
    pub fn open(&self, secret: &[u8], client: &str) -> Option<String> {
        let token = token_text(&xor(&self.sealed, &pad(secret, client, &self.nonce)));
        (TokenDigest::of(&token) == self.digest).then_some(token)
    }

    /// Text form for the store.
    pub fn encode(&self) -> String {
        format!(
            "{} {} {} {} {}",
            self.digest.hex(),
            encode_hex(&self.nonce),
            encode_hex(&self.sealed),
            self.issued_at_ms,
            self.expires_at_ms
        )
    }

    /// Parses [`Sealed::encode`] output.
    pub fn decode(s: &str) -> Option<Sealed> {
        let mut p = s.split(' ');
        Some(Sealed {
            digest: TokenDigest::from_hex(p.next()?)?,
            nonce: decode_hex32(p.next()?)?,
            sealed: decode_hex32(p.next()?)?,
            issued_at_ms: p.next()?.parse().ok()?,
            expires_at_ms: p.next()?.parse().ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_only_with_the_secret_and_client() {
        let raw = random_bytes::<32>();
        let s = Sealed::seal(&raw, b"right", "svc", 1, 2);
        assert_eq!(s.open(b"right", "svc"), Some(token_text(&raw)));
        assert_eq!(s.open(b"wrong", "svc"), None);
        assert_eq!(s.open(b"right", "other"), None);
        let back = Sealed::decode(&s.encode()).unwrap();
        assert_eq!(back, s);
        assert!(!s.encode().contains(&token_text(&raw)[4..]));
        assert_ne!(reuse_key("a", "x y"), reuse_key("a", "x"));
        assert_ne!(reuse_key("a", "b"), reuse_key("b", "a"));
    }
}
