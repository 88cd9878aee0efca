//! The token request parser: `token::request::parse_form` on arbitrary bodies and
//! `client_credentials` on a Basic header built from the input. Properties: no panic; an
//! accepted form never holds an empty parameter; a form built with a real encoder parses back
//! to what was encoded; Basic credentials encoded as RFC 6749 2.3.1 says decode back to the
//! same id and secret.
#![no_main]

use base64::Engine as _;
use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use portcullis::token::request::{client_credentials, parse_form, TokenForm};

fn basic(value: &[u8]) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_bytes(value) {
        h.insert(AUTHORIZATION, v);
    }
    h
}

fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fuzz_target!(|data: &[u8]| {
    // The first byte says where the form body ends and the credential bytes begin.
    let (form_bytes, cred) = match data.split_first() {
        Some((cut, rest)) => rest.split_at((*cut as usize).min(rest.len())),
        None => (&data[..0], &data[..0]),
    };

    // Arbitrary body, then arbitrary credential bytes: raw, and base64'd behind `Basic`.
    let mut form = match parse_form(form_bytes) {
        Ok(f) => {
            for v in [&f.grant_type, &f.scope, &f.client_id, &f.client_secret, &f.token] {
                assert!(v.as_ref().is_none_or(|s| !s.is_empty()), "empty parameter kept");
            }
            f
        }
        Err(_) => TokenForm::default(),
    };
    let _ = client_credentials(&basic(cred), &mut form);
    let mut raw = b"Basic ".to_vec();
    raw.extend_from_slice(&base64::engine::general_purpose::STANDARD.encode(cred).into_bytes());
    let _ = client_credentials(&basic(&raw), &mut TokenForm::default());
    let _ = client_credentials(&basic(&[b"Basic ", cred].concat()), &mut TokenForm::default());

    // Round trips on UTF-8 input.
    let Ok(text) = std::str::from_utf8(cred) else {
        return;
    };
    let (id, secret) = text.split_at(text.char_indices().nth(text.chars().count() / 2).map_or(text.len(), |(i, _)| i));
    let header = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", enc(id), enc(secret)))
    );
    let creds = client_credentials(&basic(header.as_bytes()), &mut TokenForm::default())
        .unwrap_or_else(|e| panic!("Basic for {id:?}:{secret:?} refused: {e:?}"));
    assert_eq!((creds.id.as_str(), creds.secret.as_str()), (id, secret));

    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", id)
        .append_pair("scope", secret)
        .append_pair("x-unknown", text)
        .finish();
    let parsed = parse_form(body.as_bytes())
        .unwrap_or_else(|e| panic!("encoded form {body:?} refused: {e:?}"));
    let none_if_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
    assert_eq!(parsed.grant_type, none_if_empty(id), "{body:?}");
    assert_eq!(parsed.scope, none_if_empty(secret), "{body:?}");
});
