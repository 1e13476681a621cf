//! Is B slower than A at a quantile (p50, p95)? A mixture sequential test on
//! how many of B's requests take longer than A's quantile.
//!
//! If B's latency is distributed like A's, a B request exceeds A's `q`
//! quantile with probability `1 - q`; A's quantile is read conservatively
//! from its histogram (an upper bound), so the probability is at most that.
//! If B is slower, more of its requests exceed it. The mixture of Bernoulli
//! likelihood ratios over a few such probabilities is a supermartingale
//! under the null.

use serde::Serialize;

use crate::log_mean_exp;

#[derive(Clone, Debug, Serialize)]
pub struct QuantileTest {
    pub quantile: f64,
    alternatives: Vec<f64>,
    log_ratios: Vec<f64>,
    /// B's requests slower than A's quantile, and all of B's counted.
    pub above: u64,
    pub total: u64,
}

impl QuantileTest {
    /// A test at quantile `q` (0.5 for p50, 0.95 for p95).
    pub fn new(q: f64) -> Self {
        let p0 = 1.0 - q;
        // Alternatives: the odds of exceeding multiplied by 1.25 to 3.
        let odds = p0 / (1.0 - p0);
        let alternatives: Vec<f64> = [1.25, 1.5, 2.0, 3.0]
            .iter()
            .map(|m| odds * m / (1.0 + odds * m))
            .collect();
        QuantileTest {
            quantile: q,
            log_ratios: vec![0.0; alternatives.len()],
            alternatives,
            above: 0,
            total: 0,
        }
    }

    /// Adds B's requests of one window: how many took longer than A's quantile.
    pub fn observe(&mut self, above: u64, total: u64) {
        let p0 = 1.0 - self.quantile;
        self.above += above;
        self.total += total;
        let below = total.saturating_sub(above) as f64;
        for (log, p1) in self.log_ratios.iter_mut().zip(&self.alternatives) {
            *log += above as f64 * (p1 / p0).ln() + below * ((1.0 - p1) / (1.0 - p0)).ln();
        }
    }

    pub fn likelihood_ratio(&self) -> f64 {
        log_mean_exp(&self.log_ratios).exp()
    }

    pub fn rejects(&self, alpha: f64) -> bool {
        self.likelihood_ratio() >= 1.0 / alpha
    }

    /// The share of B's requests above A's quantile (expected `1 - q` when equal).
    pub fn share_above(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.above as f64 / self.total as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_above_the_median_is_no_evidence() {
        let mut t = QuantileTest::new(0.5);
        t.observe(500, 1000);
        assert!(t.likelihood_ratio() < 1.0);
    }

    #[test]
    fn most_above_the_median_is() {
        let mut t = QuantileTest::new(0.5);
        t.observe(70, 100);
        assert!(t.rejects(0.05), "lr {}", t.likelihood_ratio());
        let mut tail = QuantileTest::new(0.95);
        tail.observe(20, 100);
        assert!(tail.rejects(0.05), "lr {}", tail.likelihood_ratio());
    }
}
