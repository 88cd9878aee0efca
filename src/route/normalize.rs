//! Path normalization before any routing or authorization decision (RFC 3986 6.2.2).
//!
//! What we authorize must be what the upstream acts on. So: unreserved characters are decoded
//! once (`%41` -> `A`, `%2e` -> `.`), dot segments are resolved after that decoding, empty
//! segments are merged, and anything an upstream might read differently from us is refused
//! rather than guessed at: encoded delimiters (`%2F %5C %3F %23 %3B`), raw `\` and `;` (path
//! parameters that some frameworks strip after we decided, advisories E8/E9/T7), `#`, control
//! characters raw or encoded, malformed escapes, and `..` that would climb above the root.

use std::borrow::Cow;

/// Why a path was refused. Every variant is answered with 400 `invalid_request`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathError {
    /// The request target is not an absolute path (`*`, empty, or authority-form).
    NotAbsolute,
    /// `%2F`, `%5C`, `%3F`, `%23` or `%3B`.
    EncodedDelimiter,
    /// A raw `\`.
    Backslash,
    /// A raw `;` (path parameters).
    Semicolon,
    /// A raw `#`.
    Fragment,
    /// A control character, raw or encoded, or a raw byte outside ASCII.
    ControlCharacter,
    /// `%` not followed by two hex digits.
    BadPercentEncoding,
    /// `..` above the root.
    EscapesRoot,
}

impl PathError {
    /// A short description for the error body.
    pub fn describe(self) -> &'static str {
        match self {
            PathError::NotAbsolute => "the request path must start with `/`",
            PathError::EncodedDelimiter => {
                "the path contains an encoded delimiter (%2F, %5C, %3F, %23 or %3B)"
            }
            PathError::Backslash => "the path contains a backslash",
            PathError::Semicolon => "the path contains `;` (path parameters are not accepted)",
            PathError::Fragment => "the request target contains `#`",
            PathError::ControlCharacter => "the path contains a control or non-ASCII character",
            PathError::BadPercentEncoding => "the path contains a malformed percent-escape",
            PathError::EscapesRoot => "the path climbs above the root with `..`",
        }
    }
}

fn hex_value(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Normalizes an origin-form path (no query). Borrows when the path is already normal.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    // First pass: validate every byte, and see whether any rewriting is needed at all.
    let mut needs_rewrite = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => return Err(PathError::Backslash),
            b';' => return Err(PathError::Semicolon),
            b'#' => return Err(PathError::Fragment),
            b if !(0x20..0x7F).contains(&b) => return Err(PathError::ControlCharacter),
            b'%' => {
                let (hi, lo) = match (bytes.get(i + 1), bytes.get(i + 2)) {
                    (Some(h), Some(l)) => (hex_value(*h), hex_value(*l)),
                    _ => return Err(PathError::BadPercentEncoding),
                };
                let v = match (hi, lo) {
                    (Some(h), Some(l)) => h * 16 + l,
                    _ => return Err(PathError::BadPercentEncoding),
                };
                match v {
                    b'/' | b'\\' | b'?' | b'#' | b';' => return Err(PathError::EncodedDelimiter),
                    v if v < 0x20 || v == 0x7F => return Err(PathError::ControlCharacter),
                    _ => {}
                }
                needs_rewrite |= is_unreserved(v)
                    || bytes[i + 1].is_ascii_lowercase()
                    || bytes[i + 2].is_ascii_lowercase();
                i += 3;
                continue;
            }
            b'/' => {
                // `//`, `/.` (covers `/./`, `/..`, trailing `/.`) need the segment pass.
                needs_rewrite |= matches!(bytes.get(i + 1), Some(b'/') | Some(b'.'));
            }
            _ => {}
        }
        i += 1;
    }
    if !needs_rewrite {
        return Ok(Cow::Borrowed(path));
    }

    // Decode unreserved escapes once; keep the rest escaped, with uppercase hex.
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let v =
                hex_value(bytes[i + 1]).unwrap_or(0) * 16 + hex_value(bytes[i + 2]).unwrap_or(0);
            if is_unreserved(v) {
                decoded.push(v as char);
            } else {
                decoded.push('%');
                decoded.push(bytes[i + 1].to_ascii_uppercase() as char);
                decoded.push(bytes[i + 2].to_ascii_uppercase() as char);
            }
            i += 3;
        } else {
            decoded.push(bytes[i] as char);
            i += 1;
        }
    }

    // Resolve segments. A path ending in `/`, `/.` or `/..` names a directory: keep the slash.
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in decoded[1..].split('/') {
        trailing_slash = matches!(segment, "" | "." | "..");
        match segment {
            "" | "." => {}
            ".." => {
                if segments.pop().is_none() {
                    return Err(PathError::EscapesRoot);
                }
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(p: &str) -> String {
        normalize(p)
            .unwrap_or_else(|e| panic!("{p}: {e:?}"))
            .into_owned()
    }

    #[test]
    fn already_normal_paths_borrow() {
        for p in [
            "/",
            "/a",
            "/a/b/",
            "/a.b/c..d/e.",
            "/a%20b",
            "/a:b@c!$&'()*+,=",
        ] {
            assert!(matches!(normalize(p), Ok(Cow::Borrowed(_))), "{p}");
        }
    }

    #[test]
    fn dot_segments_and_empty_segments() {
        assert_eq!(ok("/a/./b"), "/a/b");
        assert_eq!(ok("/a/../b"), "/b");
        assert_eq!(ok("/a/b/.."), "/a/");
        assert_eq!(ok("/a/b/."), "/a/b/");
        assert_eq!(ok("//a///b//"), "/a/b/");
        assert_eq!(ok("/public/../private"), "/private");
        assert_eq!(ok("/a/.."), "/");
        assert_eq!(ok("/."), "/");
        assert_eq!(normalize("/.."), Err(PathError::EscapesRoot));
    }

    #[test]
    fn encoded_dots_are_dots() {
        assert_eq!(ok("/a/%2e%2e/b"), "/b");
        assert_eq!(ok("/a/%2E%2e/b"), "/b");
        assert_eq!(ok("/a/.%2e/b"), "/b");
        assert_eq!(ok("/a/%2e/b"), "/a/b");
        assert_eq!(normalize("/%2e%2e/x"), Err(PathError::EscapesRoot));
    }

    #[test]
    fn unreserved_decoded_once_others_kept_uppercase() {
        assert_eq!(ok("/%41%7e%5F"), "/A~_");
        assert_eq!(ok("/a%20b%c3%a9"), "/a%20b%C3%A9");
        // %25 stays: decoding once must not produce a new escape.
        assert_eq!(ok("/a%252e%252e/x"), "/a%252e%252e/x");
        assert_eq!(ok("/a/%252e%252e/x"), "/a/%252e%252e/x");
    }

    #[test]
    fn ambiguous_paths_refused() {
        use PathError::*;
        let cases = [
            ("/a%2Fb", EncodedDelimiter),
            ("/a%2fb", EncodedDelimiter),
            ("/a%5Cb", EncodedDelimiter),
            ("/a%5cb", EncodedDelimiter),
            ("/a%3fb", EncodedDelimiter),
            ("/a%23b", EncodedDelimiter),
            ("/a%3Bb", EncodedDelimiter),
            ("/a\\b", Backslash),
            ("/a;b", Semicolon),
            ("/admin..;/x", Semicolon),
            ("/..;/admin", Semicolon),
            ("/admin;x=y", Semicolon),
            ("/a#b", Fragment),
            ("/a%00", ControlCharacter),
            ("/a%0a", ControlCharacter),
            ("/a%7F", ControlCharacter),
            ("/a\u{1}", ControlCharacter),
            ("/é", ControlCharacter),
            ("/a%zz", BadPercentEncoding),
            ("/a%4", BadPercentEncoding),
            ("/a%", BadPercentEncoding),
            ("/../x", EscapesRoot),
            ("/a/../../x", EscapesRoot),
            ("*", NotAbsolute),
            ("", NotAbsolute),
            ("a/b", NotAbsolute),
        ];
        for (p, want) in cases {
            assert_eq!(normalize(p), Err(want), "{p}");
        }
    }

    #[test]
    fn normalized_is_a_fixed_point() {
        for p in [
            "/a/./b/../c//d/",
            "/%2e/x/%7e",
            "/a%20b/./c",
            "/x/y/z/../..",
            "/%61%62%63",
        ] {
            let once = ok(p);
            assert_eq!(ok(&once), once, "{p}");
        }
    }
}
