//! Injected time, so lease, grace and renewal math is pure and testable without sleeping.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> SystemTime;
}

/// Wall-clock time.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// Time that moves only when told to: rotation, lease, session and revocation logic is tested
/// by advancing it and running one housekeeping pass, with no sleeping.
pub struct ManualClock(parking_lot::Mutex<SystemTime>);

impl ManualClock {
    pub fn new(start: SystemTime) -> Self {
        Self(parking_lot::Mutex::new(start))
    }

    pub fn advance(&self, by: Duration) {
        *self.0.lock() += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.0.lock()
    }
}

/// Seconds since the epoch, for the wire and audit lines.
pub fn unix_secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Milliseconds since the epoch, for atomics.
pub fn unix_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn from_millis(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// When to renew something valid from `start` for `ttl`: at `fraction` of its life, minus up to
/// `jitter` of the ttl so a fleet does not renew in lockstep. `r` is a random number in [0, 1).
pub fn renew_at(
    start: SystemTime,
    ttl: Duration,
    fraction: f64,
    jitter: f64,
    r: f64,
) -> SystemTime {
    let f = (fraction - jitter * r).clamp(0.1, 0.95);
    start + ttl.mul_f64(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renew_at_table() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1000);
        let ttl = Duration::from_secs(100);
        let cases = [
            (0.75, 0.0, 0.0, 75),
            (0.75, 0.1, 0.5, 70),
            (0.75, 0.1, 0.999, 65),
            (2.0, 0.0, 0.0, 95),
            (0.0, 0.0, 0.0, 10),
        ];
        for (f, j, r, want) in cases {
            let got = renew_at(t0, ttl, f, j, r)
                .duration_since(t0)
                .unwrap()
                .as_secs_f64();
            assert!((got - want as f64).abs() < 0.2, "{f} {j} {r}: {got}");
        }
    }
}
