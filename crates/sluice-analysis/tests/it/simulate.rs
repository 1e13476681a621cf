//! Simulated experiments. Windows are batches of requests; every test looks
//! at its evidence after each window, as the experiment engine does every
//! second. The figures are printed (`--nocapture`) and recorded in
//! docs/analysis.md; the assertions are the targets of the issue.

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Binomial, Distribution, LogNormal};
use sluice_analysis::{
    ErrorRateTest, InstanceSecond, LatencyConfig, LatencyJudge, LogHistogram, Side,
};

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

/// How the world behaves during one simulated latency experiment.
#[derive(Clone, Copy)]
struct World {
    /// B's latencies are A's times this.
    slowdown: f64,
    /// A's median in microseconds (log-normal, sigma 0.5).
    median: f64,
    /// Both variants slow down by this share over the experiment (0.5: +50%).
    trend: f64,
    /// Both variants slow down by this factor from the middle on.
    step: f64,
    /// Each instance's first 200 requests take this many times as long.
    cold: f64,
    /// Instances differ by up to ± this share (drawn per instance).
    spread: f64,
    a_instances: usize,
}

const CALM: World = World {
    slowdown: 1.0,
    median: 20_000.0,
    trend: 0.0,
    step: 1.0,
    cold: 1.0,
    spread: 0.0,
    a_instances: 4,
};

/// One latency experiment at a fixed weight, one B instance: A gets
/// `a_per_second` requests, B `b_per_second`, for `seconds`. Returns B's
/// judged requests when rolled back at one of `quantiles`.
fn latency_experiment(
    rng: &mut StdRng,
    world: World,
    quantiles: &[f64],
    seconds: u64,
    (a_per_second, b_per_second): (usize, usize),
    max_b: u64,
) -> Option<u64> {
    use rand::Rng;
    let unit = LogNormal::new(0.0, 0.5).unwrap();
    let mut factor = || 1.0 + world.spread * (2.0 * rng.random::<f64>() - 1.0);
    let a_speed: Vec<f64> = (0..world.a_instances).map(|_| factor()).collect();
    let b_speed = factor();
    let names: Vec<String> = (0..world.a_instances).map(|i| format!("a{i}")).collect();
    let mut served = vec![0u64; world.a_instances + 1];
    let mut judge = LatencyJudge::new(LatencyConfig::default());
    for second in 0..seconds {
        let t = second as f64 / seconds as f64;
        let common =
            world.median * (1.0 + world.trend * t) * if t >= 0.5 { world.step } else { 1.0 };
        let mut hists = vec![LogHistogram::default(); world.a_instances + 1];
        for k in 0..a_per_second + b_per_second {
            let (i, speed) = if k < a_per_second {
                let i = k % world.a_instances;
                (i, a_speed[i])
            } else {
                (world.a_instances, b_speed * world.slowdown)
            };
            let cold = if served[i] < 200 { world.cold } else { 1.0 };
            served[i] += 1;
            hists[i].record(common * speed * cold * unit.sample(rng));
        }
        let mut instances: Vec<InstanceSecond> = names
            .iter()
            .zip(&hists)
            .map(|(name, latency)| InstanceSecond {
                instance: name,
                side: Side::A,
                latency,
            })
            .collect();
        instances.push(InstanceSecond {
            instance: "b",
            side: Side::B,
            latency: &hists[world.a_instances],
        });
        judge.observe(second, &instances);
        if quantiles.iter().any(|q| judge.slower(*q, ALPHA).is_some()) {
            return Some(judge.p50.total);
        }
        if judge.p50.total >= max_b {
            return None;
        }
    }
    None
}

/// Runs A/A experiments in `world`, judged at p50 and p95; returns the share rolled back.
fn aa_rollbacks(name: &str, world: World, seed: u64) -> f64 {
    let mut rng = StdRng::seed_from_u64(seed);
    let runs = 400;
    let rolled_back = (0..runs)
        .filter(|_| {
            // Ten minutes at a 10% weight: 100 A and 10 B requests a second.
            latency_experiment(&mut rng, world, &[0.5, 0.95], 600, (100, 10), u64::MAX).is_some()
        })
        .count();
    let rate = rolled_back as f64 / runs as f64;
    eprintln!(
        "A/A latency, {name}: {rolled_back} of {runs} rolled back ({:.2}%)",
        100.0 * rate
    );
    rate
}

#[test]
fn aa_experiments_are_rarely_rolled_back_for_latency() {
    let worlds = [
        ("calm", CALM, 13),
        ("a common trend of +50%", World { trend: 0.5, ..CALM }, 19),
        ("a step of +50% halfway", World { step: 1.5, ..CALM }, 23),
        (
            "each instance's first 200 requests twice as slow",
            World { cold: 2.0, ..CALM },
            29,
        ),
        (
            "instances ±20% apart, A on 4 and B on 1",
            World {
                spread: 0.2,
                ..CALM
            },
            31,
        ),
    ];
    for (name, world, seed) in worlds {
        let rate = aa_rollbacks(name, world, seed);
        assert!(rate <= 0.05, "{name}: {:.2}% rolled back", 100.0 * rate);
    }
}

#[test]
fn a_20_percent_slower_median_is_caught_within_1000_b_requests() {
    let mut rng = StdRng::seed_from_u64(17);
    let runs = 1000;
    let slower = World {
        slowdown: 1.2,
        ..CALM
    };
    let mut caught: Vec<u64> = (0..runs)
        .filter_map(|_| latency_experiment(&mut rng, slower, &[0.5], 10_000, (100, 10), 1000))
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
