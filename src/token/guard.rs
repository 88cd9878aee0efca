//! Brute-force protection for client authentication. Failures are counted per (client id,
//! source address) and per source address: past a few, answers are slowed; past more, the
//! pair (or the whole source) is refused with 429 for a while. A real client is never locked
//! out by someone guessing from elsewhere, since its own pair counts only its own failures.
//! Both maps are bounded, so a flood of made-up ids cannot exhaust memory.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

/// Failures counted within this window.
const WINDOW_MS: u64 = 60_000;
/// Failures of one (client, source) pair before answers slow down.
const SLOW_AFTER: u32 = 3;
/// Failures of one (client, source) pair before it is refused.
const PAIR_LIMIT: u32 = 10;
/// Failures of one source, across ids, before it is refused.
const SOURCE_LIMIT: u32 = 50;
/// How long a refusal lasts.
const BLOCK_MS: u64 = 60_000;
/// Longest added delay.
const MAX_DELAY: Duration = Duration::from_secs(2);
/// Bound on tracked pairs and sources.
const MAX_ENTRIES: usize = 100_000;

#[derive(Clone, Copy, Debug, Default)]
struct Entry {
    failures: u32,
    window_start_ms: u64,
    blocked_until_ms: u64,
}

impl Entry {
    fn fail(&mut self, now: u64, limit: u32) {
        if now.saturating_sub(self.window_start_ms) > WINDOW_MS {
            self.failures = 0;
            self.window_start_ms = now;
        }
        self.failures += 1;
        if self.failures >= limit {
            self.blocked_until_ms = now + BLOCK_MS;
        }
    }

    fn stale(&self, now: u64) -> bool {
        now > self.blocked_until_ms && now.saturating_sub(self.window_start_ms) > WINDOW_MS
    }
}

fn insert_bounded<K: std::hash::Hash + Eq + Clone>(
    map: &mut HashMap<K, Entry>,
    key: &K,
    now: u64,
) -> Entry {
    if map.len() >= MAX_ENTRIES && !map.contains_key(key) {
        map.retain(|_, e| !e.stale(now));
        if map.len() >= MAX_ENTRIES {
            // Still full of live entries: forget an arbitrary one rather than grow.
            if let Some(k) = map.keys().next().cloned() {
                map.remove(&k);
            }
        }
    }
    *map.entry(key.clone()).or_default()
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct FailureGuard {
    pairs: Mutex<HashMap<(String, IpAddr), Entry>>,
    sources: Mutex<HashMap<IpAddr, Entry>>,
}

impl FailureGuard {
    /// `Err(wait)` when this client id from this source may not try now.
    pub fn check(&self, client: &str, source: IpAddr, now: u64) -> Result<(), Duration> {
        let blocked = |until: u64| (now < until).then(|| Duration::from_millis(until - now));
        if let Some(e) = self
            .sources
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&source)
        {
            if let Some(wait) = blocked(e.blocked_until_ms) {
                return Err(wait);
            }
        }
        let pairs = self.pairs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = pairs.get(&(client.to_string(), source)) {
            if let Some(wait) = blocked(e.blocked_until_ms) {
                return Err(wait);
            }
        }
        Ok(())
    }

    /// Counts a failure; returns how long to wait before answering it.
    pub fn failed(&self, client: &str, source: IpAddr, now: u64) -> Duration {
        let key = (client.to_string(), source);
        let failures = {
            let mut pairs = self.pairs.lock().unwrap_or_else(|p| p.into_inner());
            let mut e = insert_bounded(&mut pairs, &key, now);
            e.fail(now, PAIR_LIMIT);
            pairs.insert(key, e);
            e.failures
        };
        {
            let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
            let mut e = insert_bounded(&mut sources, &source, now);
            e.fail(now, SOURCE_LIMIT);
            sources.insert(source, e);
        }
        if failures <= SLOW_AFTER {
            Duration::ZERO
        } else {
            (Duration::from_millis(100) * (1 << (failures - SLOW_AFTER).min(5))).min(MAX_DELAY)
        }
    }

    /// A success clears the pair's count.
    pub fn succeeded(&self, client: &str, source: IpAddr) {
        self.pairs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(client.to_string(), source));
    }

    /// Forgets what has expired.
    pub fn sweep(&self, now: u64) {
        self.pairs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, e| !e.stale(now));
        self.sources
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, e| !e.stale(now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slows_then_blocks_the_pair_only() {
        let g = FailureGuard::default();
        let attacker: IpAddr = "10.0.0.9".parse().unwrap();
        let owner: IpAddr = "10.0.0.1".parse().unwrap();
        let mut delays = Vec::new();
        for _ in 0..PAIR_LIMIT {
            assert!(g.check("svc", attacker, 1_000).is_ok());
            delays.push(g.failed("svc", attacker, 1_000));
        }
        assert_eq!(delays[0], Duration::ZERO);
        assert!(delays[PAIR_LIMIT as usize - 1] > Duration::ZERO);
        assert!(delays.iter().all(|d| *d <= MAX_DELAY));
        assert!(g.check("svc", attacker, 1_000).is_err());
        // The real client elsewhere is not locked out.
        assert!(g.check("svc", owner, 1_000).is_ok());
        // The block ends.
        assert!(g.check("svc", attacker, 1_000 + BLOCK_MS + 1).is_ok());
    }

    #[test]
    fn a_source_guessing_many_ids_is_blocked() {
        let g = FailureGuard::default();
        let src: IpAddr = "10.0.0.9".parse().unwrap();
        for i in 0..SOURCE_LIMIT {
            g.failed(&format!("id{i}"), src, 5_000);
        }
        assert!(g.check("fresh-id", src, 5_000).is_err());
    }

    #[test]
    fn success_resets_and_maps_stay_bounded() {
        let g = FailureGuard::default();
        let src: IpAddr = "10.0.0.2".parse().unwrap();
        g.failed("svc", src, 0);
        g.succeeded("svc", src);
        assert!(g.pairs.lock().unwrap().is_empty());
        for i in 0..(MAX_ENTRIES + 10) {
            g.failed(&format!("x{i}"), src, 0);
        }
        assert!(g.pairs.lock().unwrap().len() <= MAX_ENTRIES);
    }
}
