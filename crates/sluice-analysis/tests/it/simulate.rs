//! Simulated experiments. Windows are batches of requests; every test looks
//! at its evidence after each window, as the experiment engine does every
//! second. The figures are printed (`--nocapture`) and recorded in
//! docs/analysis.md; the assertions are the targets of the issue.

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Binomial, Distribution, LogNormal};
use sluice_analysis::{ErrorRateTest, LogHistogram, QuantileTest};

const ALPHA: f64 = 0.05;

fn binomial(rng: &mut StdRng, n: u64, p: f64) -> u64 {
    if n == 0 || p <= 0.0 {
        0
    } else {
        Binomial::new(n, p).unwrap().sample(rng)
    }
}

/// Runs one error-rate experiment; returns the number of B requests seen
/// when it was rolled back, or `None` if it never was within `max_b`.
fn error_experiment(
    rng: &mut StdRng,
    weights: &[f64],
    window: u64,
    a_rate: f64,
    b_rate: f64,
    max_b: u64,
    windows_per_step: usize,
) -> Option<u64> {
    let mut test = ErrorRateTest::default();
    for weight in weights {
        for _ in 0..windows_per_step {
            let b = binomial(rng, window, *weight);
            let a = window - b;
            test.observe(a, binomial(rng, a, a_rate), b, binomial(rng, b, b_rate));
            if test.rejects(ALPHA) {
                return Some(test.b_requests);
            }
            if test.b_requests >= max_b {
                return None;
            }
        }
    }
    None
}

#[test]
fn aa_experiments_are_rarely_rolled_back_for_errors() {
    let mut rng = StdRng::seed_from_u64(7);
    let runs = 2000;
    // The whole ramp, 40 windows of 1,000 requests a step: 200,000 requests each.
    let rolled_back = (0..runs)
        .filter(|_| {
            error_experiment(
                &mut rng,
                &[0.01, 0.05, 0.25, 0.5, 1.0],
                1000,
                0.001,
                0.001,
                u64::MAX,
                40,
            )
            .is_some()
        })
        .count();
    let rate = rolled_back as f64 / runs as f64;
    eprintln!(
        "A/A error rate: {rolled_back} of {runs} rolled back ({:.2}%)",
        100.0 * rate
    );
    assert!(
        rate <= 0.05,
        "{:.2}% of A/A experiments were rolled back",
        100.0 * rate
    );
}

#[test]
fn a_five_times_higher_error_rate_is_caught_within_2000_b_requests() {
    let mut rng = StdRng::seed_from_u64(11);
    let runs = 2000;
    let mut caught: Vec<u64> = (0..runs)
        .filter_map(|_| error_experiment(&mut rng, &[0.01], 1000, 0.001, 0.005, 2000, usize::MAX))
        .collect();
    caught.sort();
    let rate = caught.len() as f64 / runs as f64;
    let median = caught.get(caught.len() / 2).copied().unwrap_or(0);
    eprintln!(
        "0.5% vs 0.1% at 1%: caught {:.1}% within 2,000 B requests (median at {median} B requests)",
        100.0 * rate
    );
    assert!(rate >= 0.80, "caught only {:.1}%", 100.0 * rate);
}

/// One latency experiment at a fixed weight: A gets `a_per_window`
/// requests, B `b_per_window`; B's latencies are A's times `slowdown`.
/// Returns B's requests when rolled back.
fn latency_experiment(
    rng: &mut StdRng,
    q: f64,
    slowdown: f64,
    max_b: u64,
    a_per_window: usize,
    b_per_window: usize,
) -> Option<u64> {
    let sigma = 0.5;
    let a_dist = LogNormal::new(10_000f64.ln(), sigma).unwrap();
    let b_dist = LogNormal::new((10_000f64 * slowdown).ln(), sigma).unwrap();
    let mut a_hist = LogHistogram::default();
    let mut test = QuantileTest::new(q);
    loop {
        // B is compared with A's quantile as known before this window, as the engine does.
        let mut b_window = LogHistogram::default();
        for _ in 0..b_per_window {
            b_window.record(b_dist.sample(rng));
        }
        if a_hist.len() >= 200 {
            let bound = a_hist.upper_quantile(q).unwrap();
            test.observe(b_window.count_above(bound), b_window.len());
            if test.rejects(ALPHA) {
                return Some(test.total);
            }
            if test.total >= max_b {
                return None;
            }
        }
        for _ in 0..a_per_window {
            a_hist.record(a_dist.sample(rng));
        }
    }
}

#[test]
fn aa_experiments_are_rarely_rolled_back_for_latency() {
    let mut rng = StdRng::seed_from_u64(13);
    let runs = 1000;
    for q in [0.5, 0.95] {
        // A gets ten requests for each of B's (at a 1% weight it gets 99: this is harder).
        let rolled_back = (0..runs)
            .filter(|_| latency_experiment(&mut rng, q, 1.0, 5000, 100, 10).is_some())
            .count();
        let rate = rolled_back as f64 / runs as f64;
        eprintln!(
            "A/A latency p{:.0}: {rolled_back} of {runs} rolled back ({:.2}%)",
            q * 100.0,
            100.0 * rate
        );
        assert!(
            rate <= 0.05,
            "{:.2}% rolled back at p{}",
            100.0 * rate,
            q * 100.0
        );
    }
}

#[test]
fn a_20_percent_slower_median_is_caught_within_1000_b_requests() {
    let mut rng = StdRng::seed_from_u64(17);
    let runs = 1000;
    let mut caught: Vec<u64> = (0..runs)
        .filter_map(|_| latency_experiment(&mut rng, 0.5, 1.2, 1000, 100, 10))
        .collect();
    caught.sort();
    let rate = caught.len() as f64 / runs as f64;
    let median = caught.get(caught.len() / 2).copied().unwrap_or(0);
    eprintln!(
        "p50 +20%: caught {:.1}% within 1,000 B requests (median at {median} B requests)",
        100.0 * rate
    );
    assert!(rate >= 0.80, "caught only {:.1}%", 100.0 * rate);
}
