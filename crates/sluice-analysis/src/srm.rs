//! Sample ratio mismatch: does the observed split match the weights? A χ²
//! test of B's count against what the weights lead to expect. A mismatch
//! means the experiment is broken (stickiness, a crash loop, a bot), so it
//! is stopped rather than judged.

use serde::Serialize;
use statrs::distribution::{ChiSquared, ContinuousCDF};

#[derive(Clone, Debug, Default, Serialize)]
pub struct SampleRatio {
    pub total: u64,
    pub b: u64,
    /// B's expected count: each window's requests times B's weight then.
    pub expected_b: f64,
}

impl SampleRatio {
    /// Adds a window in which B's weight was `weight` (0 to 1).
    pub fn observe(&mut self, a_requests: u64, b_requests: u64, weight: f64) {
        let n = a_requests + b_requests;
        self.total += n;
        self.b += b_requests;
        self.expected_b += n as f64 * weight;
    }

    /// Adds a window whose requests each carried B's weight when routed:
    /// `expected_b` is the sum of those weights (0 to 1 each).
    pub fn observe_expected(&mut self, a_requests: u64, b_requests: u64, expected_b: f64) {
        self.total += a_requests + b_requests;
        self.b += b_requests;
        self.expected_b += expected_b;
    }

    /// The χ² (one degree of freedom) p-value of the observed split.
    pub fn p_value(&self) -> f64 {
        let n = self.total as f64;
        let (eb, ea) = (self.expected_b, n - self.expected_b);
        if eb <= 0.0 || ea <= 0.0 {
            return 1.0;
        }
        let (ob, oa) = (self.b as f64, n - self.b as f64);
        let chi2 = (ob - eb).powi(2) / eb + (oa - ea).powi(2) / ea;
        ChiSquared::new(1.0)
            .map(|d| 1.0 - d.cdf(chi2))
            .unwrap_or(1.0)
    }

    pub fn observed_share(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.b as f64 / self.total as f64
        }
    }

    pub fn expected_share(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.expected_b / self.total as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fair_split_passes_and_a_skewed_one_does_not() {
        let mut fair = SampleRatio::default();
        fair.observe(9_900, 100, 0.01);
        assert!(fair.p_value() > 0.5);
        let mut skewed = SampleRatio::default();
        skewed.observe(9_700, 300, 0.01);
        assert!(skewed.p_value() < 1e-6, "{}", skewed.p_value());
    }
}
