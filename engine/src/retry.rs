//! Retry policy: exponential backoff with jitter, capped, and a step timeout.

use std::time::Duration;

use rand::Rng;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RetryPolicy {
    /// Attempts per visit of a state, the first included. 1 means no retry.
    pub max_attempts: u32,
    /// Delay before the second attempt; doubles each time after.
    #[serde(with = "humantime_ms")]
    pub initial_delay: Duration,
    #[serde(with = "humantime_ms")]
    pub max_delay: Duration,
    /// Fraction of the delay randomised (0.0 to 1.0), so that runs failing together
    /// on one outage do not all retry in the same instant.
    pub jitter: f64,
    /// How long one attempt of a step may run before it counts as a retryable failure.
    #[serde(with = "humantime_ms")]
    pub step_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(300),
            jitter: 0.2,
            step_timeout: Duration::from_secs(300),
        }
    }
}

impl RetryPolicy {
    /// The delay before attempt `next_attempt` (2 for the first retry).
    pub fn backoff(&self, next_attempt: u32) -> Duration {
        self.backoff_with(next_attempt, rand::rng().random::<f64>())
    }

    /// Deterministic core of [`RetryPolicy::backoff`]: `unit` in [0, 1) picks where in
    /// the jitter window the delay lands.
    pub fn backoff_with(&self, next_attempt: u32, unit: f64) -> Duration {
        let exponent = next_attempt.saturating_sub(2).min(30);
        let base = self
            .initial_delay
            .saturating_mul(1u32 << exponent)
            .min(self.max_delay);
        let jitter = self.jitter.clamp(0.0, 1.0);
        // Jitter shrinks the delay (never grows it), so max_delay stays a true cap.
        let factor = 1.0 - jitter * unit.clamp(0.0, 1.0);
        base.mul_f64(factor)
    }

    /// Whether another attempt is allowed after `attempt` failed.
    pub fn allows_retry_after(&self, attempt: u32) -> bool {
        attempt < self.max_attempts
    }
}

mod humantime_ms {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 6,
            initial_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(10),
            jitter: 0.5,
            step_timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn backoff_doubles_from_the_initial_delay_and_is_capped() {
        let p = policy();
        let delays: Vec<u64> = (2..=7).map(|a| p.backoff_with(a, 0.0).as_secs()).collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 10, 10]);
    }

    #[test]
    fn jitter_only_shortens_the_delay_within_its_fraction() {
        let p = policy();
        assert_eq!(p.backoff_with(3, 0.999_999).as_millis(), 1000);
        for _ in 0..100 {
            let d = p.backoff(4);
            assert!(
                d <= Duration::from_secs(4) && d >= Duration::from_secs(2),
                "{d:?}"
            );
        }
    }

    #[test]
    fn retries_stop_at_max_attempts() {
        let p = policy();
        assert!(p.allows_retry_after(5));
        assert!(!p.allows_retry_after(6));
    }
}
