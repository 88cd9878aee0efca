//! Rate limits (`clients[].rate_limit`, `routes[].rate_limit`) with GCRA: one timestamp per
//! key (the theoretical arrival time), so a check is a compare and an add. With the Redis
//! store the timestamp lives in Redis and one Lua script checks and updates it atomically,
//! so every replica shares the limit; when Redis does not answer, each replica falls back to
//! its own limiter (never to no limit).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::store::{now_ms, Store};

/// `rate_limit: {per_second, burst}`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    /// Sustained requests per second.
    pub per_second: f64,
    /// Requests allowed at once above the sustained rate.
    pub burst: u32,
}

impl Rate {
    /// Emission interval, in microseconds.
    fn interval_us(&self) -> u64 {
        (1_000_000.0 / self.per_second).ceil().max(1.0) as u64
    }

    /// How far ahead of now the arrival time may run, in microseconds.
    fn tolerance_us(&self) -> u64 {
        self.interval_us() * u64::from(self.burst.max(1) - 1)
    }
}

/// The answer to one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Go ahead; `remaining` more requests would pass right now.
    Allowed {
        /// Requests left in the burst.
        remaining: u32,
    },
    /// Over the limit; try again after this long.
    Limited {
        /// Wait before the next request can pass.
        retry_after: Duration,
    },
}

fn gcra(tat_us: u64, now_us: u64, rate: &Rate) -> (Verdict, Option<u64>) {
    let (t, tau) = (rate.interval_us(), rate.tolerance_us());
    let tat = tat_us.max(now_us);
    if tat - now_us > tau {
        let wait = tat - now_us - tau;
        return (
            Verdict::Limited {
                retry_after: Duration::from_micros(wait),
            },
            None,
        );
    }
    let next = tat + t;
    let used = next - now_us;
    let remaining = ((tau + t).saturating_sub(used) / t) as u32;
    (Verdict::Allowed { remaining }, Some(next))
}

fn now_us() -> u64 {
    now_ms() * 1000
        + u64::from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_micros() % 1000)
                .unwrap_or(0),
        )
}

/// The limiter of one replica: keys are `c:<client>` and `r:<route>` (config ids only, so
/// the map is bounded by the config).
#[derive(Debug, Default)]
pub struct Limiter {
    local: RwLock<HashMap<Arc<str>, Arc<AtomicU64>>>,
}

const SCRIPT: &str = r"
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local now = tonumber(ARGV[1])
local t = tonumber(ARGV[2])
local tau = tonumber(ARGV[3])
if tat < now then tat = now end
if tat - now > tau then return {0, tat - now - tau} end
local nxt = tat + t
redis.call('SET', KEYS[1], nxt, 'PX', math.floor((nxt - now) / 1000) + 1000)
return {1, math.floor((tau + t - (nxt - now)) / t)}
";

impl Limiter {
    fn slot(&self, key: &Arc<str>) -> Arc<AtomicU64> {
        if let Some(s) = self
            .local
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
        {
            return s.clone();
        }
        self.local
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.clone())
            .or_default()
            .clone()
    }

    /// Checks and counts one request against this replica's state.
    pub fn check_local(&self, key: &Arc<str>, rate: &Rate) -> Verdict {
        let slot = self.slot(key);
        let now = now_us();
        let mut tat = slot.load(Ordering::Acquire);
        loop {
            let (verdict, next) = gcra(tat, now, rate);
            let Some(next) = next else { return verdict };
            match slot.compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return verdict,
                Err(seen) => tat = seen,
            }
        }
    }

    /// Checks one request: in Redis when the store is Redis (shared by replicas), else, or
    /// when Redis does not answer, locally.
    pub async fn check(&self, store: &Store, key: &Arc<str>, rate: &Rate) -> Verdict {
        if let Store::Redis(redis) = store {
            let script = redis::Script::new(SCRIPT);
            let mut inv = script.prepare_invoke();
            inv.key(format!("{}rl:{key}", redis.key_prefix()))
                .arg(now_us())
                .arg(rate.interval_us())
                .arg(rate.tolerance_us());
            match redis.eval::<(i64, i64)>(&inv).await {
                Ok((1, remaining)) => {
                    return Verdict::Allowed {
                        remaining: remaining.max(0) as u32,
                    }
                }
                Ok((_, wait_us)) => {
                    return Verdict::Limited {
                        retry_after: Duration::from_micros(wait_us.max(0) as u64),
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "shared rate limit unavailable; limiting locally")
                }
            }
        }
        self.check_local(key, rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_sustained_rate() {
        let rate = Rate {
            per_second: 10.0,
            burst: 3,
        };
        let mut tat = 0;
        let now = 1_000_000_000;
        let mut allowed = 0;
        for _ in 0..5 {
            match gcra(tat, now, &rate) {
                (Verdict::Allowed { .. }, Some(next)) => {
                    allowed += 1;
                    tat = next;
                }
                (Verdict::Limited { retry_after }, _) => {
                    assert!(retry_after <= Duration::from_millis(100), "{retry_after:?}");
                }
                _ => unreachable!(),
            }
        }
        assert_eq!(allowed, 3, "a burst of 3 at once");
        // 100 ms later one more passes.
        assert!(matches!(
            gcra(tat, now + 100_000, &rate).0,
            Verdict::Allowed { .. }
        ));
    }

    #[test]
    fn remaining_counts_down() {
        let rate = Rate {
            per_second: 1.0,
            burst: 3,
        };
        let (v, next) = gcra(0, 10_000_000, &rate);
        assert_eq!(v, Verdict::Allowed { remaining: 2 });
        let (v, next) = gcra(next.unwrap(), 10_000_000, &rate);
        assert_eq!(v, Verdict::Allowed { remaining: 1 });
        let (v, _) = gcra(next.unwrap(), 10_000_000, &rate);
        assert_eq!(v, Verdict::Allowed { remaining: 0 });
    }

    #[test]
    fn local_limiter_is_shared_by_key() {
        let l = Limiter::default();
        let rate = Rate {
            per_second: 1.0,
            burst: 2,
        };
        let k: Arc<str> = "c:a".into();
        assert!(matches!(l.check_local(&k, &rate), Verdict::Allowed { .. }));
        assert!(matches!(l.check_local(&k, &rate), Verdict::Allowed { .. }));
        assert!(matches!(l.check_local(&k, &rate), Verdict::Limited { .. }));
        assert!(matches!(
            l.check_local(&"c:b".into(), &rate),
            Verdict::Allowed { .. }
        ));
    }
}
