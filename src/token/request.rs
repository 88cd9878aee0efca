//! Parsing a token request: the form body (RFC 6749 4.4.2, 3.2) and the client credentials
//! (2.3.1: HTTP Basic with form-urlencoded id and secret, or the body parameters).

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use http::header::AUTHORIZATION;
use http::HeaderMap;

use crate::error::GatewayError;

/// Basic credentials: accept base64 with or without padding, as clients differ.
const BASIC_B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The parameters of a token request that the gateway reads. Unknown ones are ignored, as
/// RFC 6749 3.2 asks.
#[derive(Default)]
pub struct TokenForm {
    /// `grant_type`.
    pub grant_type: Option<String>,
    /// `scope`.
    pub scope: Option<String>,
    /// `client_id` (client_secret_post).
    pub client_id: Option<String>,
    /// `client_secret` (client_secret_post).
    pub client_secret: Option<String>,
    /// `token` (revocation and introspection; never logged).
    pub token: Option<String>,
}

impl std::fmt::Debug for TokenForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenForm")
            .field("grant_type", &self.grant_type)
            .field("scope", &self.scope)
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Decodes one `application/x-www-form-urlencoded` component: `+` is a space, `%XX` a byte,
/// and the result must be UTF-8. Anything else is malformed, never guessed at.
fn decode_component(raw: &[u8]) -> Option<String> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = (*raw.get(i + 1)? as char).to_digit(16)?;
                let lo = (*raw.get(i + 2)? as char).to_digit(16)?;
                out.push((hi * 16 + lo) as u8);
                i += 2;
            }
            b if (0x21..=0x7E).contains(&b) => out.push(b),
            _ => return None,
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Parses the form body. Repeated parameters are refused (3.2); parameters without a value
/// count as omitted (3.1).
pub fn parse_form(body: &[u8]) -> Result<TokenForm, GatewayError> {
    let mut form = TokenForm::default();
    let mut seen: Vec<String> = Vec::new();
    for pair in body.split(|b| *b == b'&') {
        if pair.is_empty() {
            continue;
        }
        let (name, value) = match pair.iter().position(|b| *b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &b""[..]),
        };
        let malformed = GatewayError::InvalidRequest("the request body is not valid form encoding");
        let name = decode_component(name).ok_or(malformed.clone())?;
        let value = decode_component(value).ok_or(malformed)?;
        if seen.contains(&name) {
            return Err(GatewayError::InvalidRequest(
                "a request parameter is repeated",
            ));
        }
        let slot = match name.as_str() {
            "grant_type" => &mut form.grant_type,
            "scope" => &mut form.scope,
            "client_id" => &mut form.client_id,
            "client_secret" => &mut form.client_secret,
            "token" => &mut form.token,
            _ => {
                seen.push(name);
                continue;
            }
        };
        if !value.is_empty() {
            *slot = Some(value);
        }
        seen.push(name);
    }
    Ok(form)
}

/// A client id and the secret it presented.
pub struct Credentials {
    /// Client id.
    pub id: String,
    /// The presented secret (never logged).
    pub secret: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

fn basic_credentials(value: &[u8]) -> Result<Option<Credentials>, GatewayError> {
    let (scheme, rest) = match value.iter().position(|b| *b == b' ') {
        Some(i) => (&value[..i], value[i..].trim_ascii()),
        None => (value, &b""[..]),
    };
    if !scheme.eq_ignore_ascii_case(b"basic") {
        return Ok(None);
    }
    let malformed = GatewayError::InvalidRequest("the Basic credentials are malformed");
    let decoded = BASIC_B64.decode(rest).map_err(|_| malformed.clone())?;
    let colon = decoded
        .iter()
        .position(|b| *b == b':')
        .ok_or(malformed.clone())?;
    let id = decode_component(&decoded[..colon]).ok_or(malformed.clone())?;
    let secret = decode_component(&decoded[colon + 1..]).ok_or(malformed)?;
    Ok(Some(Credentials { id, secret }))
}

/// The client's credentials, from exactly one of Basic or the body.
pub fn client_credentials(
    headers: &HeaderMap,
    form: &mut TokenForm,
) -> Result<Credentials, GatewayError> {
    let mut auth = headers.get_all(AUTHORIZATION).iter();
    let header = auth.next();
    if auth.next().is_some() {
        return Err(GatewayError::InvalidRequest(
            "more than one Authorization header",
        ));
    }
    match header {
        Some(value) => {
            // Another scheme is an authentication method this server does not support.
            let basic = basic_credentials(value.as_bytes())?.ok_or(GatewayError::InvalidClient)?;
            if form.client_secret.is_some() {
                return Err(GatewayError::InvalidRequest(
                    "use one client authentication method: Basic or body parameters, not both",
                ));
            }
            if form.client_id.as_ref().is_some_and(|id| *id != basic.id) {
                return Err(GatewayError::InvalidRequest(
                    "client_id in the body differs from the Basic credentials",
                ));
            }
            Ok(basic)
        }
        None => match (form.client_id.take(), form.client_secret.take()) {
            (Some(id), Some(secret)) => Ok(Credentials { id, secret }),
            _ => Err(GatewayError::InvalidClient),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn form_basics() {
        let f = parse_form(b"grant_type=client_credentials&scope=a%3Aread+b&extra=1").unwrap();
        assert_eq!(f.grant_type.as_deref(), Some("client_credentials"));
        assert_eq!(f.scope.as_deref(), Some("a:read b"));
        let f = parse_form(b"grant_type=&scope=").unwrap();
        assert!(f.grant_type.is_none() && f.scope.is_none());
    }

    #[test]
    fn form_refusals() {
        for bad in [
            &b"grant_type=a&grant_type=a"[..],
            b"scope=a&scope=",
            b"grant_type=%zz",
            b"grant_type=%4",
            b"grant_type=a b",
            b"grant_type=%ff%fe",
            b"grant_type=\x00",
        ] {
            assert!(
                parse_form(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    fn basic(id: &str, secret: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let v = format!("Basic {}", BASIC_B64.encode(format!("{id}:{secret}")));
        h.insert(AUTHORIZATION, HeaderValue::from_str(&v).unwrap());
        h
    }

    #[test]
    fn basic_is_form_decoded() {
        let mut form = TokenForm::default();
        let c = client_credentials(&basic("svc%3Aone", "a%2Bb+c"), &mut form).unwrap();
        assert_eq!(c.id, "svc:one");
        assert_eq!(c.secret, "a+b c");
        // A secret with a colon: only the first colon splits.
        let c = client_credentials(&basic("id", "x:y"), &mut form).unwrap();
        assert_eq!(c.secret, "x:y");
    }

    #[test]
    fn one_method_only() {
        let mut form = parse_form(b"client_id=a&client_secret=b").unwrap();
        assert_eq!(
            client_credentials(&basic("a", "b"), &mut form)
                .unwrap_err()
                .code(),
            "invalid_request"
        );
        let mut form = parse_form(b"client_id=a&client_secret=b").unwrap();
        let c = client_credentials(&HeaderMap::new(), &mut form).unwrap();
        assert_eq!((c.id.as_str(), c.secret.as_str()), ("a", "b"));
        let mut form = parse_form(b"client_id=a").unwrap();
        assert_eq!(
            client_credentials(&HeaderMap::new(), &mut form)
                .unwrap_err()
                .code(),
            "invalid_client"
        );
        let mut form = TokenForm::default();
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_static("Basic !!!"));
        assert_eq!(
            client_credentials(&h, &mut form).unwrap_err().code(),
            "invalid_request"
        );
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        assert_eq!(
            client_credentials(&h, &mut form).unwrap_err().code(),
            "invalid_client"
        );
    }
}
