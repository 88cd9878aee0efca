//! What a normalized path must look like, checked by the property tests and by the
//! `normalize` fuzz target (which includes this file with `#[path]`): one definition of the
//! normal form for both.

use portcullis::route::normalize;

/// An RFC 3986 unreserved character: its escape is decoded by normalization.
pub fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// The value of one hex digit.
pub fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Every property a normalized path must have; panics naming `input` when one fails.
pub fn check_normal_form(input: &str, out: &str) {
    assert!(out.starts_with('/'), "{input:?} -> {out:?}: not absolute");
    for bad in ["/./", "/../", "//"] {
        assert!(!out.contains(bad), "{input:?} -> {out:?}: contains {bad:?}");
    }
    // No dot or empty segment anywhere (an empty last segment is the kept trailing slash).
    let segments: Vec<&str> = out[1..].split('/').collect();
    for (i, s) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        assert!(
            !(matches!(*s, "." | "..") || (s.is_empty() && !last)),
            "{input:?} -> {out:?}: segment {s:?} left"
        );
    }
    // Escapes are canonical: upper-case hex, never an unreserved character.
    let b = out.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let (h, l) = (b[i + 1], b[i + 2]);
            assert!(
                h.is_ascii_hexdigit()
                    && l.is_ascii_hexdigit()
                    && !h.is_ascii_lowercase()
                    && !l.is_ascii_lowercase(),
                "{input:?} -> {out:?}: escape not canonical"
            );
            let v = hex(h).unwrap() * 16 + hex(l).unwrap();
            assert!(
                !is_unreserved(v),
                "{input:?} -> {out:?}: unreserved {:?} still escaped",
                v as char
            );
            i += 3;
        } else {
            assert!(
                (0x20..0x7F).contains(&b[i]) && !matches!(b[i], b'\\' | b';' | b'#'),
                "{input:?} -> {out:?}: byte {:#x} left",
                b[i]
            );
            i += 1;
        }
    }
    // A fixed point. (Not asserted: that it comes back `Cow::Borrowed`. A normal path with a
    // segment starting with `.`, such as `/.well-known` or `/a/...`, takes the rewriting pass
    // and comes back `Owned` but equal; that costs an allocation, not correctness.)
    match normalize(out) {
        Ok(again) => assert_eq!(again, out, "{input:?} -> {out:?}: not a fixed point"),
        Err(e) => panic!("{input:?} -> {out:?}: normalizing again failed with {e:?}"),
    }
}
