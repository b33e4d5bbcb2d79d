//! Which provider targets are resting: a target that failed `after` times in a row, or
//! that asked for a pause with `Retry-After`, is tried only after the others until its
//! cooldown ends. State outlives reloads, so a reload does not send traffic back to a
//! target that is down.
//!
//! With a shared store, a cooldown that starts here is published there, and the rests other
//! instances published are read at most once a second (by the request that finds the
//! last read a second old), so every instance rests a failing target within a second of
//! the first that saw it fail. Failure counts stay per instance.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The longest pause a provider's `Retry-After` can impose on a target.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// How often the rests other instances published are read.
pub const SYNC_INTERVAL_MS: u64 = 1_000;

#[derive(Default)]
pub struct Cooldowns {
    targets: Mutex<HashMap<String, Health>>,
    /// Unix ms before which the shared rests are not read again.
    next_sync_ms: AtomicU64,
}

#[derive(Default)]
struct Health {
    failures: u32,
    until: Option<Instant>,
}

/// When a target's failures send it to rest.
#[derive(Debug, Clone, Copy)]
pub struct CooldownPolicy {
    pub after_failures: u32,
    pub rest: Duration,
}

impl Cooldowns {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Health>> {
        self.targets.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn cooling(&self, target: &str, now: Instant) -> bool {
        self.lock()
            .get(target)
            .and_then(|h| h.until)
            .is_some_and(|until| now < until)
    }

    /// Whether this caller should read the shared rests now (one caller a second wins).
    pub fn sync_due(&self, now_ms: u64) -> bool {
        let due = self.next_sync_ms.load(Ordering::Relaxed);
        now_ms >= due
            && self
                .next_sync_ms
                .compare_exchange(
                    due,
                    now_ms + SYNC_INTERVAL_MS,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    /// Rests `target` until `until` at least (another instance sent it to rest).
    pub fn rest_until(&self, target: &str, until: Instant) {
        let mut targets = self.lock();
        let health = targets.entry(target.to_string()).or_default();
        health.until = Some(health.until.map_or(until, |u| u.max(until)));
    }

    /// Counts a failure; returns the end of the cooldown it started, if it started one. A
    /// `Retry-After` starts one at once, for as long as it asks (up to [`MAX_RETRY_AFTER`]).
    pub fn failed(
        &self,
        target: &str,
        now: Instant,
        policy: CooldownPolicy,
        retry_after: Option<Duration>,
    ) -> Option<Instant> {
        let mut targets = self.lock();
        let health = targets.entry(target.to_string()).or_default();
        health.failures = health.failures.saturating_add(1);
        let rest = match retry_after.filter(|wait| !wait.is_zero()) {
            Some(wait) => Some(wait.min(MAX_RETRY_AFTER)),
            None if health.failures >= policy.after_failures.max(1) => Some(policy.rest),
            None => None,
        };
        let rest = rest?;
        let until = now + rest;
        let started = health.until.is_none_or(|u| u <= now);
        health.until = Some(health.until.map_or(until, |u| u.max(until)));
        health.failures = 0;
        started.then_some(until)
    }

    /// A target answered: its failures are forgiven and its rest ends. Returns whether it
    /// was resting (a shared rest is then ended too).
    pub fn succeeded(&self, target: &str) -> bool {
        match self.lock().get_mut(target) {
            Some(h) => {
                h.failures = 0;
                h.until.take().is_some()
            }
            None => false,
        }
    }
}

/// `Retry-After` in seconds, or `retry-after-ms` (which the OpenAI and Anthropic SDKs read);
/// an HTTP date is not honoured (providers send seconds).
pub fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    let read = |name: &str| -> Option<f64> {
        headers.get(name)?.to_str().ok()?.trim().parse::<f64>().ok()
    };
    let seconds = read("retry-after-ms")
        .map(|ms| ms / 1000.0)
        .or_else(|| read("retry-after"))?;
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds.min(1e6)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: CooldownPolicy = CooldownPolicy {
        after_failures: 3,
        rest: Duration::from_secs(30),
    };

    #[test]
    fn repeated_failures_rest_a_target_and_a_success_forgives() {
        let c = Cooldowns::default();
        let t0 = Instant::now();
        assert!(c.failed("openai/gpt-4o", t0, POLICY, None).is_none());
        assert!(c.failed("openai/gpt-4o", t0, POLICY, None).is_none());
        assert!(!c.cooling("openai/gpt-4o", t0));
        assert_eq!(
            c.failed("openai/gpt-4o", t0, POLICY, None),
            Some(t0 + Duration::from_secs(30)),
            "third in a row"
        );
        assert!(c.cooling("openai/gpt-4o", t0 + Duration::from_secs(29)));
        assert!(!c.cooling("openai/gpt-4o", t0 + Duration::from_secs(30)));
        assert!(!c.cooling("azure/gpt-4o-prod", t0), "targets rest apart");

        c.failed("a", t0, POLICY, None);
        c.failed("a", t0, POLICY, None);
        assert!(!c.succeeded("a"), "was not resting");
        assert!(
            c.failed("a", t0, POLICY, None).is_none(),
            "the count started again"
        );
    }

    #[test]
    fn retry_after_rests_at_once_for_as_long_as_asked() {
        let c = Cooldowns::default();
        let t0 = Instant::now();
        assert!(c
            .failed("p", t0, POLICY, Some(Duration::from_secs(5)))
            .is_some());
        assert!(c.cooling("p", t0 + Duration::from_secs(4)));
        assert!(!c.cooling("p", t0 + Duration::from_secs(5)));
        c.failed("q", t0, POLICY, Some(Duration::from_secs(86_400)));
        assert!(!c.cooling("q", t0 + MAX_RETRY_AFTER), "capped");
        assert!(
            c.failed("r", t0, POLICY, Some(Duration::ZERO)).is_none(),
            "no wait asked"
        );
        assert!(!c.cooling("r", t0));
    }

    #[test]
    fn a_rest_from_another_instance_is_taken_and_a_success_ends_it() {
        let c = Cooldowns::default();
        let t0 = Instant::now();
        c.rest_until("p", t0 + Duration::from_secs(10));
        assert!(c.cooling("p", t0 + Duration::from_secs(9)));
        c.rest_until("p", t0 + Duration::from_secs(2));
        assert!(
            c.cooling("p", t0 + Duration::from_secs(9)),
            "the later end holds"
        );
        assert!(c.succeeded("p"), "was resting");
        assert!(!c.cooling("p", t0));
        assert!(c.sync_due(5_000));
        assert!(!c.sync_due(5_001), "one read a second");
        assert!(c.sync_due(5_000 + SYNC_INTERVAL_MS));
    }

    #[test]
    fn retry_after_headers() {
        let mut h = http::HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert("retry-after", http::HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert("retry-after-ms", http::HeaderValue::from_static("1500"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(1500)));
        h.remove("retry-after-ms");
        h.insert(
            "retry-after",
            http::HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), None);
        h.insert("retry-after", http::HeaderValue::from_static("-3"));
        assert_eq!(retry_after(&h), None);
    }
}
