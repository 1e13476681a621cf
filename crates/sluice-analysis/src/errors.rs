//! Is B's error rate higher than A's? A mixture sequential probability ratio
//! test on the errors alone, conditioned on how the traffic was split.
//!
//! Given that a window saw `x` errors while B served a share `q` of its
//! requests, under the null (equal error rates) each error is B's with
//! probability `q` (exactly, or less dispersed when sampled without
//! replacement). If B's rate is `r` times A's, that probability is
//! `r q / (r q + 1 - q)`. The likelihood ratio of the two, mixed over a few
//! ratios `r`, is a supermartingale under the null whatever the weights do
//! from window to window.

use serde::Serialize;

use crate::log_mean_exp;

/// The ratios of B's error rate to A's that the mixture spreads its bet on.
const RATIOS: [f64; 4] = [2.0, 3.0, 5.0, 8.0];

#[derive(Clone, Debug, Serialize)]
pub struct ErrorRateTest {
    log_ratios: Vec<f64>,
    pub a_requests: u64,
    pub a_errors: u64,
    pub b_requests: u64,
    pub b_errors: u64,
}

impl Default for ErrorRateTest {
    fn default() -> Self {
        ErrorRateTest {
            log_ratios: vec![0.0; RATIOS.len()],
            a_requests: 0,
            a_errors: 0,
            b_requests: 0,
            b_errors: 0,
        }
    }
}

impl ErrorRateTest {
    /// Adds one window's requests and errors of each variant.
    pub fn observe(&mut self, a_requests: u64, a_errors: u64, b_requests: u64, b_errors: u64) {
        self.a_requests += a_requests;
        self.a_errors += a_errors;
        self.b_requests += b_requests;
        self.b_errors += b_errors;
        let total = a_requests + b_requests;
        if total == 0 || b_requests == 0 || a_requests == 0 || a_errors + b_errors == 0 {
            return;
        }
        let q = b_requests as f64 / total as f64;
        for (log, r) in self.log_ratios.iter_mut().zip(RATIOS) {
            let qr = r * q / (r * q + 1.0 - q);
            *log +=
                b_errors as f64 * (qr / q).ln() + a_errors as f64 * ((1.0 - qr) / (1.0 - q)).ln();
        }
    }

    /// The mixture likelihood ratio of "B is worse" against "B is the same".
    pub fn likelihood_ratio(&self) -> f64 {
        log_mean_exp(&self.log_ratios).exp()
    }

    pub fn rejects(&self, alpha: f64) -> bool {
        self.likelihood_ratio() >= 1.0 / alpha
    }

    pub fn a_rate(&self) -> f64 {
        rate(self.a_errors, self.a_requests)
    }

    pub fn b_rate(&self) -> f64 {
        rate(self.b_errors, self.b_requests)
    }
}

fn rate(errors: u64, requests: u64) -> f64 {
    if requests == 0 {
        0.0
    } else {
        errors as f64 / requests as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_in_proportion_to_traffic_are_no_evidence() {
        let mut t = ErrorRateTest::default();
        for _ in 0..100 {
            t.observe(990, 10, 10, 0);
        }
        assert!(t.likelihood_ratio() < 1.0);
        assert!(!t.rejects(0.05));
    }

    #[test]
    fn errors_crowding_on_b_are() {
        let mut t = ErrorRateTest::default();
        t.observe(9_900, 10, 100, 6);
        assert!(t.rejects(0.05), "lr {}", t.likelihood_ratio());
        assert!((t.b_rate() - 0.06).abs() < 1e-9);
    }
}
