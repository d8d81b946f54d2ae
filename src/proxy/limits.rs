//! Token buckets per session and per destination host: a request over the rate gets 429 with
//! `Retry-After` (whole seconds until a token is back).

use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::{Duration, Instant};

pub struct Buckets {
    rate: f64,
    burst: f64,
    state: Mutex<HashMap<String, (f64, Instant)>>,
}

impl Buckets {
    /// `rate` tokens per second (0: unlimited), at most `burst` banked.
    pub fn new((rate, burst): (f64, f64)) -> Self {
        Self {
            rate,
            burst,
            state: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for `key` at `now`; Err(wait) when there is none.
    pub fn take(&self, key: &str, now: Instant) -> Result<(), Duration> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let mut st = self.state.lock();
        if st.len() >= 8192 && !st.contains_key(key) {
            let full = Duration::from_secs_f64(self.burst / self.rate);
            st.retain(|_, (_, t)| now.duration_since(*t) < full);
        }
        let (tokens, last) = st.entry(key.to_string()).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.rate).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / self.rate))
        }
    }
}

/// `Retry-After` for a wait: whole seconds, at least 1.
pub fn retry_after(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0).max(u64::from(wait.as_secs() == 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_refills_at_rate() {
        let b = Buckets::new((2.0, 2.0));
        let t0 = Instant::now();
        assert!(b.take("s", t0).is_ok());
        assert!(b.take("s", t0).is_ok());
        let wait = b.take("s", t0).unwrap_err();
        assert!(wait <= Duration::from_millis(500));
        assert_eq!(retry_after(wait), 1);
        assert!(b.take("other", t0).is_ok());
        assert!(b.take("s", t0 + Duration::from_millis(500)).is_ok());
        assert!(Buckets::new((0.0, 1.0)).take("s", t0).is_ok());
        assert_eq!(retry_after(Duration::from_millis(2500)), 3);
    }
}
