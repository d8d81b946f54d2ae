//! Bounded retries with exponential backoff, for UNAVAILABLE only. The delay is a pure
//! function of the attempt number and a jitter sample, so it is table-tested without time.

use std::time::Duration;

/// How often and how patiently to retry a transient failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total tries, the first included. 1 disables retries.
    pub max_attempts: u32,
    /// Delay before the first retry; doubles each time.
    pub initial_backoff: Duration,
    /// Ceiling of a single delay.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
        }
    }
}

impl RetryPolicy {
    /// No retries at all.
    pub fn none() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// The delay before retry number `failed` (1 = after the first failure), or None when
    /// the attempts are used up. `jitter` in [0, 1) scales the delay into [50%, 100%] so
    /// that many callers cut off by one outage do not retry in lockstep.
    pub fn backoff(&self, failed: u32, jitter: f64) -> Option<Duration> {
        if failed == 0 || failed >= self.max_attempts {
            return None;
        }
        let exp = 2u32.saturating_pow(failed - 1);
        let full = self
            .initial_backoff
            .saturating_mul(exp)
            .min(self.max_backoff);
        let scale = 0.5 + 0.5 * jitter.clamp(0.0, 1.0);
        Some(full.mul_f64(scale))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_table() {
        let p = RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(300),
        };
        let ms = |d: Option<Duration>| d.map(|d| d.as_millis());
        let cases = [
            (0, 0.0, None),
            (1, 0.999_999, Some(99)),
            (1, 0.0, Some(50)),
            (2, 0.0, Some(100)),
            (3, 0.999_999, Some(299)),
            (4, 0.0, Some(150)),
            (5, 0.0, None),
            (40, 0.0, None),
        ];
        for (failed, jitter, want) in cases {
            assert_eq!(ms(p.backoff(failed, jitter)), want, "failed={failed}");
        }
        assert_eq!(RetryPolicy::none().backoff(1, 0.0), None);
        let huge = RetryPolicy {
            max_attempts: u32::MAX,
            ..p
        };
        assert_eq!(ms(huge.backoff(100, 0.0)), Some(150), "no overflow");
    }
}
