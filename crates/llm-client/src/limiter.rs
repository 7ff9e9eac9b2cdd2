//! Per-minute rate limiters and the budget reservation.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::error::{Error, Result};

/// A per-minute limiter as a token bucket in virtual-time form: the bucket holds one second's
/// worth of units and refills at the configured rate; an acquisition of `n` units waits until
/// the bucket holds `min(n, capacity)` and then takes `n` (a request larger than the bucket
/// leaves it in debt). The slot is reserved at call time, so concurrent callers queue in order.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    per_second: f64,
    burst: Duration,
    /// When the bucket will be full again (`None`: full now).
    full_at: Mutex<Option<Instant>>,
}

impl RateLimiter {
    pub(crate) fn per_minute(limit: u32) -> Self {
        Self {
            per_second: f64::from(limit) / 60.0,
            burst: Duration::from_secs(1),
            full_at: Mutex::new(None),
        }
    }

    /// Waits until `units` may go out.
    pub(crate) async fn acquire(&self, units: u64) {
        let cost = Duration::from_secs_f64(units as f64 / self.per_second);
        let allowed_at = {
            let mut full_at = self.full_at.lock().expect("rate limiter lock");
            let now = Instant::now();
            let full = full_at.map_or(now, |t| t.max(now));
            // Level at time t is capacity - rate * (full - t); it must reach min(units, capacity).
            let allowed_at = (full + cost.min(self.burst))
                .checked_sub(self.burst)
                .map_or(now, |t| t.max(now));
            *full_at = Some(full.max(allowed_at) + cost);
            allowed_at
        };
        tokio::time::sleep_until(allowed_at).await;
    }
}

/// The hard budget cap: settled spend (ledger total) plus reservations of in-flight attempts.
#[derive(Debug)]
pub(crate) struct Budget {
    cap_usd: Option<f64>,
    state: Mutex<BudgetState>,
    settled: Notify,
}

#[derive(Debug, Default)]
struct BudgetState {
    spent_usd: f64,
    reserved_usd: f64,
}

impl Budget {
    pub(crate) fn new(cap_usd: Option<f64>, spent_usd: f64) -> Self {
        Self {
            cap_usd,
            state: Mutex::new(BudgetState {
                spent_usd,
                reserved_usd: 0.0,
            }),
            settled: Notify::new(),
        }
    }

    pub(crate) fn spent_usd(&self) -> f64 {
        self.state.lock().expect("budget lock").spent_usd
    }

    /// Reserves `needed_usd` (an upper bound on one attempt's cost). Refuses at once when the
    /// spend so far plus this attempt could cross the cap; waits while only other in-flight
    /// reservations stand in the way (they may settle below their bound).
    pub(crate) async fn reserve(&self, needed_usd: f64) -> Result<()> {
        let Some(cap_usd) = self.cap_usd else {
            return Ok(());
        };
        loop {
            let settled = self.settled.notified();
            {
                let mut state = self.state.lock().expect("budget lock");
                if state.spent_usd + needed_usd > cap_usd {
                    return Err(Error::BudgetExceeded {
                        cap_usd,
                        spent_usd: state.spent_usd,
                        needed_usd,
                    });
                }
                if state.spent_usd + state.reserved_usd + needed_usd <= cap_usd {
                    state.reserved_usd += needed_usd;
                    return Ok(());
                }
            }
            settled.await;
        }
    }

    /// Replaces a reservation by what the attempt is counted as costing.
    pub(crate) fn settle(&self, reserved_usd: f64, cost_usd: f64) {
        {
            let mut state = self.state.lock().expect("budget lock");
            if self.cap_usd.is_some() {
                state.reserved_usd = (state.reserved_usd - reserved_usd).max(0.0);
            }
            state.spent_usd += cost_usd;
        }
        self.settled.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn rate_limiter_allows_one_second_burst_then_the_rate() {
        let limiter = RateLimiter::per_minute(600); // 10 per second
        let t0 = Instant::now();
        for _ in 0..10 {
            limiter.acquire(1).await;
        }
        assert!(
            t0.elapsed() < Duration::from_millis(5),
            "burst of 10 is immediate"
        );
        for _ in 0..20 {
            limiter.acquire(1).await;
        }
        let elapsed = t0.elapsed();
        assert!(
            elapsed >= Duration::from_millis(1990) && elapsed <= Duration::from_millis(2010),
            "{elapsed:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn large_token_requests_pay_their_full_cost() {
        let limiter = RateLimiter::per_minute(6000); // 100 tokens per second
        let t0 = Instant::now();
        limiter.acquire(300).await; // a full bucket lets the first one go at once
        assert_eq!(t0.elapsed().as_millis(), 0);
        limiter.acquire(300).await; // the bucket is 200 in debt: full again after 3 s
        assert_eq!(t0.elapsed().as_millis(), 3000);
    }

    #[tokio::test]
    async fn budget_refuses_and_waits() {
        let budget = Budget::new(Some(1.0), 0.25);
        assert!(matches!(
            budget.reserve(0.8).await,
            Err(Error::BudgetExceeded { .. })
        ));
        budget.reserve(0.5).await.unwrap(); // 0.25 spent + 0.5 reserved
        // 0.25 + 0.5 + 0.5 > 1 but 0.25 + 0.5 <= 1: waits for the in-flight one.
        let waiter = budget.reserve(0.5);
        tokio::pin!(waiter);
        assert!(
            tokio::time::timeout(Duration::from_millis(20), &mut waiter)
                .await
                .is_err()
        );
        budget.settle(0.5, 0.1); // spent 0.35, nothing reserved
        waiter.await.unwrap();
        assert!((budget.spent_usd() - 0.35).abs() < 1e-12);
        budget.settle(0.5, 0.5); // spent 0.85
        assert!(matches!(
            budget.reserve(0.2).await,
            Err(Error::BudgetExceeded { .. })
        ));
        Budget::new(None, 5.0).reserve(1e9).await.unwrap();
    }
}
