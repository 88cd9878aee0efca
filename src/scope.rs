//! Scopes: names interned once per config snapshot, sets held as bitsets so the per-request
//! check is a few word-wise ANDs instead of string comparisons.

use std::collections::HashMap;
use std::sync::Arc;

/// Whether `name` is a valid RFC 6749 3.3 `scope-token`: `%x21 / %x23-5B / %x5D-7E`, non-empty.
pub fn is_scope_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b))
}

/// A set of scopes as bits, indexed by a [`ScopeRegistry`] of the same config snapshot.
/// Shared, so tokens with the same grant share one allocation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScopeSet {
    words: std::sync::Arc<[u64]>,
}

impl ScopeSet {
    fn with_bit(self, index: usize) -> Self {
        let word = index / 64;
        let mut words = self.words.to_vec();
        if words.len() <= word {
            words.resize(word + 1, 0);
        }
        words[word] |= 1 << (index % 64);
        ScopeSet {
            words: words.into(),
        }
    }

    /// True when every scope of `self` is also in `other`.
    #[inline]
    pub fn is_subset_of(&self, other: &ScopeSet) -> bool {
        self.words.iter().enumerate().all(|(i, w)| {
            let theirs = other.words.get(i).copied().unwrap_or(0);
            w & !theirs == 0
        })
    }

    /// The scopes held by both sets.
    pub fn intersection(&self, other: &ScopeSet) -> ScopeSet {
        let words = self
            .words
            .iter()
            .zip(other.words.iter())
            .map(|(a, b)| a & b)
            .collect();
        ScopeSet { words }
    }

    /// True when no scope is in the set.
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|w| *w == 0)
    }

    /// Indices of the scopes in the set, ascending.
    pub fn indices(&self) -> impl Iterator<Item = usize> + '_ {
        self.words.iter().enumerate().flat_map(|(i, w)| {
            (0..64)
                .filter(move |bit| w & (1 << bit) != 0)
                .map(move |bit| i * 64 + bit)
        })
    }
}

/// Every scope name a config snapshot knows (held by a client or demanded by a route), each
/// with its bit index.
#[derive(Debug, Default)]
pub struct ScopeRegistry {
    index: HashMap<Arc<str>, usize>,
    names: Vec<Arc<str>>,
}

impl ScopeRegistry {
    /// Adds `name` if it is new and returns its bit index.
    pub fn intern(&mut self, name: &str) -> usize {
        if let Some(i) = self.index.get(name) {
            return *i;
        }
        let name: Arc<str> = Arc::from(name);
        let i = self.names.len();
        self.names.push(name.clone());
        self.index.insert(name, i);
        i
    }

    /// The set of the given names, interning those not yet known.
    pub fn intern_set<'a>(&mut self, names: impl IntoIterator<Item = &'a str>) -> ScopeSet {
        names
            .into_iter()
            .fold(ScopeSet::default(), |set, n| set.with_bit(self.intern(n)))
    }

    /// The set of the given names; names this registry does not know are left out.
    pub fn set_of<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> ScopeSet {
        names
            .into_iter()
            .fold(ScopeSet::default(), |set, n| match self.index.get(n) {
                Some(i) => set.with_bit(*i),
                None => set,
            })
    }

    /// The index of a known name.
    pub fn get(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    /// The names in `set`, in interning order.
    pub fn names<'a>(&'a self, set: &'a ScopeSet) -> impl Iterator<Item = &'a Arc<str>> + 'a {
        set.indices().filter_map(|i| self.names.get(i))
    }

    /// The names in `set`, space-separated (RFC 6749 3.3).
    pub fn join(&self, set: &ScopeSet) -> String {
        let mut out = String::new();
        for name in self.names(set) {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(name);
        }
        out
    }

    /// The names in `set` as the `X-Client-Scopes` value the upstream gets (scope names are
    /// validated printable ASCII, so the header cannot fail; empty if it somehow did).
    pub fn header(&self, set: &ScopeSet) -> http::HeaderValue {
        http::HeaderValue::from_str(&self.join(set)).unwrap_or(http::HeaderValue::from_static(""))
    }

    /// Every known name, in interning order.
    pub fn all(&self) -> &[Arc<str>] {
        &self.names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_token_charset() {
        assert!(is_scope_token("accounts:read"));
        assert!(is_scope_token("a!#[]~"));
        assert!(!is_scope_token(""));
        assert!(!is_scope_token("a b"));
        assert!(!is_scope_token("a\"b"));
        assert!(!is_scope_token("a\\b"));
        assert!(!is_scope_token("é"));
    }

    #[test]
    fn subset_across_word_boundaries() {
        let mut reg = ScopeRegistry::default();
        let names: Vec<String> = (0..130).map(|i| format!("s{i}")).collect();
        for n in &names {
            reg.intern(n);
        }
        let held = reg.set_of(["s0", "s64", "s129"]);
        assert!(reg.set_of(["s129"]).is_subset_of(&held));
        assert!(reg.set_of(["s0", "s64"]).is_subset_of(&held));
        assert!(!reg.set_of(["s1"]).is_subset_of(&held));
        assert!(!reg.set_of(["s128"]).is_subset_of(&held));
        assert!(ScopeSet::default().is_subset_of(&held));
        assert!(ScopeSet::default().is_subset_of(&ScopeSet::default()));
        assert!(!held.is_subset_of(&ScopeSet::default()));
        assert_eq!(reg.join(&held), "s0 s64 s129");
        assert_eq!(reg.set_of(["unknown"]), ScopeSet::default());
    }

    #[test]
    fn intersection_keeps_common() {
        let mut reg = ScopeRegistry::default();
        let a = reg.intern_set(["a", "b", "c"]);
        let b = reg.intern_set(["b", "c", "d"]);
        assert_eq!(reg.join(&a.intersection(&b)), "b c");
    }
}
