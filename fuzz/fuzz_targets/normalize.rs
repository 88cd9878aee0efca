//! `route::normalize` on arbitrary paths. Properties: no panic; an accepted path comes back in
//! normal form (absolute, no `//`, no dot segment, canonical escapes) and is a fixed point; it
//! is refused with `EscapesRoot` exactly when its `..` segments (encoded or not) climb above
//! the root; and below a route prefix, a tail that does not climb out of the prefix never
//! leaves it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::route::{normalize, PathError};

// The same normal-form check as the property tests.
#[path = "../../tests/support/normal_form.rs"]
mod normal_form;
use normal_form::check_normal_form;

/// The lowest depth the segments of `path` reach, reading `%2e`/`%2E` as `.` (the only
/// escape that can make a dot segment); `path` must have passed normalize's validation.
fn lowest_depth(path: &str) -> i64 {
    let mut depth = 0i64;
    let mut lowest = 0i64;
    for segment in path[1..].split('/') {
        let b = segment.as_bytes();
        let mut dots = String::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' && i + 2 < b.len() && b[i + 1] == b'2' && matches!(b[i + 2], b'e' | b'E') {
                dots.push('.');
                i += 3;
            } else if b[i] == b'%' {
                dots.push('x');
                i += 3;
            } else {
                dots.push(b[i] as char);
                i += 1;
            }
        }
        match dots.as_str() {
            "" | "." => {}
            ".." => depth -= 1,
            _ => depth += 1,
        }
        lowest = lowest.min(depth);
    }
    lowest
}

const PREFIX: &str = "/api/v1";

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    match normalize(input) {
        Ok(out) => {
            check_normal_form(input, &out);
            assert!(lowest_depth(input) >= 0, "{input:?} climbed above the root but became {out:?}");
        }
        Err(PathError::EscapesRoot) => {
            assert!(lowest_depth(input) < 0, "{input:?} refused as EscapesRoot without climbing");
        }
        Err(_) => {}
    }

    // Below a route prefix.
    let tail = if input.starts_with('/') { input.to_string() } else { format!("/{input}") };
    let path = format!("{PREFIX}{tail}");
    if let Ok(out) = normalize(&path) {
        check_normal_form(&path, &out);
        if lowest_depth(&tail) >= 0 {
            assert!(
                out == PREFIX || out.starts_with(&format!("{PREFIX}/")),
                "{path:?} -> {out:?} left {PREFIX}"
            );
        }
    }
});
