//! `auth::bearer_token` on arbitrary `Authorization` header bytes (one or more headers, split
//! on `\n`, which no header value may hold). Properties: no panic; an accepted token is one
//! header's value after a case-insensitive `Bearer` and spaces, non-empty, RFC 6750 b64token.
#![no_main]

use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use portcullis::auth::bearer_token;

fn is_b64token(t: &str) -> bool {
    let body = t.trim_end_matches('=');
    !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
}

fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMap::new();
    for part in data.split(|b| *b == b'\n') {
        if let Ok(v) = HeaderValue::from_bytes(part) {
            headers.append(AUTHORIZATION, v);
        }
    }
    if let Ok(token) = bearer_token(&headers) {
        assert_eq!(headers.get_all(AUTHORIZATION).iter().count(), 1);
        let value = headers[AUTHORIZATION].as_bytes();
        assert!(value.len() > 7 && value[..7].eq_ignore_ascii_case(b"bearer "), "{value:?}");
        assert!(is_b64token(token), "{token:?}");
        assert!(value.ends_with(token.as_bytes()));
        // RFC 6750 says 1*SP; the parser also skips tabs (lenient, harmless).
        assert!(value[6..value.len() - token.len()].iter().all(|b| matches!(b, b' ' | b'\t')));
    }
});
