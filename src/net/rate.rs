//! A token bucket for the rate limits the IO layer enforces by waiting
//! (`--publish-rate-max` per connection, `--connection-rate-max` per listener): `rate_per_s`
//! events a second on average, bursts of up to one second's worth. Pure: `now` is passed in.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate_per_s: f64,
    capacity: f64,
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate_per_s: f64, now: Instant) -> TokenBucket {
        let capacity = rate_per_s.max(1.0);
        TokenBucket { rate_per_s, capacity, tokens: capacity, updated: now }
    }

    /// Takes one token; without one, how long until there is one (wait, then call again).
    pub fn take(&mut self, now: Instant) -> Option<Duration> {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate_per_s).min(self.capacity);
        self.updated = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return None;
        }
        Some(Duration::from_secs_f64((1.0 - self.tokens) / self.rate_per_s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_one_seconds_worth_then_the_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(10.0, t0);
        for _ in 0..10 {
            assert_eq!(bucket.take(t0), None);
        }
        let wait = bucket.take(t0).expect("empty after the burst");
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9, "{wait:?}");
        assert_eq!(bucket.take(t0 + wait), None);
        assert!(bucket.take(t0 + wait).is_some());
    }

    #[test]
    fn over_a_long_run_the_average_is_the_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(250.0, t0);
        let mut now = t0;
        let mut taken = 0u32;
        while now < t0 + Duration::from_secs(10) {
            match bucket.take(now) {
                None => taken += 1,
                Some(wait) => now += wait,
            }
        }
        // 250 burst + 250/s for 10 s.
        assert!((2_740..=2_760).contains(&taken), "{taken}");
    }

    #[test]
    fn a_rate_below_one_still_lets_one_through_at_a_time() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(0.5, t0);
        assert_eq!(bucket.take(t0), None);
        assert_eq!(bucket.take(t0 + Duration::from_secs(1)), Some(Duration::from_secs(1)));
        assert_eq!(bucket.take(t0 + Duration::from_secs(2)), None);
    }
}
