//! The statistics of A/B decisions: pure functions over counts and
//! histograms, no I/O, no clock. Each test is an always-valid sequential
//! test (a mixture likelihood ratio, a nonnegative supermartingale under the
//! null), so looking at it every second does not inflate false alarms:
//! by Ville's inequality it ever crosses `1/alpha` with probability at most
//! `alpha` when B is not worse. See `docs/analysis.md`.

mod decide;
mod errors;
pub mod goals;
mod histogram;
mod latency;
mod quantile;
mod srm;

pub use decide::{Action, Decision, Evidence, Policy, decide};
pub use errors::ErrorRateTest;
pub use histogram::LogHistogram;
pub use latency::{
    Effect, InstanceLatency, InstanceSecond, LatencyConfig, LatencyJudge, MinEffect, Side,
};
pub use quantile::QuantileTest;
pub use srm::SampleRatio;

/// `ln(mean(exp(x)))` without overflow: the log of an equal-weight mixture.
pub(crate) fn log_mean_exp(logs: &[f64]) -> f64 {
    let max = logs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if max == f64::NEG_INFINITY {
        return max;
    }
    let sum: f64 = logs.iter().map(|l| (l - max).exp()).sum();
    max + (sum / logs.len() as f64).ln()
}
